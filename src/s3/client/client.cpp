// S3 operations on the curl loop. One `BufferedCall` is one logical request (all its attempts)
// with a buffered response; `StreamedRead` is a GET whose body goes to the caller as it arrives.
#include "drayage/s3/client.hpp"

#include <event2/event.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <random>

#include "drayage/net/defer.hpp"
#include "drayage/s3/retry.hpp"
#include "drayage/s3/sigv2.hpp"
#include "drayage/s3/sigv4.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::s3 {

namespace {

constexpr std::size_t kMaxErrorBody = 64 * 1024;

std::uint64_t random64() {
    thread_local std::mt19937_64 gen{std::random_device{}()};
    return gen();
}

std::string md5_base64(std::string_view data) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_md5(), nullptr);
    std::array<unsigned char, 4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1> out{};
    int n = EVP_EncodeBlock(out.data(), digest.data(), static_cast<int>(len));
    return std::string(reinterpret_cast<const char*>(out.data()), static_cast<std::size_t>(n));
}

using net::defer;

std::string content_range_total(std::string_view content_range) {
    // "bytes 0-99/1234"
    auto slash = content_range.rfind('/');
    return slash == std::string_view::npos ? std::string()
                                           : std::string(content_range.substr(slash + 1));
}

std::uint64_t to_u64(std::string_view s) {
    return std::strtoull(std::string(s).c_str(), nullptr, 10);
}

std::string range_header(const ByteRange& r) {
    return r.last ? fmt::format("bytes={}-{}", r.first, *r.last)
                  : fmt::format("bytes={}-", r.first);
}

}  // namespace

Credentials resolve_credentials(const config::S3Config& config,
                                const std::map<std::string, std::string>& env) {
    auto from_env = [&](const char* name) {
        auto it = env.find(name);
        return it == env.end() ? std::string() : it->second;
    };
    Credentials c;
    if (!config.accesskey.empty() || !config.secretkey.empty()) {
        c.access_key = config.accesskey;
        c.secret_key = config.secretkey;
        c.session_token = config.sessiontoken;
    } else {
        c.access_key = from_env("AWS_ACCESS_KEY_ID");
        c.secret_key = from_env("AWS_SECRET_ACCESS_KEY");
        c.session_token = from_env("AWS_SESSION_TOKEN");
    }
    return c;
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

    std::string wire_path(const std::string& key) const {
        std::string path = base_path + "/";
        path += uri_encode_path(key);
        return path;
    }

    // Builds the curl options for one attempt, signed now.
    Result<net::CallOptions> prepare(const Request& r) const {
        std::string path = wire_path(r.key);
        std::vector<HeaderField> headers;
        headers.emplace_back("Host", host);
        for (const auto& h : r.headers) {
            headers.push_back(h);
        }
        auto now = std::chrono::system_clock::now();
        if (!credentials.anonymous()) {
            if (config.v4auth) {
                std::string date = amz_date(now);
                SigV4Request sr{r.method, path, r.query, headers, r.payload_hash};
                auto sig = sign_v4(sr, credentials, SigV4Scope{config.region, "s3", date});
                if (!sig) {
                    return sig.error();
                }
                for (auto& h : sig->headers_to_add) {
                    headers.push_back(std::move(h));
                }
                headers.emplace_back("Authorization", sig->authorization);
            } else {
                // SigV2 signs the resource with the bucket in it, whatever the addressing style.
                std::string resource = "/" + config.bucket + "/" + uri_encode_path(r.key);
                std::string date = http_date(now);
                SigV2Request sr{r.method, resource, r.query, headers, date};
                auto sig = sign_v2(sr, credentials);
                if (!sig) {
                    return sig.error();
                }
                for (auto& h : sig->headers_to_add) {
                    headers.push_back(std::move(h));
                }
                headers.emplace_back("Authorization", sig->authorization);
            }
        }
        net::CallOptions o;
        o.method = r.method;
        o.url = scheme + "://" + host + path;
        if (!r.query.empty()) {
            o.url += "?" + encode_query(r.query);
        }
        o.headers = std::move(headers);
        o.shared_body = r.body;  // shared with the Request, kept for the next attempt
        o.body_source = r.body_source;
        o.body_size = r.body_size;
        o.verify_tls = !config.skipverify;
        o.connect_timeout = tuning.connect_timeout;
        o.stall_timeout = tuning.stall_timeout;
        return o;
    }

    // Headers every object-creating request carries (PUT, CreateMultipartUpload, CopyObject).
    void add_object_headers(net::HeaderList& h, const PutOptions* options) const {
        if (options != nullptr && !options->content_type.empty()) {
            h.emplace_back("Content-Type", options->content_type);
        }
        if (config.encrypt) {
            if (config.keyid.empty()) {
                h.emplace_back("x-amz-server-side-encryption", "AES256");
            } else {
                h.emplace_back("x-amz-server-side-encryption", "aws:kms");
                h.emplace_back("x-amz-server-side-encryption-aws-kms-key-id", config.keyid);
            }
        }
        if (!config.storageclass.empty() && config.storageclass != "NONE") {
            h.emplace_back("x-amz-storage-class", config.storageclass);
        }
    }

    std::string copy_source(const std::string& source_key) const {
        return "/" + config.bucket + "/" + uri_encode_path(source_key);
    }

    void log_failure(const Request& r, const Error& e) {
        failures.inc();
        spdlog::warn("s3 {} {} {}: {} (HTTP {}): {}", r.op, r.method, r.key, e.code, e.status,
                     e.message);
    }

    void execute(Request request, std::function<void(Result<Response>)> done);
};

