// The S3 client (s3/client.hpp): creating one, and one attempt of a request on the wire,
// signed afresh (client_impl.hpp lists the other files).
#include "drayage/s3/client.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "client_impl.hpp"
#include "drayage/s3/retry.hpp"
#include "drayage/s3/sigv2.hpp"
#include "drayage/s3/sigv4.hpp"

namespace drayage::s3 {

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

std::string Client::Impl::wire_path(const std::string& key) const {
    std::string path = base_path + "/";
    path += uri_encode_path(key);
    return path;
}

// Builds the curl options for one attempt, signed now.
Result<net::CallOptions> Client::Impl::prepare(const Request& r) const {
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
void Client::Impl::add_object_headers(net::HeaderList& h, const PutOptions* options) const {
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

std::string Client::Impl::copy_source(const std::string& source_key) const {
    return "/" + config.bucket + "/" + uri_encode_path(source_key);
}

void Client::Impl::log_failure(const Request& r, const Error& e) {
    failures.inc();
    spdlog::warn("s3 {} {} {}: {} (HTTP {}): {}", r.op, r.method, r.key, e.code, e.status,
                 e.message);
}

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

}  // namespace drayage::s3
