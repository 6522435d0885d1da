// The S3 client's private parts: one Request as the client means it, its buffered Response,
// Client::Impl (endpoint, credentials, signing), and the small helpers its files share.
//
// The client's jobs, by file:
//   client.cpp         creating a Client; one attempt of a request on the wire (signed
//                      afresh), object headers, failure logs
//   buffered_call.cpp  BufferedCall: all attempts of a request with a buffered response
//                      (retries with backoff)
//   streamed_read.cpp  StreamedRead: a GET whose body goes to the caller as it arrives, with
//                      transparent resume (Client::get)
//   objects.cpp        object and multipart operations (HEAD, PUT, DELETE, copy, parts)
//   listings.cpp       paginated listings (parts, multipart uploads, objects)
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/net/curl_loop.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/s3/sigv4.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::s3 {

inline constexpr std::size_t kMaxErrorBody = 64 * 1024;

inline std::uint64_t random64() {
    thread_local std::mt19937_64 gen{std::random_device{}()};
    return gen();
}

inline std::uint64_t to_u64(std::string_view s) {
    return std::strtoull(std::string(s).c_str(), nullptr, 10);
}

inline std::string range_header(const ByteRange& r) {
    return r.last ? fmt::format("bytes={}-{}", r.first, *r.last)
                  : fmt::format("bytes={}-", r.first);
}

// One request as the client means it; signed afresh for every attempt.
struct Request {
    std::string op;  // S3 operation name, for logs and metrics
    std::string method;
    std::string key;  // unencoded; empty for bucket-level requests
    std::vector<QueryParam> query;
    net::HeaderList headers;  // signed and sent
    std::shared_ptr<const std::string> body;
    std::string payload_hash = std::string(kEmptyPayloadSha256);
    bool idempotent = true;
    bool error_in_200 = false;  // CopyObject, UploadPartCopy, Complete: 200 may carry <Error>
    // Streamed upload (not retried).
    std::function<std::size_t(char*, std::size_t)> body_source;
    std::int64_t body_size = -1;
};

struct Response {
    int status = 0;
    net::HeaderList headers;
    std::string body;
};

struct Client::Impl {
    net::CurlLoop* loop = nullptr;
    config::S3Config config;
    ClientTuning tuning;
    Credentials credentials;
    std::string scheme;     // "http" or "https"
    std::string host;       // host[:port] as sent in Host
    std::string base_path;  // "/<bucket>" for path style, "" for virtual-hosted

    metrics::Counter& retries = metrics::global().counter(
        "drayage_s3_retries_total", "S3 request attempts that were retried after a failure");
    metrics::Counter& failures = metrics::global().counter(
        "drayage_s3_failures_total", "S3 operations that failed after their last attempt");

    std::string wire_path(const std::string& key) const;
    // Builds the curl options for one attempt, signed now.
    Result<net::CallOptions> prepare(const Request& r) const;

    // Headers every object-creating request carries (PUT, CreateMultipartUpload, CopyObject).
    void add_object_headers(net::HeaderList& h, const PutOptions* options) const;

    std::string copy_source(const std::string& source_key) const;
    void log_failure(const Request& r, const Error& e);

    // All attempts of one request, its answer buffered (buffered_call.cpp).

    void execute(Request request, std::function<void(Result<Response>)> done);
};

}  // namespace drayage::s3