// All attempts of one buffered request.
class BufferedCall : public std::enable_shared_from_this<BufferedCall> {
public:
    BufferedCall(Client::Impl& client, Request request, std::function<void(Result<Response>)> done)
        : client_(client), request_(std::move(request)), done_(std::move(done)) {}

    void attempt() {
        ++attempts_;
        auto options = client_.prepare(request_);
        if (!options) {
            finish(options.error());
            return;
        }
        response_ = Response{};
        auto self = shared_from_this();
        net::CallHandlers h;
        h.on_head = [self](const net::CallResponse& r) {
            self->response_.status = r.status;
            self->response_.headers = r.headers;
            return true;
        };
        h.on_body = [self](std::string_view piece) {
            // Success bodies here are small XML documents; error bodies are capped.
            if (self->response_.status < 300 || self->response_.body.size() < kMaxErrorBody) {
                self->response_.body.append(piece);
            }
            return true;
        };
        h.on_done = [self](Status s, const net::CallResponse& r) { self->on_done(s, r); };
        call_ = net::HttpCall::start(*client_.loop, std::move(*options), std::move(h));
    }

private:
    void on_done(const Status& s, const net::CallResponse& r) {
        call_.reset();
        if (!s.ok()) {
            Error e = s.error();
            retry_or_fail(std::move(e), AttemptFailure{0, "transport", r.curl_code});
            return;
        }
        response_.status = r.status;
        response_.headers = r.headers;
        bool failed =
            r.status >= 300 || (request_.error_in_200 && is_error_document(response_.body));
        if (!failed) {
            finish(std::move(response_));
            return;
        }
        Error e = parse_error(response_.body, r.status);
        AttemptFailure f{r.status, e.code, 0};
        retry_or_fail(std::move(e), f);
    }

    void retry_or_fail(Error e, const AttemptFailure& f) {
        bool retryable = is_retryable(f, request_.idempotent) && !request_.body_source;
        if (retryable && attempts_ < client_.config.retry.max_attempts) {
            auto delay = backoff_delay(attempts_, client_.config.retry.base_delay,
                                       client_.config.retry.max_delay, random64());
            client_.retries.inc();
            spdlog::debug("s3 {} {}: attempt {} failed ({}), retrying in {} ms", request_.op,
                          request_.key, attempts_, e.to_string(), delay.count());
            auto self = shared_from_this();
            defer(client_.loop->base(), delay, [self] { self->attempt(); });
            return;
        }
        if (retryable) {
            e.message += fmt::format(" (gave up after {} attempts)", attempts_);
        }
        client_.log_failure(request_, e);
        finish(std::move(e));
    }

    void finish(Result<Response> result) {
        auto done = std::move(done_);
        auto self = shared_from_this();
        // Always on a later loop turn than the one that started the operation.
        defer(client_.loop->base(), std::chrono::milliseconds(0),
              [self, done = std::move(done), result = std::move(result)]() mutable {
                  done(std::move(result));
              });
    }

    Client::Impl& client_;
    Request request_;
    std::function<void(Result<Response>)> done_;
    int attempts_ = 0;
    Response response_;
    std::shared_ptr<net::HttpCall> call_;
};

