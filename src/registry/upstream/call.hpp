// Private to src/registry/upstream: what one UpstreamRegistry shares between its operations (the
// registry's challenge, the token cache, the calls in flight), and the description of one
// operation. call.cpp carries operations out (the UpstreamCall: authorize, send, time limits,
// one retry after a 401); upstream.cpp builds them for the public calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/net/curl_loop.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/registry/upstream_auth.hpp"

namespace drayage::registry {

// Error and 401 bodies are kept for messages up to this; past it the connection is closed (an
// error body that never ends must not hold the call, and the client waiting on it, forever).
inline constexpr std::size_t kMaxErrorBody = 64 * 1024;

// What a buffered call returns.
struct Reply {
    net::CallResponse head;
    std::string body;
    std::string authorization;  // the Authorization the request carried (empty: none)
};

// One operation: an HTTP request to the registry, authorized as its last challenge asked, sent
// once more after a first 401 that was a challenge.
struct UpstreamCallSpec {
    UpstreamCallSpec(std::string op_label, std::string http_method, std::string target)
        : op(std::move(op_label)), method(std::move(http_method)), url(std::move(target)) {}

    std::string op;  // the `op` label in drayage_upstream_requests_total
    std::string method;
    std::string url;
    net::HeaderList headers;  // Accept, Range, and for token fetches Authorization
    std::string scope;        // token scope; empty: no registry auth (token endpoint calls)
    std::optional<UpstreamCredentials> as;  // this operation's own credentials
    bool follow_redirects = false;
    // Buffered: the body (at most `cap` bytes of a 2xx, else TOO_LARGE) goes to on_reply.
    std::uint64_t cap = 0;
    std::function<void(Result<Reply>)> on_reply;
    // Only learn what to authorize `scope` with: once the registry's scheme is known, the
    // call ends with a Reply carrying the Authorization instead of sending the request.
    bool authorize_only = false;
    // Streamed (a blob GET): a 2xx body goes to `blob` with flow control.
    bool stream = false;
    std::string blob_digest;  // the digest a blob operation asks for
    BlobHandlers blob;
};

class UpstreamCall;

struct UpstreamRegistry::Impl {
    net::CurlLoop& loop;
    config::UpstreamConfig cfg;
    std::string base;  // config URL without trailing '/'

    // What the registry asked for in its last challenge. Unknown until the first 401: until then
    // requests go anonymous (a registry that wants nothing never costs a round trip).
    enum class Scheme { kUnknown, kBasic, kBearer };
    Scheme scheme = Scheme::kUnknown;
    std::string realm;
    std::string service;
    TokenCache tokens;
    std::uint64_t token_fetches = 0;

    // Every call not yet finished, so the destructor can cancel them.
    std::map<UpstreamCall*, std::shared_ptr<UpstreamCall>> live;

    Impl(net::CurlLoop& l, config::UpstreamConfig c) : loop(l), cfg(std::move(c)) {
        base = cfg.url;
        while (!base.empty() && base.back() == '/')
            base.pop_back();
    }
    ~Impl();

    std::string token_key(const std::string& scope) const {
        return realm + ' ' + service + ' ' + scope;
    }
    static std::string basic_header(const UpstreamCredentials& c);

    // A token endpoint that failed is not asked again on trust: the next request goes anonymous
    // and learns the registry's challenge anew (it may name another realm by now).
    void forget_realm(const std::string& failed) {
        if (scheme != Scheme::kBearer || realm != failed) return;
        scheme = Scheme::kUnknown;
        realm.clear();
        service.clear();
    }

    // Starts `spec` on the next loop iteration, so no callback runs inside the caller's call.
    // Exactly one of on_reply / blob.on_done runs, unless the returned handle cancels it or this
    // Impl is destroyed first.
    std::shared_ptr<BlobFetch> start(UpstreamCallSpec spec);
    // `keep`: store the token for later operations (not for an operation's own credentials).
    void fetch_token(const std::string& key, const std::string& scope,
                     const UpstreamCredentials& creds, bool keep);
};

// A blob's head as the client may see it. The registry's Docker-Content-Digest is kept only when
// it is the digest asked for: a blob is named by its digest, so any other value is wrong, and it
// must not travel on as if it described these bytes.
UpstreamBlobHead blob_head_of(const net::CallResponse& r, std::string_view requested);

}  // namespace drayage::registry
