// The fetch layer (include/drayage/registry/fetch.hpp): one flight per digest from the origins
// into a CacheFill, and write-through of a source's bytes into the bucket.
#include <spdlog/spdlog.h>

#include <functional>
#include <string>
#include <utility>

#include "drayage/net/defer.hpp"
#include "drayage/registry/fetch.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/s3/multipart.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry {

namespace {

metrics::Counter& write_through_counter(const char* result) {
    return metrics::global().counter("drayage_writethrough_total",
                                     "Blobs written through to the bucket.", {{"result", result}});
}

// Completes the bucket copy when `verified` (the fill's sha256 matched), aborts it otherwise.
void end_write_through(std::shared_ptr<s3::MultipartUpload> upload, const std::string& digest,
                       const Status& verified) {
    if (!upload) return;
    if (!verified) {
        upload->abort([digest, why = verified.error().to_string()](Status) {
            spdlog::info("write-through of {} abandoned: {}", digest, why);
        });
        return;
    }
    upload->finish([digest, upload](Result<std::string> etag) {
        if (etag) {
            write_through_counter("ok").inc();
            spdlog::info("write-through of {} to the bucket complete", digest);
        } else {
            write_through_counter("error").inc();
            spdlog::warn("write-through of {} failed: {}", digest, etag.error().to_string());
        }
    });
}

}  // namespace

struct Fetcher::Flight {
    std::string repo;
    std::string digest;
    OriginSet origins;
    std::size_t next = 0;  // the source being asked
    std::vector<std::function<void(const FetchOutcome&)>> waiters;
    std::shared_ptr<OriginTransfer> transfer;
    std::shared_ptr<cache::CacheFill> fill;  // set when this flight drives the fill
    bool head_seen = false;
    std::shared_ptr<s3::MultipartUpload> bucket_copy;  // write-through

    const OriginSet::Source& source() const { return origins.sources[next]; }
};

Fetcher::Fetcher(cache::Cache& cache, s3::Client* bucket, std::string rootdirectory)
    : cache_(cache), bucket_(bucket), rootdirectory_(std::move(rootdirectory)) {}

void Fetcher::fetch(const std::string& repo, const std::string& digest, const OriginSet& origins,
                    std::function<void(const FetchOutcome&)> done) {
    if (auto it = flights_.find(digest); it != flights_.end()) {
        it->second->waiters.push_back(std::move(done));
        return;
    }
    if (origins.sources.empty()) {
        FetchOutcome none;
        none.kind = FetchOutcome::Kind::not_found;
        return done(none);
    }
    auto f = std::make_shared<Flight>();
    f->repo = repo;
    f->digest = digest;
    f->origins = origins;
    f->waiters.push_back(std::move(done));
    flights_[digest] = f;
    ask_origin(f);
}

void Fetcher::tell(const std::shared_ptr<Flight>& f, const FetchOutcome& outcome) {
    auto waiters = std::move(f->waiters);
    f->waiters.clear();
    for (auto& w : waiters)
        w(outcome);
}

void Fetcher::ask_origin(const std::shared_ptr<Flight>& f) {
    if (f->next >= f->origins.sources.size()) {
        flights_.erase(f->digest);
        FetchOutcome none;
        none.kind = FetchOutcome::Kind::not_found;
        return tell(f, none);
    }
    auto self = shared_from_this();
    OriginSink sink;
    sink.on_head = [self, f](const OriginHead& head) { return self->origin_head(f, head); };
    sink.on_data = [f](std::string_view bytes) {
        if (!f->fill) return true;
        bool more = f->fill->append(bytes);
        if (f->bucket_copy) more = f->bucket_copy->write(bytes) && more;
        return more;
    };
    sink.on_done = [self, f](Status st) { self->origin_done(f, st); };
    f->transfer = f->source().origin->get(f->repo, f->digest, std::move(sink));
}

