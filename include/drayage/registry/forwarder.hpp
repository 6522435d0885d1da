// Forwarder: requests drayage does not serve itself (manifest PUT/DELETE, blob DELETE, ...)
// forwarded to the registry behind it (`upstream.url`), streaming in both directions.
//
// The request goes out with the client's method, path and query and its end-to-end headers;
// hop-by-hop headers (Connection and the fields it names, Keep-Alive, Proxy-*, TE, Trailer,
// Transfer-Encoding, Upgrade, Expect) and Cookie are dropped, Host is the upstream's, and
// X-Forwarded-Host / X-Forwarded-Proto carry the client's view, so the registry builds Location
// URLs that point back at drayage. The response (status, headers incl. Location,
// Docker-Content-Digest, and body) comes back unchanged, minus hop-by-hop headers.
//
// Credentials. Without `credentials` (drayage has no `auth`: an open mirror, no realm of its
// own) the client's Authorization goes through, so the registry's own auth decides, and a 401
// challenge is passed back for the client to answer. With `credentials` (drayage is the realm)
// the client's Authorization never leaves drayage: the request carries drayage's own upstream
// credentials for the repository the path names (UpstreamRegistry::authorization, scope
// repository:<name>:pull,push; delete for DELETE; pull for GET/HEAD), or none when none are
// configured or the path names no repository. A 401 from the registry then becomes 403 DENIED
// (its challenge is not passed on: the client would send its drayage credentials to the
// registry's realm); credentials that cannot be had become 403 DENIED (refused) or 502.
//
// Flow control: the client's body is read into a small buffer and paused above
// kBodyHighWatermark until curl has sent it; the response body is paused at curl while the
// client's socket is full. No body is ever held whole.
//
// Errors: the upstream unreachable or not complete within total_timeout: 502 UNAVAILABLE
// (Registry API body) before the response head, else the client connection is aborted (never a
// short body taken for whole).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "drayage/http/server.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/registry/upstream.hpp"

namespace drayage::registry {

struct ForwarderOptions {
    std::string upstream_url;            // "http://127.0.0.1:5000" (a path prefix is kept)
    std::string client_scheme = "http";  // X-Forwarded-Proto: "https" when drayage serves TLS
    bool verify_tls = true;
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds stall_timeout{30'000};
    // The whole exchange, request body to the last response byte (upstream.timeout): what passes
    // through is manifests and small requests, and a response that never ends must not hold
    // the client's connection and the upstream's forever.
    std::chrono::milliseconds total_timeout{60'000};
    // Set when drayage has its own `auth`: requests carry these credentials, never the
    // client's. Must outlive the Forwarder.
    UpstreamRegistry* credentials = nullptr;
};

// Decides, before the registry's answer to a forwarded request reaches the client, what happens
// to it: called on the loop with the registry's status; the answer waits until `proceed` runs.
// proceed(true) sends the registry's answer on; proceed(false) drops it (the call is ended) and
// the caller answers the exchange itself. What lets a deletion the registry accepted take effect
// in drayage before the client hears of it. The registry's body, while held, is buffered up to
// 64 KiB, then read no further until `proceed`.
using ForwardGate = std::function<void(int status, std::function<void(bool pass_on)> proceed)>;

class Forwarder {
public:
    // `loop` must outlive this object and every call it started.
    Forwarder(net::CurlLoop& loop, ForwarderOptions options);
    ~Forwarder();
    Forwarder(const Forwarder&) = delete;
    Forwarder& operator=(const Forwarder&) = delete;

    // FrontDeps::forward. `gate` (optional) sees the registry's status first.
    void handle(std::shared_ptr<http::Exchange> exchange, ForwardGate gate = {});

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

// True for the headers a proxy must not forward (RFC 9110 7.6.1), `connection_tokens` being the
// comma-separated value(s) of the message's Connection header.
bool is_hop_by_hop(std::string_view name, std::string_view connection_tokens);

}  // namespace drayage::registry