void Client::Impl::execute(Request request, std::function<void(Result<Response>)> done) {
    auto call = std::make_shared<BufferedCall>(*this, std::move(request), std::move(done));
    // Start on the next loop turn so every callback is asynchronous.
    defer(loop->base(), std::chrono::milliseconds(0), [call] { call->attempt(); });
}

// A streamed GET with transparent resume (see Client::get).
class StreamedRead : public ObjectRead, public std::enable_shared_from_this<StreamedRead> {
public:
    StreamedRead(Client::Impl& client, std::string key, std::optional<ByteRange> range,
                 ReadHandlers handlers)
        : client_(client), key_(std::move(key)), range_(range), handlers_(std::move(handlers)) {}

    void attempt() {
        if (cancelled_) {
            return;
        }
        ++attempts_;
        Request r;
        r.op = "GetObject";
        r.method = "GET";
        r.key = key_;
        if (delivered_ > 0) {
            ByteRange rest{(range_ ? range_->first : 0) + delivered_,
                           range_ ? range_->last : std::nullopt};
            r.headers.emplace_back("Range", range_header(rest));
            if (!info_.etag.empty()) {
                r.headers.emplace_back("If-Match", info_.etag);  // same object, or 412
            }
        } else if (range_) {
            r.headers.emplace_back("Range", range_header(*range_));
        }
        request_ = r;
        auto options = client_.prepare(r);
        if (!options) {
            fail(options.error());
            return;
        }
        status_ = 0;
        error_body_.clear();
        auto self = shared_from_this();
        net::CallHandlers h;
        h.on_head = [self](const net::CallResponse& resp) { return self->on_head(resp); };
        h.on_body = [self](std::string_view piece) { return self->on_body(piece); };
        h.on_done = [self](Status s, const net::CallResponse& resp) { self->on_done(s, resp); };
        call_ = net::HttpCall::start(*client_.loop, std::move(*options), std::move(h));
    }

    void resume() override {
        if (!paused_) {
            return;
        }
        paused_ = false;
        if (call_) {
            call_->resume_download();
        }
    }

    void cancel() override {
        cancelled_ = true;
        if (call_) {
            call_->cancel();
            call_.reset();
        }
    }

    std::uint64_t delivered() const override { return delivered_; }

private:
    bool on_head(const net::CallResponse& resp) {
        status_ = resp.status;
        if (status_ >= 300) {
            return true;  // the error body is collected and parsed in on_done
        }
        if (head_sent_) {
            // A resumed attempt must continue where we were, nothing else.
            if (status_ != 206) {
                mismatch_ = true;
                return false;
            }
            return true;
        }
        info_.status = status_;
        info_.size = to_u64(net::find_header(resp.headers, "Content-Length"));
        info_.total_size = info_.size;
        if (status_ == 206) {
            auto total = content_range_total(net::find_header(resp.headers, "Content-Range"));
            if (!total.empty() && total != "*") {
                info_.total_size = to_u64(total);
            }
        }
        info_.etag = std::string(net::find_header(resp.headers, "ETag"));
        info_.content_type = std::string(net::find_header(resp.headers, "Content-Type"));
        info_.last_modified = std::string(net::find_header(resp.headers, "Last-Modified"));
        head_sent_ = true;
        if (handlers_.on_head) {
            handlers_.on_head(info_);
        }
        return !cancelled_;
    }

    bool on_body(std::string_view piece) {
        if (status_ >= 300) {
            if (error_body_.size() < kMaxErrorBody) {
                error_body_.append(piece);
            }
            return true;
        }
        delivered_ += piece.size();
        bool more = !handlers_.on_body || handlers_.on_body(piece);
        if (!more) {
            paused_ = true;
        }
        return more;
    }

    void on_done(const Status& s, const net::CallResponse& resp) {
        call_.reset();
        if (cancelled_) {
            return;
        }
        if (mismatch_) {
            fail(make_error(
                "ResumeFailed",
                fmt::format("resumed GET of {} answered HTTP {} instead of 206", key_, status_),
                status_));
            return;
        }
        if (!s.ok()) {
            retry_or_fail(s.error(), AttemptFailure{0, "transport", resp.curl_code});
            return;
        }
        if (resp.status >= 300) {
            Error e = parse_error(error_body_, resp.status);
            retry_or_fail(e, AttemptFailure{resp.status, e.code, 0});
            return;
        }
        auto done = std::move(handlers_.on_done);
        if (done) {
            done(Status{});
        }
    }

