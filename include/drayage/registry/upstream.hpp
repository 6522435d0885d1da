// The upstream registry client: drayage's pull-through source (Docker Hub, or any Distribution /
// OCI registry).
//
// Every operation is non-blocking on the CurlLoop's thread and ends in exactly one callback, on
// that thread, unless the operation was cancelled or the UpstreamRegistry destroyed first (then
// none). Authentication is handled inside: the first request to a registry goes anonymous; a 401
// challenge (`Bearer realm=...,service=...,scope=...` or `Basic`) teaches the client what the
// registry wants, and from then on requests carry a token for their scope (fetched once per scope,
// cached until shortly before expiry; see TokenCache) or Basic credentials. A 401 on a request that
// carried credentials drops the token and retries once; a second 401 is UNAUTHORIZED. A token
// realm that is not a plain http(s) URL is never asked (BAD_CHALLENGE), and a token endpoint that
// fails is forgotten: the next request goes anonymous and learns the challenge anew.
//
// Time limits (config::UpstreamConfig): the response head within response_timeout; manifests,
// listings, token fetches and every error response complete within `timeout` from the request;
// a 2xx blob body ends when it stalls for stall_timeout. An error body is read up to 64 KiB (for
// the message), then the connection is closed.
//
// Errors (Error::code; Error::status is the upstream HTTP status when there was one):
//   UNREACHABLE      no connection (refused, DNS, connect timeout), or no upstream configured
//   TIMEOUT          no response head within response_timeout, a buffered or error response not
//                    complete within timeout, or a blob body stalled
//   INTERRUPTED      the connection broke after the response head (mid-body)
//   UNAUTHORIZED     401 after authenticating, or a token endpoint answering 403
//   TOKEN_INVALID    the token endpoint answered 2xx with no token in it (not JSON, a login
//                    page): its realm is forgotten like that of an endpoint that is down
//   TOKEN_REFUSED    the token endpoint answered 401 (status 401): it refused the credentials
//                    themselves, whatever the repository
//   NOT_FOUND        404
//   TOOMANYREQUESTS  429 (Docker Hub's pull rate limit)
//   UPSTREAM_<n>     any other non-2xx status n (e.g. UPSTREAM_503, UPSTREAM_403)
//   TOO_LARGE        a manifest or listing over its cap
//   DIGEST_MISMATCH  a manifest whose bytes do not hash to the digest it was asked for, or to the
//                    Docker-Content-Digest the registry sent (any algorithm drayage knows)
//   BAD_CHALLENGE    the registry asked for a token from a realm that is not an http(s) URL
//
// Every HTTP exchange (token fetches and 401 retries included) counts once in
// drayage_upstream_requests_total{op,status} (status "error" when no response arrived).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/config/config.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry {

// A manifest's head (HEAD) or the whole manifest (GET).
struct UpstreamManifest {
    int status = 0;
    std::string media_type;  // Content-Type as sent
    // GET: the verified digest (see get_manifest). HEAD: the registry's Docker-Content-Digest
    // when it is a well-formed sha256/sha384/sha512 digest (and the reference, when asked by
    // digest), else empty; a HEAD has no body to check it against, so it is only a claim.
    std::string digest;
    std::uint64_t size = 0;  // Content-Length (HEAD) or body size (GET)
    std::string body;        // GET only
    net::HeaderList headers;
};

// A blob's head: from HEAD, or the head of a GET before its body streams.
struct UpstreamBlobHead {
    int status = 0;             // 200, or 206 for a range
    std::uint64_t length = 0;   // bytes of this response's body (Content-Length)
    bool has_length = false;    // Content-Length was present
    std::string digest;         // Docker-Content-Digest, when sent and equal to the digest asked
    std::string content_range;  // for 206
    std::string effective_url;  // after redirects (e.g. the S3/CDN URL)
    net::HeaderList headers;
};

// A tags or catalog listing, passed through as the upstream sent it (2xx only; other statuses are
// errors like everywhere else, with the body's text in the message).
struct UpstreamListing {
    int status = 0;
    net::HeaderList headers;  // includes Link for pagination
    std::string body;
};

// Credentials for one operation in place of upstream.username/password (a pass-through access
// check asks as the client). A token fetched with them serves only the operations that waited
// for that fetch and is never stored, so no operation with other credentials can pick it up.
struct UpstreamCredentials {
    std::string username;
    std::string password;
};

// Inclusive byte range of a blob; `last` absent means to the end.
struct ByteRange {
    std::uint64_t first = 0;
    std::optional<std::uint64_t> last;
};

