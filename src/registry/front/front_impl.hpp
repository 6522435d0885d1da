// RegistryFront::Impl, the registry front's state, and which file owns which of its jobs.
//
//   front.cpp          the entry: RegistryFront, routing (handle) and one handler per endpoint
//                      (dispatch)
//   admission.cpp      who may do what: auth, the rules, auth.passthrough, cross-repository
//                      mounts, and the repository/digest proof (prove_blob) a blob needs on
//                      every mirror
//   blob_serving.cpp   blobs in the cache (hits, joins of a filling blob, Range, HEAD) and the
//                      hit workers' handler (blob_serving.hpp)
//   misses.cpp         a blob the cache does not have: asks the fetch layer (Fetcher, one flight
//                      per digest, write-through) and answers from what it says
//   uncached_stream.cpp  a blob the cache cannot store, verified on its way to one client
//   upstream_origin.cpp  the upstream registry as a BlobOrigin
//   manifests.cpp      manifests by digest and by tag: the tag records, TTL, revalidation,
//                      stale-if-error
//   deletion.cpp       DELETE of blobs and manifests: forwarded, and what the registry deleted
//                      ends in drayage's records too
//   listings.cpp       /v2/_catalog and tag lists from the upstream, the catalog filtered by
//                      the rules
//   responses.cpp      Registry API answers and errors (responses.hpp)
//
// Everything here runs on the main loop, except make_hit_handler's handler (a hit worker's).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/registry/front.hpp"

namespace drayage::registry {

struct RegistryFront::Impl : std::enable_shared_from_this<RegistryFront::Impl> {
    using Clock = std::chrono::steady_clock;

    FrontDeps deps;

    // Tag -> manifest digest, for revalidation and stale-if-error. Every change is also written
    // to the cache's tag records, so that a restarted mirror knows its tags while the upstream is
    // down; a tag not in this map is looked up there.
    struct TagEntry {
        std::string digest;
        std::string media_type;
        Clock::time_point checked;  // last time upstream confirmed it
    };
    std::map<std::string, TagEntry> tags;

    explicit Impl(FrontDeps d);

    const config::UpstreamConfig& upstream_config() const { return deps.config->upstream; }

    // ----- routing (front.cpp) ---------------------------------------------------------------
    void handle(const std::shared_ptr<http::Exchange>& ex);
    // Serves an admitted request.
    void dispatch(const std::shared_ptr<http::Exchange>& ex, const Route& r, const Identity& who);

    // ----- admission (admission.cpp; deps.auth set, except prove_blob) ------------------------
    // The rules, then dispatch (normalises r.name).
    void admit(const std::shared_ptr<http::Exchange>& ex, Route r);
    bool admit_by_rules(const std::shared_ptr<http::Exchange>& ex, Route& r, Identity& who);
    // A cross-repository mount is checked before the push path sees it.
    void check_mount(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                     const Identity& who);
    // auth.passthrough: the upstream decides reads with the client's own credentials.
    void admit_passthrough(const std::shared_ptr<http::Exchange>& ex, const Route& r);
    // RegistryFront::authorize.
    void authorize(const std::shared_ptr<http::Exchange>& ex, std::string_view repo, Action action,
                   std::function<void(bool)> done);
    // Runs `go` only once drayage knows r.reference belongs to r.name (see admission.cpp).
    void prove_blob(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                    std::function<void()> go);
    void refuse_unlinked(http::Exchange& ex, const std::optional<Error>& upstream_error);
    void refuse_unreadable_bucket(http::Exchange& ex, const Route& r, const Error& e);

    // ----- blobs (blob_serving.cpp) ----------------------------------------------------------
    void serve_blob(const std::shared_ptr<http::Exchange>& ex, const Route& r);
    void serve_proven_blob(const std::shared_ptr<http::Exchange>& ex, const Route& r);
    void head_blob(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                   const cache::Lookup& l);
    void head_from_origin(const std::shared_ptr<http::Exchange>& ex, const Route& r, std::size_t i);

    // ----- misses (misses.cpp) ---------------------------------------------------------------
    // A GET of a blob the cache does not have (admitted and proven): fetched through
    // deps.fetcher, then served from the fill, streamed uncached, or answered with the error.
    void serve_miss(const std::shared_ptr<http::Exchange>& ex, const Route& r);

    // ----- manifests and tags (manifests.cpp) ------------------------------------------------
    void remember_tag(const std::string& key, const std::string& digest,
                      const std::string& media_type);
    void forget_tag(std::map<std::string, TagEntry>::iterator it);
    // A tag this process has not seen, from the records of an earlier run.
    std::map<std::string, TagEntry>::iterator restore_tag(const std::string& key);
    void serve_manifest(const std::shared_ptr<http::Exchange>& ex, const Route& r);
    bool may_serve_stale(const TagEntry& e) const;
    void revalidate_tag(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                        const std::string& key, const TagEntry& entry, cache::Document doc);
    void fetch_manifest(const std::shared_ptr<http::Exchange>& ex, const Route& r);

    // ----- deletion (deletion.cpp) -------------------------------------------------------------
    // DELETE /v2/<name>/blobs/<digest> and /v2/<name>/manifests/<reference>, through the
    // forwarder: a 202 answer reaches the client only after end_tag / end_digest committed.
    void forward_delete(const std::shared_ptr<http::Exchange>& ex, const Route& r);
    // The tag record `key` ("<repo>:<tag>") ends; `done` runs once that is committed.
    void end_tag(const std::string& key, std::function<void()> done);
    // `digest` was deleted in `repo`: its link (the proof), the tags of `repo` naming it, and
    // the cached bytes once no repository links them (Cache::unlink); `done` after the commit.
    void end_digest(const std::string& repo, const std::string& digest, std::function<void()> done);

    // ----- listings (listings.cpp) -----------------------------------------------------------
    Result<std::string> filter_catalog(const Identity& who, const std::string& body) const;
    void pass_listing(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                      const Identity& who);
};

}  // namespace drayage::registry
