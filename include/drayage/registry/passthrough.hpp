// Passthrough: requests drayage does not serve itself (manifest PUT/DELETE, blob DELETE, ...)
// forwarded to the registry behind it (`upstream.url`), streaming in both directions.
//
// The request goes out with the client's method, path and query and its end-to-end headers
// (Authorization included, so the registry's own auth decides); hop-by-hop headers (Connection
// and the fields it names, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade, Expect)
// are dropped, Host is the upstream's, and X-Forwarded-Host / X-Forwarded-Proto carry the
// client's view, so the registry builds Location URLs that point back at drayage. The response
// (status, headers incl. Location, WWW-Authenticate, Docker-Content-Digest, and body) comes back
// unchanged, minus hop-by-hop headers; a 401 challenge is just passed back.
//
// Flow control: the client's body is read into a small buffer and paused above
// kBodyHighWatermark until curl has sent it; the response body is paused at curl while the
// client's socket is full. No body is ever held whole.
//
// Errors: the upstream unreachable (no response head): 502 UNAVAILABLE (Registry API body);
// cut mid-response: the client connection is aborted (never a short body taken for whole).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "drayage/http/server.hpp"
#include "drayage/net/curl_loop.hpp"

namespace drayage::registry {

struct PassthroughOptions {
    std::string upstream_url;            // "http://127.0.0.1:5000" (a path prefix is kept)
    std::string client_scheme = "http";  // X-Forwarded-Proto: "https" when drayage serves TLS
    bool verify_tls = true;
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds stall_timeout{30'000};
};

class Passthrough {
public:
    // `loop` must outlive this object and every call it started.
    Passthrough(net::CurlLoop& loop, PassthroughOptions options);
    ~Passthrough();
    Passthrough(const Passthrough&) = delete;
    Passthrough& operator=(const Passthrough&) = delete;

    // FrontDeps::passthrough.
    void handle(std::shared_ptr<http::Exchange> exchange);

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

// True for the headers a proxy must not forward (RFC 9110 7.6.1), `connection_tokens` being the
// comma-separated value(s) of the message's Connection header.
bool is_hop_by_hop(std::string_view name, std::string_view connection_tokens);

}  // namespace drayage::registry
