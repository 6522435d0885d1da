// The fetch layer: where the bytes of a blob the cache does not have come from, and who is already
// fetching them. The pull path (a client's GET that missed) and the push path (the read-back of
// a pushed blob into the cache) both go through one Fetcher, so a digest has one flight however
// many parties want it.
//
// A fetch asks the sources of an OriginSet in order and drives the first that has the blob into
// a CacheFill (Cache::start_or_join_fill, whose own map keeps one fill per digest once the fill
// exists; the Fetcher's flight covers the time before it, while origins are being asked). Every
// party waiting on the flight is told its outcome once: the cache is filling the blob (read it
// from the cache at your own offset and pace), the blob cannot be stored (stream it yourself
// from the origin that has it: stream_uncached, uncached_stream.hpp), no origin has it, or the
// fetch failed.
//
// The layer's files are in src/registry/fetch/: this Fetcher (fetcher.cpp), the origins
// (bucket_origin.cpp, upstream_origin.cpp) and the uncached stream (uncached_stream.cpp).
//
// Write-through: a source marked `write_through` has its bytes teed into the bucket as they
// arrive (an s3::MultipartUpload of the blob's data key), completed only once the fill's own
// sha256 matched the digest (CacheFill::on_end: the bytes are hashed once, by the cache's hasher
// thread), aborted otherwise. A corrupt answer never becomes visible in the shared tier.
//
// Everything runs on the event loop thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/cache/cache.hpp"
#include "drayage/registry/origin.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry {

// Where a request's blob may come from, in the order the sources are asked. Resolved per request
// by its caller (today: the bucket, then the upstream registry).
struct OriginSet {
    struct Source {
        std::shared_ptr<BlobOrigin> origin;
        // Its bytes are also written to the bucket (storage.s3.writethrough for an upstream).
        bool write_through = false;
    };
    std::vector<Source> sources;
};

// What became of a fetch, for one party that waited on it.
struct FetchOutcome {
    enum class Kind {
        filling,    // the cache has a fill of the blob: read it from the cache (`fill`)
        uncached,   // the cache cannot store it: stream it yourself from `source`
        not_found,  // no source has it
        failed,     // a source failed before the blob's first byte, or the cache refused it
    };
    Kind kind = Kind::failed;
    // filling, uncached: the source that has the blob.
    std::shared_ptr<BlobOrigin> source;
    // filling: the fill (running, or already ended), and whether this flight started it (false:
    // another party, e.g. a push's read-back or an earlier flight, fills it already).
    std::shared_ptr<cache::CacheFill> fill;
    bool started = false;
    // failed: why. NOT_FOUND never appears here (that is not_found); the source's other errors
    // as it reported them; a fill the cache refused as "CACHE_REFUSED".
    Error error;
};

class Fetcher : public std::enable_shared_from_this<Fetcher> {
public:
    // `cache` outlives this. `bucket` (null: no storage.s3) and `rootdirectory` are where
    // write-through copies go.
    Fetcher(cache::Cache& cache, s3::Client* bucket, std::string rootdirectory);

    // Fetches blob `digest` of repository `repo` into the cache from `origins`, or joins the
    // flight of that digest if one is running (its origins are then the first caller's: a digest
    // names the same bytes wherever they come from). `done` runs once, on the loop; with no
    // sources at all it runs before fetch() returns. An uncached outcome is delivered on a later
    // loop turn, outside any origin callback, so the receiver may start transfers from it.
    void fetch(const std::string& repo, const std::string& digest, const OriginSet& origins,
               std::function<void(const FetchOutcome&)> done);

    // Whether a flight of `digest` is asking its origins now.
    bool in_flight(const std::string& digest) const { return flights_.count(digest) > 0; }

private:
    struct Flight;

    // Asks the flight's current source; past the last one, not_found to every waiter.
    void ask_origin(const std::shared_ptr<Flight>& f);
    // The source has the blob: starts (or joins) its fill and tells the waiters. False stops the
    // source's transfer (someone else fills it, or it cannot be cached).
    bool origin_head(const std::shared_ptr<Flight>& f, const OriginHead& head);
    // Not found before a head: the next source. Otherwise ends the fill and the write-through.
    void origin_done(const std::shared_ptr<Flight>& f, Status st);
    void start_write_through(const std::shared_ptr<Flight>& f, std::optional<std::uint64_t> size);
    // Tells every waiter of `f` (and forgets them).
    void tell(const std::shared_ptr<Flight>& f, const FetchOutcome& outcome);

    cache::Cache& cache_;
    s3::Client* bucket_;
    std::string rootdirectory_;
    std::map<std::string, std::shared_ptr<Flight>, std::less<>> flights_;  // by digest
};

}  // namespace drayage::registry
