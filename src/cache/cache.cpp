// The Cache on the loop side: opening and closing, the writer's completions, lookups, readers and
// fills of blobs. CacheFill and BlobReader are in fill.cpp, documents, links and tags in
// records.cpp, the writer thread in writer.cpp.
#include "drayage/cache/cache.hpp"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "cache_impl.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/log.hpp"
#include "reader_core.hpp"

namespace drayage::cache {

// ---------------------------------------------------------------------------------------------
// Cache::Impl (loop side)

void Cache::Impl::defer(std::function<void()> fn) {
    deferred.push_back(std::move(fn));
    event_active(notify_ev, EV_READ, 0);
}

void Cache::Impl::run_deferred() {
    // Callbacks may defer more; run until none is left.
    while (!deferred.empty()) {
        std::vector<std::function<void()>> now;
        now.swap(deferred);
        for (auto& fn : now)
            fn();
    }
}

bool Cache::Impl::pin(const std::string& digest) {
    return pins.pin(digest);
}
void Cache::Impl::unpin(const std::string& digest) {
    pins.unpin(digest);
}

void Cache::Impl::forget_fill(CacheFill& fill) {
    auto it = fills.find(fill.digest_);
    if (it != fills.end() && it->second.get() == &fill) {
        fills.erase(it);
        unpin(fill.digest_);
    }
}

void Cache::Impl::on_completions() {
    std::vector<Completion> done = writer->take_completions();
    for (Completion& c : done) {
        queued_bytes -= std::min(queued_bytes, c.bytes_released);
        std::shared_ptr<CacheFill> fill;
        if (c.fill_id != 0) {
            auto it = by_id.find(c.fill_id);
            if (it != by_id.end()) fill = it->second.lock();
        }
        switch (c.kind) {
            case Completion::Kind::committed:
                if (fill) {
                    fill->queued_bytes_ -= std::min(fill->queued_bytes_, c.bytes_released);
                    if (fill->state_ != CacheFill::State::failed) {
                        fill->blob_id_ = c.blob_id;
                        fill->committed_ = std::max(fill->committed_, c.committed);
                        fill->in_flight_.erase(fill->in_flight_.begin(),
                                               fill->in_flight_.lower_bound(fill->committed_));
                    }
                }
                break;
            case Completion::Kind::fill_done:
                by_id.erase(c.fill_id);
                if (fill && fill->state_ != CacheFill::State::failed) {
                    if (c.ok) {
                        fill->state_ = CacheFill::State::complete;
                        fill->blob_id_ = c.blob_id;
                        fill->committed_ = fill->next_index_;
                        fill->in_flight_.clear();
                        fills_completed.fetch_add(1);
                        forget_fill(*fill);
                        fill->wake_readers();
                        fill->on_cancel_ = nullptr;
                        fill->on_resume_ = nullptr;
                        fill->report_end();
                    } else {
                        if (c.error.code == kErrDigestMismatch) digest_mismatches.fetch_add(1);
                        // The writer dropped the blob; the abort op lets it forget the fill.
                        fill->end_with(c.error, true);
                    }
                }
                break;
            case Completion::Kind::document_done: {
                auto it = pending_docs.find(c.digest);
                if (it != pending_docs.end() && it->second.id == c.id) pending_docs.erase(it);
                auto cb = doc_callbacks.find(c.id);
                if (cb != doc_callbacks.end()) {
                    auto fn = std::move(cb->second);
                    doc_callbacks.erase(cb);
                    Status st;
                    if (!c.ok) st = c.error;
                    if (fn) fn(st);
                }
                break;
            }
            case Completion::Kind::linked: pending_links.erase(c.digest); break;
            case Completion::Kind::unlinked: pending_unlinks.erase(c.digest); break;
            case Completion::Kind::barrier: {
                auto cb = idle_callbacks.find(c.id);
                if (cb != idle_callbacks.end()) {
                    auto fn = std::move(cb->second);
                    idle_callbacks.erase(cb);
                    fn();
                }
                break;
            }
        }
    }
    for (const auto& [fid, w] : by_id) {
        (void)fid;
        if (auto f = w.lock()) f->wake_readers();
    }
    if (queued_bytes <= options.queue_low_watermark && !paused.empty()) {
        std::vector<std::weak_ptr<CacheFill>> resume;
        resume.swap(paused);
        for (auto& w : resume) {
            auto f = w.lock();
            if (!f || f->state_ != CacheFill::State::running) continue;
            f->paused_ = false;
            if (f->on_resume_) defer(f->on_resume_);
        }
    }
}

std::uint64_t Cache::Impl::blob_charge(std::uint64_t size) const {
    const std::uint64_t cs = store->chunk_size();
    return kMetaCharge + size / cs * store->chunk_charge(cs) + store->chunk_charge(size % cs);
}

void Cache::Impl::remember_too_large(const std::string& digest) {
    if (!too_large.insert(digest).second) return;
    too_large_order.push_back(digest);
    if (too_large_order.size() > kTooLargeMemory) {
        too_large.erase(too_large_order.front());
        too_large_order.pop_front();
    }
}

void Cache::Impl::note_access(const BlobMeta& meta) {
    std::lock_guard touch_lock(touch_mu);  // hit workers record hits too
    std::int64_t now = clock::unix_now();
    auto& pending = touches[meta.digest];
    pending.hits += 1;
    std::int64_t interval = options.touch_interval.count();
    std::int64_t last = std::max(meta.last_access, pending.queued_at);
    if (now - last >= interval) {
        WriterOp op;
        op.kind = WriterOp::Kind::touch;
        op.digest = meta.digest;
        op.now = now;
        op.hits = pending.hits;
        writer->push(std::move(op));
        pending.hits = 0;
        pending.queued_at = now;
    }
    if (touches.size() > 65536) {
        // Bound the bookkeeping: flush and forget entries whose interval has passed.
        for (auto it = touches.begin(); it != touches.end();) {
            if (now - it->second.queued_at >= interval) {
                if (it->second.hits > 0) {
                    WriterOp op;
                    op.kind = WriterOp::Kind::touch;
                    op.digest = it->first;
                    op.now = now;
                    op.hits = it->second.hits;
                    writer->push(std::move(op));
                }
                it = touches.erase(it);
            } else {
                ++it;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cache

namespace {
void notify_cb(evutil_socket_t, short, void* arg) {
    static_cast<Cache::Impl*>(arg)->run_deferred();
}

void wake_cb(evutil_socket_t fd, short, void* arg) {
    char sink[256];
    while (::read(fd, sink, sizeof sink) > 0) {
    }
    auto* impl = static_cast<Cache::Impl*>(arg);
    impl->writer->clear_wake();
    impl->on_completions();
    impl->run_deferred();
}
}  // namespace

Cache::Cache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Cache>> Cache::open(event_base* base, CacheOptions options) {
    auto impl = std::make_unique<Impl>();
    impl->base = base;
    std::unique_ptr<BlobStore> store;
    if (options.store_factory) {
        store = options.store_factory();
    } else {
        const std::string& dir = options.config.path;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        auto lock = DirLock::acquire(dir);
        if (!lock) return lock.error();
        impl->lock.emplace(std::move(*lock));
        switch (last_shutdown(dir)) {
            case Shutdown::clean: break;
            case Shutdown::killed:
                spdlog::info(
                    "cache: the previous server at {} stopped without closing it; the "
                    "system stayed up, so every committed blob is intact",
                    dir);
                break;
            case Shutdown::system_down:
                spdlog::warn(
                    "cache: the system went down while a server had {} open; its last "
                    "writes may never have reached the disk, so the cache is discarded "
                    "and will refill",
                    dir);
                if (auto st = discard_store_files(dir); !st) return st.error();
                break;
        }
        StoreOptions so;
        so.path = options.config.path;
        so.max_size = options.config.max_size;
        so.chunk_size = options.chunk_size;
        auto opened = open_lmdb_store(so);
        if (!opened) return opened.error();
        store = std::move(*opened);
        if (auto st = mark_dirty(dir); !st) return st.error();
        if (struct statvfs fs{}; ::statvfs(dir.c_str(), &fs) == 0) {
            auto total = static_cast<std::uint64_t>(fs.f_blocks) * fs.f_frsize;
            if (total < so.max_size) {
                spdlog::warn(
                    "cache: cache.max_size ({} bytes) is larger than the whole filesystem "
                    "under {} ({} bytes); the cache will keep within what the disk can take",
                    so.max_size, dir, total);
            }
        }
    }
    impl->store = std::move(store);
    impl->options = std::move(options);

    // Startup sweep: a `filling` record belongs to a fill that died with its process.
    auto all = impl->store->list();
    if (!all) return all.error();
    std::uint64_t swept = 0;
    {
        auto w = impl->store->begin_write();
        if (!w) return w.error();
        for (const BlobMeta& m : *all) {
            if (m.state != BlobState::filling) continue;
            auto dropped = (*w)->drop_blob(m.digest);
            if (!dropped) return dropped.error();
            ++swept;
        }
        if (auto st = (*w)->commit(); !st) return st.error();
    }
    if (swept > 0) spdlog::info("cache: discarded {} partial fills left by a previous run", swept);

    impl->writable_gauge.set(1);
    impl->notify_ev = event_new(base, -1, 0, notify_cb, impl.get());
    auto writer = Writer::start(*impl);
    if (!writer) return writer.error();
    impl->writer = std::move(*writer);
    impl->wake_ev =
        event_new(base, impl->writer->wake_fd(), EV_READ | EV_PERSIST, wake_cb, impl.get());
    event_add(impl->wake_ev, nullptr);
    return std::unique_ptr<Cache>(new Cache(std::move(impl)));
}

Cache::~Cache() {
    Impl& impl = *impl_;
    // Running fills: the writer discards them; their sources hear of it through cancel.
    std::vector<std::shared_ptr<CacheFill>> running;
    for (auto& [d, f] : impl.fills)
        running.push_back(f);
    for (auto& f : running) {
        auto cancel = std::move(f->on_cancel_);
        f->on_cancel_ = nullptr;
        auto ended = std::move(f->on_end_);  // told now: no loop turn will run deferred calls
        f->on_end_ = nullptr;
        f->end_with(make_error(kErrAbandoned, "cache closed"), true);
        f->cache_ = nullptr;
        if (cancel) cancel();
        if (ended) ended(f->error_);
    }
    for (auto& [id, w] : impl.by_id) {
        if (auto f = w.lock()) f->cache_ = nullptr;
    }
    // Hit counts not yet written.
    std::lock_guard touch_lock(impl.touch_mu);
    std::int64_t now = clock::unix_now();
    for (auto& [digest, t] : impl.touches) {
        if (t.hits == 0) continue;
        WriterOp op;
        op.kind = WriterOp::Kind::touch;
        op.digest = digest;
        op.now = now;
        op.hits = t.hits;
        impl.writer->push(std::move(op));
    }
    impl.writer->stop_and_join();
    event_free(impl.wake_ev);
    event_free(impl.notify_ev);
    impl.writer.reset();
    if (impl.lock) {
        // Only a file that reached the disk may be called clean.
        Status synced = impl.store->sync();
        if (synced) synced = mark_clean(impl.options.config.path);
        if (!synced) {
            spdlog::warn("cache: could not close {} cleanly ({}); the next start checks it",
                         impl.options.config.path, synced.error().to_string());
        }
    }
    impl.store.reset();
    impl.lock.reset();
}

BlobStore& Cache::store() {
    return *impl_->store;
}
event_base* Cache::base() const {
    return impl_->base;
}

Result<Lookup> Cache::lookup(std::string_view digest) {
    Lookup out;
    std::string d(digest);
    if (impl_->fills.count(d) > 0) {
        out.presence = Presence::filling;
        return out;
    }
    auto m = impl_->store->stat(digest);
    if (!m) return m.error();
    if (!*m || (*m)->state != BlobState::complete) return out;
    out.presence = Presence::complete;
    out.size = (*m)->size;
    return out;
}

Result<std::unique_ptr<BlobReader>> Cache::open_reader(std::string_view digest,
                                                       std::uint64_t offset,
                                                       std::optional<std::uint64_t> len) {
    Impl& impl = *impl_;
    std::string d(digest);
    auto fit = impl.fills.find(d);
    if (fit != impl.fills.end()) {
        auto core = std::make_shared<ReaderCore>();
        core->impl = &impl;
        core->digest = d;
        core->pos = offset;
        if (len) core->req_end = offset + *len;
        CacheFill& f = *fit->second;
        if (f.expected_size_ && offset > *f.expected_size_) {
            return make_error(kErrRange, "range starts past the end of " + d, 416);
        }
        if (!impl.pin(d)) return make_error(kErrNotFound, d + " is being evicted");
        core->fill = fit->second;
        ++f.readers_;
        impl.joins.fetch_add(1);
        return std::unique_ptr<BlobReader>(new BlobReader(std::move(core)));
    }
    return open_complete_reader(digest, offset, len);
}

Result<std::unique_ptr<BlobReader>> Cache::open_complete_reader(std::string_view digest,
                                                                std::uint64_t offset,
                                                                std::optional<std::uint64_t> len) {
    // Any thread: only the store (LMDB read transactions, pread), the pins and the touch queue
    // (both locked) and atomic counters are used.
    Impl& impl = *impl_;
    std::string d(digest);
    auto core = std::make_shared<ReaderCore>();
    core->impl = &impl;
    core->digest = d;
    core->pos = offset;
    if (len) core->req_end = offset + *len;
    // Pin before looking: the writer never evicts a pinned blob, so what we find stays.
    if (!impl.pin(d)) return make_error(kErrNotFound, d + " is being evicted");
    auto m = impl.store->stat(digest);
    if (!m || !*m || (*m)->state != BlobState::complete) {
        impl.unpin(d);
        if (!m) return m.error();
        return make_error(kErrNotFound, d + " is not cached", 404);
    }
    const BlobMeta& meta = **m;
    if (offset > meta.size) {
        impl.unpin(d);
        return make_error(kErrRange, "range starts past the end of " + d, 416);
    }
    core->blob_id = meta.blob_id;
    core->blob_size = meta.size;
    impl.hits.fetch_add(1);
    impl.note_access(meta);
    return std::unique_ptr<BlobReader>(new BlobReader(std::move(core)));
}

namespace {
Error not_linked(std::string_view repo, std::string_view digest) {
    return make_error(kErrNotLinked,
                      std::string(repo) + " is not known to hold " + std::string(digest), 404);
}
}  // namespace

Result<std::optional<std::uint64_t>> Cache::read_small(
    std::string_view digest, std::uint64_t max_bytes,
    const std::function<char*(std::size_t)>& place, const LinkProof* proof) {
    Impl& impl = *impl_;
    std::string_view linked_to;  // empty: no link to look up
    if (proof != nullptr) {
        std::optional<bool> queued;
        if (proof->queued) queued = impl.queued_link(proof->repo, digest);
        if (queued && !*queued) return not_linked(proof->repo, digest);
        if (!queued) linked_to = proof->repo;
    }
    auto r = impl.store->read_small(digest, max_bytes, place, linked_to);
    if (!r) return r.error();
    if (*r && !(*r)->linked) return not_linked(proof->repo, digest);
    if (!*r || (*r)->meta.state != BlobState::complete) {
        return make_error(kErrNotFound, std::string(digest) + " is not cached", 404);
    }
    if (!(*r)->copied) return std::optional<std::uint64_t>{};
    impl.hits.fetch_add(1);
    impl.note_access((*r)->meta);
    return std::optional<std::uint64_t>{(*r)->meta.size};
}

Result<FillHandle> Cache::start_or_join_fill(std::string_view digest,
                                             std::optional<std::uint64_t> expected_size) {
    Impl& impl = *impl_;
    if (!is_sha256_digest(digest)) {
        return make_error("DIGEST_INVALID", "not a sha256 digest: " + std::string(digest), 400);
    }
    if (expected_size && impl.blob_charge(*expected_size) > impl.options.config.max_size) {
        return make_error(kErrTooLarge, std::string(digest) + " (" +
                                            std::to_string(*expected_size) +
                                            " bytes) is larger than cache.max_size");
    }
    std::string d(digest);
    if (impl.too_large.count(d) > 0) {
        return make_error(kErrTooLarge, d + " is larger than cache.max_size (seen before)");
    }
    auto it = impl.fills.find(d);
    if (it != impl.fills.end()) return FillHandle{it->second, false};
    if (clock::steady_ns() < impl.unwritable_until_ns.load()) {
        return make_error(kErrUnwritable, "cache writes are failing; not caching " + d);
    }
    if (!impl.pin(d)) return make_error(kErrStore, d + " is being evicted; retry");
    std::uint64_t id = ++impl.next_fill_id;
    auto fill = std::make_shared<CacheFill>(CacheFill::Token{}, this, d, expected_size, id,
                                            impl.store->chunk_size());
    impl.fills[d] = fill;
    impl.by_id[id] = fill;
    impl.fills_started.fetch_add(1);
    WriterOp op;
    op.kind = WriterOp::Kind::fill_begin;
    op.fill_id = id;
    op.digest = d;
    op.now = clock::unix_now();
    impl.writer->push(std::move(op));
    return FillHandle{std::move(fill), true};
}

CacheStats Cache::stats() {
    Impl& impl = *impl_;
    CacheStats s;
    if (auto u = impl.store->usage()) s.store = *u;
    s.hits = impl.hits.load();
    s.joins = impl.joins.load();
    s.fills_started = impl.fills_started.load();
    s.fills_completed = impl.fills_completed.load();
    s.fills_failed = impl.fills_failed.load();
    s.digest_mismatches = impl.digest_mismatches.load();
    s.evicted_blobs = impl.evicted_blobs.load();
    s.commits = impl.commits.load();
    s.map_full_retries = impl.map_full_retries.load();
    s.over_limit = impl.over_limit.load();
    s.queued_bytes = impl.queued_bytes;
    s.running_fills = impl.fills.size();
    return s;
}

}  // namespace drayage::cache
