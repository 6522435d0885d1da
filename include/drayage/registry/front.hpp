// The registry front: drayage's Registry API v2 endpoints (pull side) on top of the HTTP server.
//
//   GET  /v2/                                  200 {} (API version check)
//   GET|HEAD /v2/<name>/blobs/<digest>         cache -> origins (S3 bucket, upstream), Range
//   GET|HEAD /v2/<name>/manifests/<reference>  by digest: cached; by tag: TTL + revalidation with a
//                                              HEAD upstream, stale-if-error up to max_stale
//   GET  /v2/<name>/tags/list, /v2/_catalog    passed through to the upstream
//   DELETE /v2/<name>/blobs/<digest>,          forwarded; a 202 ends drayage's records of the
//          /v2/<name>/manifests/<reference>    digest or tag under <name> first (deletion.cpp)
//   GET  /healthz, /metrics
//
// A blob miss goes through the fetch layer (FrontDeps::fetcher, drayage/registry/fetch.hpp): one
// flight per digest asks the origins in order and drives the first that has the blob into a
// CacheFill; every request for that digest (also those arriving while the origins are still being
// asked) reads from the fill at its own offset and pace.
// Each response carries Content-Length, Content-Type, Docker-Content-Digest, ETag and
// Accept-Ranges: bytes; errors are Registry API error bodies.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "drayage/cache/cache.hpp"
#include "drayage/config/config.hpp"
#include "drayage/http/server.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/registry/byte_range.hpp"
#include "drayage/registry/fetch.hpp"
#include "drayage/registry/forwarder.hpp"
#include "drayage/registry/origin.hpp"
#include "drayage/registry/routes.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/s3/client.hpp"

namespace drayage::registry {

struct FrontDeps {
    const config::Config* config = nullptr;
    cache::Cache* cache = nullptr;
    UpstreamRegistry* upstream = nullptr;  // null: no upstream configured
    // The bucket (storage.s3), where admission looks for a repository's link to a digest
    // (prove_blob); null without storage.s3. Blob bytes come through `origins` and `fetcher`
    // (which writes through to the bucket itself).
    s3::Client* bucket = nullptr;
    // Asked in order on a blob miss (typically the S3 origin, then the upstream origin).
    OriginSet origins;
    // The fetch layer every blob miss goes through (shared with the push path's read-backs).
    std::shared_ptr<Fetcher> fetcher;
    // Blob uploads (POST/PATCH/PUT/GET/DELETE on /v2/<name>/blobs/uploads/...), with the route
    // already validated. Unset: uploads are answered 405 UNSUPPORTED.
    std::function<void(std::shared_ptr<http::Exchange>, const Route&)> uploads;
    // Everything else drayage does not serve itself (manifest PUT/DELETE, blob DELETE, unknown
    // /v2/ methods): forwarded to the registry behind (Forwarder::handle; the front passes a
    // gate for deletions). Unset: 405 UNSUPPORTED.
    std::function<void(std::shared_ptr<http::Exchange>, ForwardGate)> forward;
    // Client authentication and per-repository rules (config `auth`). Null: an open mirror.
    // When set, every /v2/ request is checked before it is routed (401 with a Bearer challenge
    // when denied; names normalised first), /auth/token is the token endpoint, and listings
    // show only readable repositories. With or without it, a blob or a manifest by digest is
    // served for <name> only when drayage knows the digest belongs to <name>.
    Authenticator* auth = nullptr;
    // auth.passthrough: reads of those repositories decided by the upstream with the client's
    // own Basic credentials. Null: pass-through repositories need a rule like any other.
    UpstreamAccessCheck* upstream_access = nullptr;
};

// The handler of a hit worker (`http.workers`): an extra event-loop thread with its own listening
// socket on the same address. It serves GET and HEAD of blobs complete in the cache itself, using
// only the part of the cache that is safe from any thread, and hands every other request, with
// its connection, to the main server (http::Exchange::hand_off). It serves only blobs with a
// committed link to the repository (the repository/digest proof, with or without `auth`), and
// with `auth` only what it can admit on its own (Authenticator::admit_hit); the main loop answers
// the rest. Plain HTTP only: with TLS there are no workers.
http::Handler make_hit_handler(cache::Cache& cache, const Authenticator* auth);

class RegistryFront {
public:
    explicit RegistryFront(FrontDeps deps);
    ~RegistryFront();
    RegistryFront(const RegistryFront&) = delete;
    RegistryFront& operator=(const RegistryFront&) = delete;

    // The http::Handler.
    void handle(std::shared_ptr<http::Exchange> exchange);

    // The permission hook for the push path. The front already checks, before it hands a
    // request to FrontDeps::uploads or ::forward, that the client may pull and push the
    // route's <name>; push code calls this for any other repository a request involves. `done`
    // gets true when allowed (always true without `auth`); when false, the exchange has been
    // answered (401 with a challenge for `repo`). `repo` is normalised here. `done` may run
    // before authorize() returns.
    void authorize(const std::shared_ptr<http::Exchange>& exchange, std::string_view repo,
                   Action action, std::function<void(bool)> done);

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace drayage::registry
