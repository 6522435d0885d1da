// The push path: blob upload sessions of the Registry API v2 (OCI distribution-spec "push"),
// streamed into the S3 bucket as parallel multipart uploads, then placed where Docker
// Distribution keeps blobs, so the registry serving the same bucket sees them.
//
//   POST   /v2/<name>/blobs/uploads/                      202, a new session (Location, Range 0-0)
//   POST   /v2/<name>/blobs/uploads/?digest=<d>           201, monolithic: the body is the blob
//                                                         (400 DIGEST_INVALID when it is not;
//                                                         413 SIZE_INVALID when its declared
//                                                         length fits no S3 upload)
//   POST   /v2/<name>/blobs/uploads/?mount=<d>&from=<r>   201 when the bucket links <d> in <r>
//                                                         and holds its data (only the link is
//                                                         written), else handled as if without
//                                                         mount= (digest= or a new session)
//   PATCH  /v2/<name>/blobs/uploads/<uuid>                202, bytes appended (Content-Range
//                                                         optional; 416 RANGE_INVALID, with the
//                                                         upload's Range and Location, when it
//                                                         does not start at the session's offset
//                                                         or does not cover the Content-Length)
//   PUT    /v2/<name>/blobs/uploads/<uuid>?digest=<d>     201, optional last bytes (Content-Range
//                                                         checked as for a PATCH), then verified
//                                                         and placed
//   GET    /v2/<name>/blobs/uploads/<uuid>                204, Range: 0-<offset-1>, Location,
//                                                         Docker-Upload-UUID
//   DELETE /v2/<name>/blobs/uploads/<uuid>                204, cancelled
// Unknown (or expired) session: 404 BLOB_UPLOAD_UNKNOWN. A second PATCH/PUT while one is still
// streaming into the same session: 409 BLOB_UPLOAD_INVALID (bytes must arrive in order). A
// ?digest= outside the digest grammar: 400 DIGEST_INVALID before a byte is read.
//
// Locations are paths ("/v2/<name>/blobs/uploads/<uuid>", "/v2/<name>/blobs/<d>"), the same
// from POST, PATCH and GET: the spec allows relative ones, docker, containerd and skopeo resolve
// them against the URL they asked, and a path stays right behind a proxy that terminates TLS or
// renames the host (the registry builds absolute ones from its Host or X-Forwarded-Host).
//
// No OCI-Chunk-Min-Length: S3 parts have a minimum (chunksize), but the session gathers chunks
// of any size into parts, so clients may send any chunk size.
//
// Where the bytes go. A session streams into an s3::MultipartUpload under a drayage-owned
// temporary key, `<rootdirectory>/_drayage/uploads/<node>/<uuid>/data` (outside
// `docker/registry/v2/`, which is all the registry ever walks, so it never sees half-written
// uploads). Every `chunksize` bytes become one UploadPart, `storage.s3.multipart.concurrency` in
// flight; while the uploader is full the client's body is paused (TCP backpressure), so memory
// per session is bounded by (concurrency + 1) x chunksize. A monolithic POST's Content-Length
// only lets parts grow past chunksize when 10,000 of them would not hold it, and then no part is
// larger than 1/64 of the bytes already received (s3::UploadPartSizes): what a client declares
// does not size drayage's memory, what it sends does. The sha256 is computed as bytes arrive and
// kept in the session across PATCHes.
//
// At PUT the computed digest must equal `?digest=` (else 400 DIGEST_INVALID and the temporary
// upload is aborted or deleted); nothing is looked up or linked before that. A blob whose data
// object already exists is not stored again; otherwise the temporary object is completed, copied
// server-side (s3::MultipartCopy, parallel UploadPartCopy for large blobs) to
// `blobs/sha256/<hex[:2]>/<hex>/data`, and deleted. Then the repository link
// `repositories/<name>/_layers/sha256/<hex>/link` is written. With the digest known from the
// start (POST ?digest=) the bytes go straight to the blob's data key (the multipart upload is
// only completed after the digest checked out, so wrong bytes never become visible there); when
// the data object exists already the body is hashed, not stored, and linked only if it matches.
//
// The rule: a link is written only for bytes the client sent that hash to the digest, or for a
// mount of a blob the bucket links in `from` (with `auth`, the front has checked that the client
// may pull `from` and that the digest belongs to it, check_mount). A digest alone is no proof of
// access: a missing or empty body is a DIGEST_INVALID like any other wrong body. mount= is acted
// on before digest=, in the order the front's check reads them (query::param() is the one reader).
//
// The cache. After a blob is in place (and the 201 sent), it is read back from the bucket into
// the local cache through the fetch layer (Fetcher, the bucket as the only origin; a pull of the
// same digest already in flight is joined, not fetched again), so the first pull through this
// node is a hit. Reading back rather than teeing the client's bytes keeps one code
// path for every kind of upload (the digest of a chunked upload is only known at the end) and
// keeps a slow cache from slowing the push; the cost is one S3 GET per pushed blob.
//
// Lifetimes. A session whose client went away mid-body is cancelled (its multipart upload
// aborted): the Docker and OCI clients restart a failed push from the POST, never from the
// offset. An idle session expires after `session_ttl` and is cancelled the same way. Multipart
// uploads and temporary objects a crashed process left under its own node prefix are aborted
// and deleted by recover() at start-up; those of other nodes sharing the bucket only once they
// are older than 2 x session_ttl (so a live node's uploads are never touched).
//
// Threading: everything runs on the event loop thread.
//
// Metrics: drayage_push_blobs_total{outcome}, drayage_push_bytes_total, drayage_push_sessions,
// drayage_push_sessions_expired_total, drayage_push_cache_fills_total{outcome}.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/cache/cache.hpp"
#include "drayage/http/server.hpp"
#include "drayage/registry/fetch.hpp"
#include "drayage/registry/origin.hpp"
#include "drayage/registry/routes.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/util/query.hpp"
#include "drayage/util/result.hpp"

