#include "misses.hpp"

#include <event2/event.h>
#include <spdlog/spdlog.h>

#include <functional>
#include <string>
#include <utility>

#include "blob_serving.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/util/metrics.hpp"
#include "responses.hpp"
#include "uncached_stream.hpp"

namespace drayage::registry::front {

using http::Exchange;

struct BlobMisses::BlobMiss {
    std::string repo;
    std::string digest;
    std::size_t origin = 0;
    std::vector<Waiter> waiters;
    std::shared_ptr<OriginTransfer> transfer;
    std::shared_ptr<cache::CacheFill> fill;
    bool head_seen = false;
    // storage.s3.writethrough: the same bytes go to the bucket. The multipart upload is
    // completed only once the fill's own sha256 of the bytes (the cache's hasher thread) matched
    // the digest, so a corrupt upstream answer never becomes visible in the shared tier, and no
    // byte is hashed twice.
    std::shared_ptr<s3::MultipartUpload> bucket_copy;
};

BlobMisses::BlobMisses(cache::Cache* cache, const config::Config* config, s3::Client* bucket,
                       std::vector<std::shared_ptr<BlobOrigin>> origins)
    : cache_(cache), config_(config), bucket_(bucket), origins_(std::move(origins)) {}

void BlobMisses::join_or_start(const std::shared_ptr<Exchange>& ex, const Route& r) {
    std::string range(ex->request().header("Range"));
    auto it = misses_.find(r.reference);
    if (it != misses_.end()) {
        ex->set_outcome("wait");
        it->second->waiters.push_back({ex, range});
        return;
    }
    if (origins_.empty()) {
        ex->set_outcome("miss:none");
        return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    }
    auto miss = std::make_shared<BlobMiss>();
    miss->repo = r.name;
    miss->digest = r.reference;
    miss->waiters.push_back({ex, range});
    misses_[r.reference] = miss;
    ask_origin(miss);
}

void BlobMisses::ask_origin(const std::shared_ptr<BlobMiss>& miss) {
    if (miss->origin >= origins_.size()) {
        misses_.erase(miss->digest);
        for (auto& w : miss->waiters) {
            if (w.ex->closed()) continue;
            w.ex->set_outcome("miss:none");
            send_error(*w.ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
        }
        return;
    }
    auto self = shared_from_this();
    BlobOrigin& origin = *origins_[miss->origin];
    OriginSink sink;
    sink.on_head = [self, miss](const OriginHead& head) { return self->origin_head(miss, head); };
    sink.on_data = [miss](std::string_view bytes) {
        if (!miss->fill) return true;
        bool more = miss->fill->append(bytes);
        if (miss->bucket_copy) more = miss->bucket_copy->write(bytes) && more;
        return more;
    };
    sink.on_done = [self, miss](Status st) { self->origin_done(miss, st); };
    miss->transfer = origin.get(miss->repo, miss->digest, std::move(sink));
}

// Each waiter of `miss` gets its own verified stream from the origin that has the blob. Started on
// the next loop turn: this runs in a callback of the origin's transfer, and curl refuses new
// transfers from inside its callbacks.
void BlobMisses::stream_uncached(const std::shared_ptr<BlobMiss>& miss) {
    auto origin = origins_[miss->origin];
    auto start = new std::function<void()>([miss, origin] {
        for (auto& w : miss->waiters) {
            if (w.ex->closed()) continue;
            w.ex->set_outcome("uncached:" + std::string(origin->name()));
            outcome_counter("blob", "uncached").inc();
            std::make_shared<UncachedStream>(w.ex, miss->digest, w.range,
                                             blob_head_lines(miss->digest))
                ->start(*origin, miss->repo);
        }
    });
    event_base_once(
        cache_->base(), -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* arg) {
            std::unique_ptr<std::function<void()>> fn(static_cast<std::function<void()>*>(arg));
            (*fn)();
        },
        start, nullptr);
}

bool BlobMisses::origin_head(const std::shared_ptr<BlobMiss>& miss, const OriginHead& head) {
    miss->head_seen = true;
    auto fh = cache_->start_or_join_fill(miss->digest, head.size);
    if (!fh) {
        misses_.erase(miss->digest);
        miss->transfer.reset();
        if (fh.error().code == cache::kErrTooLarge || fh.error().code == cache::kErrUnwritable) {
            // Larger than the whole cache, or the cache cannot store right now: each client
            // gets its own verified stream.
            if (fh.error().code == cache::kErrTooLarge) {
                spdlog::info("blob {} is larger than cache.max_size; streaming it uncached",
                             miss->digest);
            }
            stream_uncached(miss);
            return false;
        }
        spdlog::warn("blob {} not cacheable: {}", miss->digest, fh.error().to_string());
        for (auto& w : miss->waiters) {
            if (!w.ex->closed())
                send_error(*w.ex, 503, "UNAVAILABLE",
                           "blob cannot be cached: " + fh.error().message);
        }
        return false;
    }
    std::string origin_name(origins_[miss->origin]->name());
    misses_.erase(miss->digest);
    bool drive = fh->started;
    if (drive) {
        miss->fill = fh->fill;
        std::weak_ptr<BlobMiss> weak = miss;
        miss->fill->set_resume_callback([weak] {
            if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
        });
        miss->fill->set_cancel_callback([weak] {
            auto m = weak.lock();
            if (!m) return;
            if (m->transfer) {
                m->transfer->cancel();
                m->transfer.reset();
            }
            // The source is stopped before its end: a copy to the bucket is abandoned too, not
            // left as an open multipart upload.
            end_write_through(std::move(m->bucket_copy), m->digest,
                              make_error(cache::kErrAbandoned, "fill cancelled"));
        });
    }
    if (drive && origin_name == "upstream") start_write_through(miss, head.size);
    for (auto& w : miss->waiters) {
        if (w.ex->closed()) continue;
        w.ex->set_outcome("miss:" + origin_name);
        outcome_counter("blob", "miss:" + origin_name).inc();
        stream_from_cache(w.ex, *cache_, miss->digest, w.range);
    }
    miss->waiters.clear();
    if (!drive) {
        // Someone else fills this digest already (e.g. a push); our bytes are not needed.
        miss->transfer.reset();
        return false;
    }
    return true;
}

void BlobMisses::origin_done(const std::shared_ptr<BlobMiss>& miss, Status st) {
    auto transfer = std::move(miss->transfer);  // keep alive until we return
    if (!miss->head_seen) {
        if (!st && st.error().code == "NOT_FOUND") {
            ++miss->origin;
            return ask_origin(miss);
        }
        misses_.erase(miss->digest);
        Error e = st ? make_error("UNKNOWN", "origin ended without a response") : st.error();
        spdlog::warn("blob {} from {}: {}", miss->digest, origins_[miss->origin]->name(),
                     e.to_string());
        for (auto& w : miss->waiters) {
            if (!w.ex->closed()) send_origin_error(*w.ex, e, "BLOB_UNKNOWN");
        }
        return;
    }
    if (!miss->fill) return;
    if (st) {
        // The copy in the bucket is completed when the fill verified the bytes, or aborted.
        if (auto upload = std::move(miss->bucket_copy)) {
            miss->fill->on_end([upload, digest = miss->digest](const Status& verified) {
                end_write_through(upload, digest, verified);
            });
        }
        miss->fill->finish();
    } else {
        end_write_through(std::move(miss->bucket_copy), miss->digest, st);
        spdlog::warn("blob {} from {} failed mid-stream: {}", miss->digest,
                     origins_[miss->origin]->name(), st.error().to_string());
        miss->fill->fail(st.error());
    }
    miss->fill.reset();
}

void BlobMisses::start_write_through(const std::shared_ptr<BlobMiss>& miss,
                                     std::optional<std::uint64_t> size) {
    const auto& s3cfg = config_->storage.s3;
    if (!bucket_ || !s3cfg || !s3cfg->writethrough) return;
    auto digest = BlobDigest::parse(miss->digest);
    if (!digest || digest->algorithm() != DigestAlgorithm::sha256) return;
    s3::BucketLayout layout(s3cfg->rootdirectory);
    s3::MultipartUpload::Options o;
    o.key = layout.blob_data_key(*digest);
    o.expected_size = size.value_or(0);
    std::weak_ptr<BlobMiss> weak = miss;
    o.on_writable = [weak] {
        if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
    };
    miss->bucket_copy = s3::MultipartUpload::start(*bucket_, std::move(o));
}

void BlobMisses::end_write_through(std::shared_ptr<s3::MultipartUpload> upload,
                                   const std::string& digest, const Status& verified) {
    if (!upload) return;
    if (!verified) {
        upload->abort([digest, why = verified.error().to_string()](Status) {
            spdlog::info("write-through of {} abandoned: {}", digest, why);
        });
        return;
    }
    upload->finish([digest, upload](Result<std::string> etag) {
        if (etag) {
            metrics::global()
                .counter("drayage_writethrough_total", "Blobs written through to the bucket.",
                         {{"result", "ok"}})
                .inc();
            spdlog::info("write-through of {} to the bucket complete", digest);
        } else {
            metrics::global()
                .counter("drayage_writethrough_total", "Blobs written through to the bucket.",
                         {{"result", "error"}})
                .inc();
            spdlog::warn("write-through of {} failed: {}", digest, etag.error().to_string());
        }
    });
}

}  // namespace drayage::registry::front