bool Fetcher::origin_head(const std::shared_ptr<Flight>& f, const OriginHead& head) {
    f->head_seen = true;
    flights_.erase(f->digest);  // from here on, the cache's fill is the flight
    auto source = f->source().origin;
    auto fh = cache_.start_or_join_fill(f->digest, head.size);
    if (!fh) {
        f->transfer.reset();
        FetchOutcome o;
        o.source = source;
        if (fh.error().code == cache::kErrTooLarge || fh.error().code == cache::kErrUnwritable) {
            // Larger than the whole cache, or the cache cannot store right now: each waiter
            // streams it on its own, starting outside this callback of the origin's transfer.
            if (fh.error().code == cache::kErrTooLarge)
                spdlog::info("blob {} is larger than cache.max_size; streaming it uncached",
                             f->digest);
            o.kind = FetchOutcome::Kind::uncached;
            auto self = shared_from_this();
            net::defer(cache_.base(), std::chrono::milliseconds(0),
                       [self, f, o] { self->tell(f, o); });
            return false;
        }
        spdlog::warn("blob {} not cacheable: {}", f->digest, fh.error().to_string());
        o.kind = FetchOutcome::Kind::failed;
        o.error = make_error("CACHE_REFUSED", fh.error().message);
        tell(f, o);
        return false;
    }
    bool drive = fh->started;
    if (drive) {
        f->fill = fh->fill;
        std::weak_ptr<Flight> weak = f;
        f->fill->set_resume_callback([weak] {
            if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
        });
        f->fill->set_cancel_callback([weak] {
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
        if (f->source().write_through) start_write_through(f, head.size);
    }
    FetchOutcome o;
    o.kind = FetchOutcome::Kind::filling;
    o.source = source;
    o.fill = fh->fill;
    o.started = drive;
    tell(f, o);
    if (!drive) {
        // Someone else fills this digest already (e.g. a push's read-back); our bytes are not
        // needed.
        f->transfer.reset();
        return false;
    }
    return true;
}

void Fetcher::origin_done(const std::shared_ptr<Flight>& f, Status st) {
    auto transfer = std::move(f->transfer);  // keep alive until we return
    if (!f->head_seen) {
        if (!st && st.error().code == "NOT_FOUND") {
            ++f->next;
            return ask_origin(f);
        }
        flights_.erase(f->digest);
        FetchOutcome o;
        o.kind = FetchOutcome::Kind::failed;
        o.source = f->source().origin;
        o.error = st ? make_error("UNKNOWN", "origin ended without a response") : st.error();
        spdlog::warn("blob {} from {}: {}", f->digest, o.source->name(), o.error.to_string());
        return tell(f, o);
    }
    if (!f->fill) return;
    if (st) {
        // The copy in the bucket is completed when the fill verified the bytes, or aborted.
        if (auto upload = std::move(f->bucket_copy)) {
            f->fill->on_end([upload, digest = f->digest](const Status& verified) {
                end_write_through(upload, digest, verified);
            });
        }
        f->fill->finish();
    } else {
        end_write_through(std::move(f->bucket_copy), f->digest, st);
        spdlog::warn("blob {} from {} failed mid-stream: {}", f->digest, f->source().origin->name(),
                     st.error().to_string());
        f->fill->fail(st.error());
    }
    f->fill.reset();
}

void Fetcher::start_write_through(const std::shared_ptr<Flight>& f,
                                  std::optional<std::uint64_t> size) {
    if (!bucket_) return;
    auto digest = BlobDigest::parse(f->digest);
    if (!digest || digest->algorithm() != DigestAlgorithm::sha256) return;
    s3::BucketLayout layout(rootdirectory_);
    s3::MultipartUpload::Options o;
    o.key = layout.blob_data_key(*digest);
    o.expected_size = size.value_or(0);
    std::weak_ptr<Flight> weak = f;
    o.on_writable = [weak] {
        if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
    };
    f->bucket_copy = s3::MultipartUpload::start(*bucket_, std::move(o));
}

}  // namespace drayage::registry