    void retry_or_fail(Error e, const AttemptFailure& f) {
        if (is_retryable(f, true) && attempts_ < client_.config.retry.max_attempts) {
            auto delay = backoff_delay(attempts_, client_.config.retry.base_delay,
                                       client_.config.retry.max_delay, random64());
            client_.retries.inc();
            spdlog::info(
                "s3 GetObject {}: attempt {} failed after {} bytes ({}); resuming in {} ms", key_,
                attempts_, delivered_, e.to_string(), delay.count());
            auto self = shared_from_this();
            defer(client_.loop->base(), delay, [self] { self->attempt(); });
            return;
        }
        fail(std::move(e));
    }

    void fail(Error e) {
        client_.log_failure(request_, e);
        auto done = std::move(handlers_.on_done);
        auto self = shared_from_this();
        defer(client_.loop->base(), std::chrono::milliseconds(0),
              [self, done = std::move(done), e = std::move(e)]() mutable {
                  if (done && !self->cancelled_) {
                      done(std::move(e));
                  }
              });
    }

    Client::Impl& client_;
    std::string key_;
    std::optional<ByteRange> range_;
    ReadHandlers handlers_;
    Request request_;
    ObjectInfo info_;
    std::shared_ptr<net::HttpCall> call_;
    std::string error_body_;
    std::uint64_t delivered_ = 0;
    int attempts_ = 0;
    int status_ = 0;
    bool head_sent_ = false;
    bool paused_ = false;
    bool cancelled_ = false;
    bool mismatch_ = false;
};

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<Client>> Client::create(net::CurlLoop& loop, const config::S3Config& config,
                                               const std::map<std::string, std::string>& env,
                                               ClientTuning tuning) {
    if (config.bucket.empty()) {
        return make_error("config.invalid", "storage.s3.bucket: required");
    }
    if (config.chunksize < kMinPartSize) {
        return make_error("config.invalid", "storage.s3.chunksize: must be at least 5242880");
    }
    if (config.multipart.concurrency < 1) {
        return make_error("config.invalid", "storage.s3.multipart.concurrency: must be >= 1");
    }
    if (config.retry.max_attempts < 1) {
        return make_error("config.invalid", "storage.s3.retry.max_attempts: must be >= 1");
    }
    auto impl = std::make_unique<Impl>();
    impl->loop = &loop;
    impl->config = config;
    impl->tuning = tuning;
    impl->credentials = resolve_credentials(config, env);
    if (!config.regionendpoint.empty()) {
        std::string ep = config.regionendpoint;
        auto sep = ep.find("://");
        if (sep != std::string::npos) {
            impl->scheme = ep.substr(0, sep);
            ep = ep.substr(sep + 3);
        } else {
            impl->scheme = config.secure ? "https" : "http";
        }
        while (!ep.empty() && ep.back() == '/') {
            ep.pop_back();
        }
        if (ep.empty() || ep.find('/') != std::string::npos ||
            (impl->scheme != "http" && impl->scheme != "https")) {
            return make_error("config.invalid",
                              "storage.s3.regionendpoint: expected [http[s]://]host[:port], got '" +
                                  config.regionendpoint + "'");
        }
        impl->host = ep;
        impl->base_path = "/" + config.bucket;
    } else {
        impl->scheme = config.secure ? "https" : "http";
        impl->host = fmt::format("{}.s3.{}.amazonaws.com", config.bucket, config.region);
    }
    return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

const config::S3Config& Client::config() const {
    return impl_->config;
}
net::CurlLoop& Client::loop() const {
    return *impl_->loop;
}

void Client::head(std::string key, std::function<void(Result<ObjectInfo>)> done) {
    Request r;
    r.op = "HeadObject";
    r.method = "HEAD";
    r.key = std::move(key);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        ObjectInfo info;
        info.status = res->status;
        info.size = to_u64(net::find_header(res->headers, "Content-Length"));
        info.total_size = info.size;
        info.etag = std::string(net::find_header(res->headers, "ETag"));
        info.content_type = std::string(net::find_header(res->headers, "Content-Type"));
        info.last_modified = std::string(net::find_header(res->headers, "Last-Modified"));
        done(std::move(info));
    });
}

std::shared_ptr<ObjectRead> Client::get(std::string key, std::optional<ByteRange> range,
                                        ReadHandlers handlers) {
    auto read = std::make_shared<StreamedRead>(*impl_, std::move(key), range, std::move(handlers));
    defer(impl_->loop->base(), std::chrono::milliseconds(0), [read] { read->attempt(); });
    return read;
}

