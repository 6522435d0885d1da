// RegistryFront::Impl, the registry front's state, and which file owns which of its jobs.
//
//   front.cpp          the entry: RegistryFront, routing (handle) and one handler per endpoint
//                      (dispatch)
//   admission.cpp      who may do what: auth, the rules, auth.passthrough, cross-repository
//                      mounts, and the repository/digest proof (prove_blob) a blob needs on
//                      every mirror
//   blob_serving.cpp   blobs in the cache (hits, joins of a filling blob, Range, HEAD) and the
//                      hit workers' handler (blob_serving.hpp)
//   misses.cpp         a blob the cache does not have (serve_miss): asks the fetch layer
//                      (Fetcher::fetch in src/registry/fetch/fetcher.cpp: one flight per digest,
//                      the origins, write-through) and answers from its outcome: the fill through
//                      stream_from_cache (blob_serving.cpp), an uncached blob through
//                      stream_uncached (src/registry/fetch/uncached_stream.cpp) with the exchange
//                      as its BlobSink (ExchangeSink), or the error
//   manifests.cpp      manifests by digest and by tag: the tag records, TTL, revalidation,
//                      stale-if-error
//   deletion.cpp       DELETE of blobs and manifests: forwarded, and what the registry deleted
//                      ends in drayage's records too
//   listings.cpp       /v2/_catalog and tag lists: whole lists from the upstream, kept for
//                      manifest_ttl, paged by drayage (n, last, Link), the catalog filtered by
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

#include "drayage/registry/catalog.hpp"
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

    // Whole listings from the upstream, sorted: tag lists by repository name, the catalog as
    // "_catalog" (no repository name starts with '_'). Served within manifest_ttl, stale while
    // the upstream is down up to max_stale; all of them together cost at most kMaxListingsCost
    // bytes (names and their std::string headers), the ones fetched longest ago dropped first.
    struct Listing {
        std::vector<std::string> names;
        Clock::time_point fetched;
        std::size_t cost = 0;
    };
    static constexpr std::size_t kMaxListingsCost = 64 * 1024 * 1024;
    std::map<std::string, Listing> listings;
    std::size_t listings_cost = 0;
    struct ListingFetch;
    // The clients waiting for a listing being read from the upstream, by the key above.
    using ListingWaiter = std::function<void(const Result<std::vector<std::string>>&)>;
    std::map<std::string, std::vector<ListingWaiter>> listing_flights;

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
    // Runs `go` only once drayage knows r.reference belongs to r.name (see admission.cpp);
    // otherwise `unproven`, or, when that is empty, refuse_unlinked's 404 (503 when the
    // upstream could not be asked).
    void prove_blob(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                    std::function<void()> go, std::function<void()> unproven = {});
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
    // deps.fetcher, then served from the fill (stream_from_cache), streamed uncached
    // (stream_uncached, fetch layer), or answered with the error.
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
    // GET of a listing: the page the query asks for, from the kept list or a fresh one.
    void pass_listing(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                      const Identity& who);
    // The whole list of `repo`'s tags ("": the catalog), every upstream page read, sorted and
    // without duplicates. Errors: the upstream's, LISTING_INVALID, LISTING_TOO_LONG (more than
    // kMaxListingNames names, kMaxListingPages pages or kMaxListingBytes of pages).
    void fetch_listing(std::string repo,
                       std::function<void(Result<std::vector<std::string>>)> done);
    void fetch_listing_page(const std::shared_ptr<ListingFetch>& fetch, const std::string& query);
    void keep_listing(const std::string& key, std::vector<std::string> names);
    // One page of `names` (the catalog first filtered for `who`), with its Link.
    void send_listing(const std::shared_ptr<http::Exchange>& ex, const Route& r,
                      const Identity& who, const ListingQuery& q,
                      const std::vector<std::string>& names, bool stale);
};

}  // namespace drayage::registry
