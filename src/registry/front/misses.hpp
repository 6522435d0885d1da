// Blob misses (src/registry/front/misses.cpp): a GET of a blob the cache does not have.
//
// One flight per digest: the first request asks the origins in order (FrontDeps::origins) and
// drives the first that has the blob into a CacheFill; requests for the same digest that arrive
// while the origins are still being asked wait in the flight, then every one of them reads from
// the fill at its own offset and pace (stream_from_cache). Once the fill exists the flight ends:
// later requests find the blob filling in the cache and join it there.
//
// Write-through (storage.s3.writethrough): the bytes of a blob from the upstream go to the bucket
// too, as a multipart upload completed only once the fill's sha256 of the bytes (computed once,
// by the cache's hasher thread) matched the digest (CacheFill::on_end), so a corrupt upstream
// answer never becomes visible in the shared tier. An upload whose source
// fails, or whose fill is cancelled, is aborted.
//
// A blob the cache cannot store (larger than cache.max_size, or the cache not writable now) is
// streamed to each waiting client on its own, uncached and verified (UncachedStream).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "drayage/cache/cache.hpp"
#include "drayage/config/config.hpp"
#include "drayage/http/server.hpp"
#include "drayage/registry/origin.hpp"
#include "drayage/registry/routes.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/s3/multipart.hpp"

namespace drayage::registry::front {

class BlobMisses : public std::enable_shared_from_this<BlobMisses> {
public:
    // `cache`, `config` and `bucket` (null: no storage.s3) outlive this; `origins` are asked in
    // order.
    BlobMisses(cache::Cache* cache, const config::Config* config, s3::Client* bucket,
               std::vector<std::shared_ptr<BlobOrigin>> origins);

    // Serves a GET of r.reference (in repository r.name, already admitted and proven), which
    // the cache does not have: joins the digest's flight or starts one. The client's Range is
    // honoured once the fill exists. 404 BLOB_UNKNOWN when no origin has the blob; an origin's
    // error as send_origin_error maps it.
    void join_or_start(const std::shared_ptr<http::Exchange>& ex, const Route& r);

private:
    struct Waiter {
        std::shared_ptr<http::Exchange> ex;
        std::string range;
    };
    // A blob miss before its fill exists: the origins are being asked.
    struct BlobMiss;

    // Asks origins_[miss->origin]; past the last one, 404 to every waiter.
    void ask_origin(const std::shared_ptr<BlobMiss>& miss);
    // The origin has the blob: starts (or joins) its fill and hands the waiters to it. False
    // stops the origin's transfer (someone else fills it, or it cannot be cached).
    bool origin_head(const std::shared_ptr<BlobMiss>& miss, const OriginHead& head);
    void stream_uncached(const std::shared_ptr<BlobMiss>& miss);
    // Not found before a head: the next origin. Otherwise ends the fill and the write-through.
    void origin_done(const std::shared_ptr<BlobMiss>& miss, Status st);
    void start_write_through(const std::shared_ptr<BlobMiss>& miss,
                             std::optional<std::uint64_t> size);
    // Completes the bucket copy when `verified` (the fill's sha256 matched), aborts it
    // otherwise. No-op without a copy.
    static void end_write_through(std::shared_ptr<s3::MultipartUpload> upload,
                                  const std::string& digest, const Status& verified);

    cache::Cache* cache_;
    const config::Config* config_;
    s3::Client* bucket_;
    std::vector<std::shared_ptr<BlobOrigin>> origins_;
    std::map<std::string, std::shared_ptr<BlobMiss>> misses_;  // by digest
};

}  // namespace drayage::registry::front