void Client::put(std::string key, std::shared_ptr<const std::string> body, PutOptions options,
                 std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "PutObject";
    r.method = "PUT";
    r.key = std::move(key);
    if (!body) {
        body = std::make_shared<const std::string>();
    }
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-MD5", md5_base64(*body));
    impl_->add_object_headers(r.headers, &options);
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(std::string(net::find_header(res->headers, "ETag")));
    });
}

void Client::remove(std::string key, std::function<void(Status)> done) {
    Request r;
    r.op = "DeleteObject";
    r.method = "DELETE";
    r.key = std::move(key);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        done(res ? Status{} : Status{res.error()});
    });
}

void Client::copy(std::string source_key, std::string dest_key,
                  std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "CopyObject";
    r.method = "PUT";
    r.key = std::move(dest_key);
    r.error_in_200 = true;
    r.headers.emplace_back("x-amz-copy-source", impl_->copy_source(source_key));
    impl_->add_object_headers(r.headers, nullptr);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::create_multipart(std::string key, PutOptions options,
                              std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "CreateMultipartUpload";
    r.method = "POST";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploads", "", true});
    r.idempotent = false;
    impl_->add_object_headers(r.headers, &options);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_upload_id(res->body));
    });
}

void Client::upload_part(std::string key, std::string upload_id, int part_number,
                         std::shared_ptr<const std::string> body,
                         std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPart";
    r.method = "PUT";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    if (!body) {
        body = std::make_shared<const std::string>();
    }
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-MD5", md5_base64(*body));
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(std::string(net::find_header(res->headers, "ETag")));
    });
}

std::shared_ptr<net::HttpCall> Client::upload_part_stream(
    std::string key, std::string upload_id, int part_number, std::uint64_t size,
    std::function<std::size_t(char*, std::size_t)> source,
    std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPart";
    r.method = "PUT";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    r.payload_hash = std::string(kUnsignedPayload);
    r.body_source = std::move(source);
    r.body_size = static_cast<std::int64_t>(size);
    auto options = impl_->prepare(r);
    if (!options) {
        defer(impl_->loop->base(), std::chrono::milliseconds(0),
              [done = std::move(done), e = options.error()] { done(e); });
        return nullptr;
    }
    auto body = std::make_shared<std::string>();
    auto status = std::make_shared<int>(0);
    Impl* impl = impl_.get();
    net::CallHandlers h;
    h.on_head = [status](const net::CallResponse& resp) {
        *status = resp.status;
        return true;
    };
    h.on_body = [body](std::string_view piece) {
        if (body->size() < kMaxErrorBody) {
            body->append(piece);
        }
        return true;
    };
    h.on_done = [impl, r, body, done = std::move(done)](Status s, const net::CallResponse& resp) {
        if (!s.ok()) {
            impl->log_failure(r, s.error());
            done(s.error());
            return;
        }
        if (resp.status >= 300) {
            Error e = parse_error(*body, resp.status);
            impl->log_failure(r, e);
            done(std::move(e));
            return;
        }
        done(std::string(net::find_header(resp.headers, "ETag")));
    };
    return net::HttpCall::start(*impl_->loop, std::move(*options), std::move(h));
}

void Client::upload_part_copy(std::string key, std::string upload_id, int part_number,
                              std::string source_key, ByteRange range,
                              std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPartCopy";
    r.method = "PUT";
    r.key = std::move(key);
    r.error_in_200 = true;
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    r.headers.emplace_back("x-amz-copy-source", impl_->copy_source(source_key));
    r.headers.emplace_back("x-amz-copy-source-range", range_header(range));
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::complete_multipart(std::string key, std::string upload_id,
                                std::vector<CompletedPart> parts,
                                std::function<void(Result<std::string>)> done) {
    std::sort(parts.begin(), parts.end(), [](const CompletedPart& a, const CompletedPart& b) {
        return a.part_number < b.part_number;
    });
    Request r;
    r.op = "CompleteMultipartUpload";
    r.method = "POST";
    r.key = std::move(key);
    r.error_in_200 = true;
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    auto body = std::make_shared<const std::string>(complete_multipart_body(parts));
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-Type", "application/xml");
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::abort_multipart(std::string key, std::string upload_id,
                             std::function<void(Status)> done) {
    Request r;
    r.op = "AbortMultipartUpload";
    r.method = "DELETE";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res && res.error().code != "NoSuchUpload") {
            done(res.error());
            return;
        }
        done(Status{});
    });
}