struct event_base;

namespace drayage::registry {

struct UploadOptions {
    // An upload session nobody wrote to for this long is cancelled.
    std::chrono::milliseconds session_ttl{std::chrono::hours(1)};
    // Open sessions at most; a POST past it gets 429 TOOMANYREQUESTS. An idle session holds up
    // to one chunksize of not-yet-uploaded bytes in memory, so this bounds that memory too.
    std::size_t max_sessions = 1024;
    // This node's name in the temporary-key prefix (e.g. "<hostname>-<port>"): recover() aborts
    // everything under it at start-up. Characters outside [A-Za-z0-9._-] are replaced by '_'.
    std::string node = "node";
};

// A fresh upload id: 128 bits from OpenSSL's CSPRNG (RAND_bytes) as a version-4 style UUID,
// "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" (122 random bits). Empty only when the CSPRNG fails.
std::string new_upload_uuid();

// A PATCH's Content-Range: "<first>-<last>" (what Docker and the OCI spec send), also accepted
// with a "bytes " prefix and an optional "/<total>" suffix. Inclusive. Error 416 RANGE_INVALID
// when malformed or last < first.
struct UploadRange {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
};
Result<UploadRange> parse_upload_range(std::string_view header);

// Whether a chunk (a PATCH, or the body of the closing PUT) may be appended to an upload that
// holds `offset` bytes. Without a Content-Range (`content_range` empty) any chunk follows on.
// With one, it must start at `offset` and, when the body's length is declared
// (`content_length`; nullopt for a chunked body), cover exactly that many bytes: the spec's
// <end-of-range> is the end of the Content-Range. Error 416 RANGE_INVALID otherwise, its message
// naming the byte the upload continues at.
Status check_chunk_range(std::string_view content_range,
                         std::optional<std::uint64_t> content_length, std::uint64_t offset);

// The Range header of an upload with `offset` bytes received: "0-<offset-1>", or "0-0" when
// empty (what Distribution answers).
std::string upload_range_header(std::uint64_t offset);

// Parses an S3 ISO-8601 timestamp ("2026-11-28T09:00:00.000Z") to seconds since the epoch;
// nullopt when malformed.
std::optional<std::int64_t> parse_s3_time(std::string_view text);

class BlobUploads {
public:
    // `client`, `cache` and `base` must outlive this object. Pushed blobs are read back into
    // `cache` through `fetcher` (both null: no read-back).
    BlobUploads(event_base* base, s3::Client& client, cache::Cache* cache,
                std::shared_ptr<Fetcher> fetcher, UploadOptions options);
    ~BlobUploads();  // cancels the expiry timer; sessions' multipart uploads are left to recover()
    BlobUploads(const BlobUploads&) = delete;
    BlobUploads& operator=(const BlobUploads&) = delete;

    // FrontDeps::uploads: `route` is upload_start or upload, already validated.
    void handle(std::shared_ptr<http::Exchange> exchange, const Route& route);

    // Start-up cleanup (see above). `done` gets the first listing error, if any; individual
    // abort/delete failures are logged and counted, not fatal.
    void recover(std::function<void(Status)> done);

    // The temporary-key prefix of this node ("<root>_drayage/uploads/<node>/").
    const std::string& node_prefix() const;
    std::size_t sessions() const;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace drayage::registry