struct BlobHandlers {
    // The response head (2xx). Return false to abort; on_done then gets code "ABORTED".
    std::function<bool(const UpstreamBlobHead&)> on_head;
    // A piece of the body. Return false to pause: no more on_data until BlobFetch::resume().
    // The bytes passed in are consumed either way.
    std::function<bool(std::string_view)> on_data;
    // Exactly once, last (unless cancelled): ok() after the whole body, else the error. A
    // non-2xx answer ends here without on_head.
    std::function<void(Status)> on_done;
};

// Control of one streaming blob GET. Dropping it does not cancel the transfer.
class BlobFetch {
public:
    virtual ~BlobFetch() = default;
    // Resumes delivery after on_data returned false. Safe from any loop callback.
    virtual void resume() = 0;
    // Ends the transfer without calling on_done. Safe from inside the handlers.
    virtual void cancel() = 0;
};

class UpstreamRegistry {
public:
    // Manifests are small; a body over this is refused (TOO_LARGE).
    static constexpr std::uint64_t kMaxManifestBytes = 4 * 1024 * 1024;
    // Tag and catalog listings (paginated upstream) are capped at this.
    static constexpr std::uint64_t kMaxListingBytes = 16 * 1024 * 1024;

    template <typename T>
    using Done = std::function<void(Result<T>)>;

    // `config.url` is the registry's base URL (scheme://host[:port], no /v2). The loop must
    // outlive this object.
    UpstreamRegistry(net::CurlLoop& loop, config::UpstreamConfig config);
    // Cancels everything still in flight without calling callbacks.
    ~UpstreamRegistry();
    UpstreamRegistry(const UpstreamRegistry&) = delete;
    UpstreamRegistry& operator=(const UpstreamRegistry&) = delete;

    // HEAD /v2/<repo>/manifests/<reference>. `accept` is sent as the Accept header (pass the
    // client's, or the list of manifest types drayage understands). Does not count against
    // Docker Hub's pull rate limit. With `as`, asks with those credentials instead.
    void head_manifest(std::string_view repo, std::string_view reference, std::string_view accept,
                       Done<UpstreamManifest> done,
                       std::optional<UpstreamCredentials> as = std::nullopt);

    // GET /v2/<repo>/manifests/<reference>, at most kMaxManifestBytes. The body must hash to
    // `reference` when it is a digest, and to the registry's Docker-Content-Digest when that is a
    // digest drayage can check (else DIGEST_MISMATCH); a header that is not such a digest is
    // dropped. `digest` of the result: the reference when it is a digest, else the checked
    // header, else the body's sha256.
    void get_manifest(std::string_view repo, std::string_view reference, std::string_view accept,
                      Done<UpstreamManifest> done);

    // HEAD /v2/<repo>/blobs/<digest>, following redirects. With `as`, asks with those
    // credentials instead.
    void head_blob(std::string_view repo, std::string_view digest, Done<UpstreamBlobHead> done,
                   std::optional<UpstreamCredentials> as = std::nullopt);

    // GET /v2/<repo>/blobs/<digest> (with Range when `range` is set), streamed with flow control,
    // following redirects (307 to S3/CDN) without sending Authorization to another host. No
    // callback runs before this returns.
    std::shared_ptr<BlobFetch> get_blob(std::string_view repo, std::string_view digest,
                                        std::optional<ByteRange> range, BlobHandlers handlers);

    // GET /v2/<repo>/tags/list[?query] and GET /v2/_catalog[?query] (query without '?', passed
    // through: n=, last=).
    void get_tags(std::string_view repo, std::string_view query, Done<UpstreamListing> done);
    void get_catalog(std::string_view query, Done<UpstreamListing> done);

    // The Authorization header (empty: none) to send with a request of `scope` (non-empty,
    // "repository:<name>:pull,push") that drayage makes to this registry by other means (the
    // pass-through of writes): the configured credentials, as a token of that scope or as Basic,
    // whatever the registry's challenge asks for. While the challenge is unknown, a GET /v2/
    // learns it. Errors as for the other operations (a token endpoint that refuses: UNAUTHORIZED).
    void authorization(std::string_view scope, Done<std::string> done);
    // The registry answered 401 to a request sent with `authorization` for `scope`: a token in
    // it is dropped from the cache, so the next authorization() fetches a new one.
    void authorization_refused(std::string_view scope, std::string_view authorization);

    // Token endpoint round trips made so far (for tests and metrics).
    std::uint64_t token_fetches() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// The error for an upstream HTTP status (404 -> NOT_FOUND, ...), with `body` summarised into the
// message (Registry API error codes when it is one). Exposed for tests and for the pull path.
Error upstream_status_error(int status, std::string_view body, std::string_view what);

}  // namespace drayage::registry