namespace {

// Drives a paginated listing: requests `base` plus the previous page's markers, parses each page,
// collects its items, and stops when a page names no next markers.
template <typename Item, typename Page>
struct Pager : std::enable_shared_from_this<Pager<Item, Page>> {
    using Markers = std::vector<std::pair<std::string, std::string>>;

    Client::Impl* impl = nullptr;
    Request base;
    Result<Page> (*parse)(std::string_view) = nullptr;
    Markers (*next_markers)(const Page&) = nullptr;
    std::vector<Item>& (*page_items)(Page&) = nullptr;
    std::function<void(Result<std::vector<Item>>)> done;
    std::vector<Item> items;

    void step(Markers markers) {
        Request r = base;
        for (auto& [k, v] : markers)
            r.query.push_back(QueryParam{k, v, false});
        auto self = this->shared_from_this();
        impl->execute(std::move(r), [self](Result<Response> res) {
            if (!res) {
                self->done(res.error());
                return;
            }
            Result<Page> page = self->parse(res->body);
            if (!page) {
                self->done(page.error());
                return;
            }
            auto& got = self->page_items(*page);
            std::move(got.begin(), got.end(), std::back_inserter(self->items));
            Markers following = self->next_markers(*page);
            if (following.empty()) {
                self->done(std::move(self->items));
                return;
            }
            self->step(std::move(following));
        });
    }
};

}  // namespace

void Client::list_parts(std::string key, std::string upload_id,
                        std::function<void(Result<std::vector<PartInfo>>)> done,
                        std::size_t page_size) {
    auto pager = std::make_shared<Pager<PartInfo, PartsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListParts";
    r.method = "GET";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    if (page_size > 0) r.query.push_back(QueryParam{"max-parts", std::to_string(page_size), false});
    pager->parse = &parse_list_parts;
    pager->next_markers = [](const PartsPage& p) {
        Pager<PartInfo, PartsPage>::Markers m;
        if (p.truncated && !p.next_part_number_marker.empty()) {
            m.emplace_back("part-number-marker", p.next_part_number_marker);
        }
        return m;
    };
    pager->page_items = [](PartsPage& p) -> std::vector<PartInfo>& { return p.parts; };
    pager->done = std::move(done);
    pager->step({});
}

void Client::list_multipart_uploads(std::string prefix,
                                    std::function<void(Result<std::vector<UploadInfo>>)> done,
                                    std::size_t page_size) {
    auto pager = std::make_shared<Pager<UploadInfo, UploadsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListMultipartUploads";
    r.method = "GET";
    r.query.push_back(QueryParam{"uploads", "", true});
    if (!prefix.empty()) r.query.push_back(QueryParam{"prefix", std::move(prefix), false});
    if (page_size > 0) {
        r.query.push_back(QueryParam{"max-uploads", std::to_string(page_size), false});
    }
    pager->parse = &parse_list_multipart_uploads;
    pager->next_markers = [](const UploadsPage& p) {
        Pager<UploadInfo, UploadsPage>::Markers m;
        if (p.truncated && (!p.next_key_marker.empty() || !p.next_upload_id_marker.empty())) {
            m.emplace_back("key-marker", p.next_key_marker);
            m.emplace_back("upload-id-marker", p.next_upload_id_marker);
        }
        return m;
    };
    pager->page_items = [](UploadsPage& p) -> std::vector<UploadInfo>& { return p.uploads; };
    pager->done = std::move(done);
    pager->step({});
}

void Client::list_objects(std::string prefix,
                          std::function<void(Result<std::vector<ObjectEntry>>)> done,
                          std::size_t page_size) {
    auto pager = std::make_shared<Pager<ObjectEntry, ObjectsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListObjectsV2";
    r.method = "GET";
    r.query.push_back(QueryParam{"list-type", "2", false});
    if (!prefix.empty()) r.query.push_back(QueryParam{"prefix", std::move(prefix), false});
    if (page_size > 0) r.query.push_back(QueryParam{"max-keys", std::to_string(page_size), false});
    pager->parse = &parse_list_objects_v2;
    pager->next_markers = [](const ObjectsPage& p) {
        Pager<ObjectEntry, ObjectsPage>::Markers m;
        if (p.truncated && !p.next_continuation_token.empty()) {
            m.emplace_back("continuation-token", p.next_continuation_token);
        }
        return m;
    };
    pager->page_items = [](ObjectsPage& p) -> std::vector<ObjectEntry>& { return p.objects; };
    pager->done = std::move(done);
    pager->step({});
}

}  // namespace drayage::s3
