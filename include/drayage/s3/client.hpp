// The S3 client: object and multipart operations on the event loop (net::CurlLoop), signed with
// SigV4 (or SigV2 when `v4auth: false`), retried with backoff.
//
// Every operation is asynchronous: it returns at once and calls its callback exactly once, later,
// on the loop thread (never from inside the call that started it). Callbacks get a Result: the
// value, or an Error whose `code` is the S3 error code ("NoSuchKey", "SignatureDoesNotMatch",
// "SlowDown", ...), "transport" when no HTTP answer arrived (reset, timeout, refused), or
// "MalformedResponse"; `status` is the HTTP status (0 for transport). Every S3 error is logged
// once, with its request id, when the operation gives up.
//
// Retries (see retry.hpp): transient failures (5xx, SlowDown, RequestTimeout, InternalError,
// resets, timeouts) are retried up to `storage.s3.retry.max_attempts` attempts in total with
// full-jitter exponential backoff; other 4xx never are (wrong credentials fail after one
// request). CreateMultipartUpload is not retried after a transport failure (it may have created
// an upload). Request bodies are kept in memory (shared, not copied) until the request
// succeeded, so each attempt resends the same bytes.
//
// Addressing: path style (`<endpoint>/<bucket>/<key>`) when `regionendpoint` is set, virtual-
// hosted style (`<bucket>.s3.<region>.amazonaws.com/<key>`) otherwise; `secure` picks https or
// http when the endpoint names no scheme. Lifetime: the Client must outlive every operation it
// started (destroy it only after their callbacks ran, or after cancelling the GETs).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "drayage/config/config.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/s3/credentials.hpp"
#include "drayage/s3/xml.hpp"
#include "drayage/util/result.hpp"

namespace drayage::s3 {

// Inclusive byte range, as in an HTTP Range header. `last` empty: to the end.
struct ByteRange {
    std::uint64_t first = 0;
    std::optional<std::uint64_t> last;
};

struct ObjectInfo {
    int status = 0;                // 200, or 206 for a range
    std::uint64_t size = 0;        // Content-Length of this response (the range's length for 206)
    std::uint64_t total_size = 0;  // whole object (from Content-Range on 206, else = size)
    std::string etag;
    std::string content_type;
    std::string last_modified;
};

// Streamed GET. `on_head` once, before any body byte (status 200/206 only: errors go to on_done).
// `on_body` returns false to pause delivery until ObjectRead::resume(). `on_done` exactly once.
struct ReadHandlers {
    std::function<void(const ObjectInfo&)> on_head;
    std::function<bool(std::string_view)> on_body;
    std::function<void(Status)> on_done;
};

// Control of one streamed GET.
class ObjectRead {
public:
    virtual ~ObjectRead() = default;
    virtual void resume() = 0;
    // Stops the read; on_done is not called.
    virtual void cancel() = 0;
    virtual std::uint64_t delivered() const = 0;
};

struct PutOptions {
    std::string content_type = "application/octet-stream";
};

// Where credentials come from: the config's keys, else AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from `env`.
Credentials resolve_credentials(const config::S3Config& config,
                                const std::map<std::string, std::string>& env);

// Transport settings (storage.s3.connect_timeout and stall_timeout; drayage's keys, not the
// Distribution driver's).
struct ClientTuning {
    std::chrono::milliseconds connect_timeout{10'000};
    // No byte moved for this long (either direction): the attempt fails as a transport error
    // and is retried. Paused GETs do not count.
    std::chrono::milliseconds stall_timeout{30'000};
};

class Client {
public:
    // Checks the config (bucket set, chunksize >= 5 MiB, endpoint parsable). `env` supplies AWS_*
    // variables when the config has no keys.
    static Result<std::unique_ptr<Client>> create(net::CurlLoop& loop,
                                                  const config::S3Config& config,
                                                  const std::map<std::string, std::string>& env,
                                                  ClientTuning tuning = {});
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    const config::S3Config& config() const;
    net::CurlLoop& loop() const;

    // Object metadata; NotFound (404) when absent.
    void head(std::string key, std::function<void(Result<ObjectInfo>)> done);

    // Streams an object (or a range of it). If the connection fails after bytes were delivered,
    // the read is resumed transparently with `Range: bytes=<next>-` and `If-Match: <etag>` (so a
    // replaced object fails with PreconditionFailed instead of mixing bytes) while attempts
    // remain; the consumer sees one continuous body.
    std::shared_ptr<ObjectRead> get(std::string key, std::optional<ByteRange> range,
                                    ReadHandlers handlers);

    // Small single-request PUT (up to 5 GiB; keep it to a chunk or so: the body is in memory).
    // The payload's sha256 is signed and Content-MD5 sent. Returns the ETag.
    void put(std::string key, std::shared_ptr<const std::string> body, PutOptions options,
             std::function<void(Result<std::string>)> done);

    // S3 answers 204 whether or not the key existed.
    void remove(std::string key, std::function<void(Status)> done);

    // Server-side copy within the bucket (source up to 5 GiB). Returns the new ETag.
    void copy(std::string source_key, std::string dest_key,
              std::function<void(Result<std::string>)> done);

    // ---- multipart -------------------------------------------------------------------------
    void create_multipart(std::string key, PutOptions options,
                          std::function<void(Result<std::string>)> done);  // the UploadId
    // A part from memory: sha256 signed, Content-MD5 sent, retried as a whole. Returns its ETag.
    void upload_part(std::string key, std::string upload_id, int part_number,
                     std::shared_ptr<const std::string> body,
                     std::function<void(Result<std::string>)> done);
    // A streamed part of `size` bytes pulled from `source` (see net::CallOptions::body_source);
    // signed as UNSIGNED-PAYLOAD and not retried (the bytes are gone once sent). The returned
    // call lets the producer resume a paused source.
    std::shared_ptr<net::HttpCall> upload_part_stream(
        std::string key, std::string upload_id, int part_number, std::uint64_t size,
        std::function<std::size_t(char*, std::size_t)> source,
        std::function<void(Result<std::string>)> done);
    // A part copied server-side from `source_key` (bytes `range` of it).
    void upload_part_copy(std::string key, std::string upload_id, int part_number,
                          std::string source_key, ByteRange range,
                          std::function<void(Result<std::string>)> done);
    // Completes with the parts (sorted by number here). An error document in a 200 answer is an
    // error. Returns the object's ETag.
    void complete_multipart(std::string key, std::string upload_id,
                            std::vector<CompletedPart> parts,
                            std::function<void(Result<std::string>)> done);
    // NoSuchUpload counts as success (already gone).
    void abort_multipart(std::string key, std::string upload_id, std::function<void(Status)> done);
    // All pages, followed with the markers/continuation token S3 returns. `page_size` > 0 asks
    // for at most that many entries per request (max-parts / max-uploads / max-keys); 0 leaves
    // S3's default (1000).
    void list_parts(std::string key, std::string upload_id,
                    std::function<void(Result<std::vector<PartInfo>>)> done,
                    std::size_t page_size = 0);
    void list_multipart_uploads(std::string prefix,
                                std::function<void(Result<std::vector<UploadInfo>>)> done,
                                std::size_t page_size = 0);
    void list_objects(std::string prefix,
                      std::function<void(Result<std::vector<ObjectEntry>>)> done,
                      std::size_t page_size = 0);

    struct Impl;

private:
    explicit Client(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace drayage::s3
