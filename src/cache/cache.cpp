// Cache, CacheFill and BlobReader: the loop side; the writer thread is in writer.cpp.
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

namespace drayage::cache {

// ---------------------------------------------------------------------------------------------
// ReaderCore: the state of one BlobReader. Fills keep weak pointers to it to wake it.

struct ReaderCore : std::enable_shared_from_this<ReaderCore> {
    Cache::Impl* impl = nullptr;
    std::string digest;
    std::shared_ptr<CacheFill> fill;  // null: a complete blob
    std::uint64_t blob_id = 0;        // complete blobs
    std::uint64_t blob_size = 0;      // complete blobs
    std::uint64_t pos = 0;
    std::optional<std::uint64_t> req_end;  // offset + len when a len was given
    // One chunk copied out of the store. A new buffer per chunk: the last one may still be
    // queued on a socket (ReadResult::owner).
    std::shared_ptr<ChunkBuffer> buf;
    std::int64_t buf_index = -1;
    std::function<void()> callback;
    bool waiting = false;
    bool failed = false;
    Error error;

    std::optional<std::uint64_t> end() const {
        if (!fill) return req_end ? std::min(*req_end, blob_size) : blob_size;
        std::optional<std::uint64_t> total;
        if (fill->state_ == CacheFill::State::finishing ||
            fill->state_ == CacheFill::State::complete) {
            total = fill->received_;
        } else if (fill->expected_size_) {
            total = fill->expected_size_;
        }
        if (req_end && total) return std::min(*req_end, *total);
        if (req_end) return req_end;
        return total;
    }

    ReadResult fail(Error e) {
        failed = true;
        error = std::move(e);
        return ReadResult{ReadResult::Kind::error, {}, {}, error};
    }

    ReadResult block() {
        if (fill && !waiting) {
            waiting = true;
            fill->waiters_.push_back(weak_from_this());
        }
        return ReadResult{ReadResult::Kind::would_block, {}, {}, {}};
    }

    // Bytes [pos, pos+limit) of chunk `index` out of the store, keeping the chunk for the next
    // read.
    ReadResult from_store(std::uint64_t id, std::uint32_t index, std::uint64_t off,
                          std::uint64_t limit) {
        if (buf_index != static_cast<std::int64_t>(index) || !buf) {
            buf = std::make_shared<ChunkBuffer>();
            if (auto st = impl->store->read_chunk(id, index, *buf); !st) {
                buf_index = -1;
                if (st.error().code == kErrNotFound) {
                    return fail(
                        make_error(kErrGone, "blob " + digest + " was dropped while being read"));
                }
                return fail(st.error());
            }
            buf_index = index;
        }
        if (off + limit > buf->size()) {
            return fail(make_error(kErrStore, "chunk shorter than its blob says: " + digest));
        }
        pos += limit;
        return ReadResult{ReadResult::Kind::data, buf->view().substr(off, limit), buf, {}};
    }

    ReadResult read(std::size_t max_bytes) {
        if (failed) return ReadResult{ReadResult::Kind::error, {}, {}, error};
        if (max_bytes == 0) return ReadResult{ReadResult::Kind::would_block, {}, {}, {}};
        const std::uint64_t cs = impl->store->chunk_size();
        std::optional<std::uint64_t> e = end();
        if (!fill) {
            if (pos >= *e) return ReadResult{ReadResult::Kind::end, {}, {}, {}};
            auto index = static_cast<std::uint32_t>(pos / cs);
            std::uint64_t off = pos % cs;
            std::uint64_t limit = std::min<std::uint64_t>({max_bytes, cs - off, *e - pos});
            return from_store(blob_id, index, off, limit);
        }
        CacheFill& f = *fill;
        if (f.state_ == CacheFill::State::failed) return fail(f.error_);
        const bool verified = f.state_ == CacheFill::State::complete;
        if (e && pos >= *e) {
            if (verified) return ReadResult{ReadResult::Kind::end, {}, {}, {}};
            return block();
        }
        if (pos >= f.received_) {
            if (f.state_ != CacheFill::State::running) {
                return fail(make_error(kErrRange, "range starts past the end of " + digest, 416));
            }
            return block();
        }
        auto index = static_cast<std::uint32_t>(pos / cs);
        std::uint64_t off = pos % cs;
        std::uint64_t limit = std::min<std::uint64_t>({max_bytes, cs - off, f.received_ - pos});
        if (e) limit = std::min(limit, *e - pos);
        if (!verified && e && pos + limit >= *e) {
            // Hold back the last byte until the digest checks out.
            limit = *e - pos - 1;
            if (limit == 0) return block();
        }
        if (index < f.committed_) return from_store(f.blob_id_, index, off, limit);
        auto it = f.in_flight_.find(index);
        if (it != f.in_flight_.end()) {
            pos += limit;
            return ReadResult{ReadResult::Kind::data,
                              std::string_view(*it->second).substr(off, limit),
                              it->second,
                              {}};
        }
        if (index == f.next_index_ && off + limit <= f.tail_.size()) {
            // The chunk being assembled: copy, the source appends to it.
            auto copy = std::make_shared<std::string>(f.tail_, off, limit);
            pos += limit;
            return ReadResult{ReadResult::Kind::data, std::string_view(*copy), copy, {}};
        }
        return fail(make_error(kErrStore, "fill bookkeeping lost a chunk of " + digest));
    }
};

// ---------------------------------------------------------------------------------------------
// BlobReader

BlobReader::BlobReader(std::shared_ptr<ReaderCore> core) : core_(std::move(core)) {}

BlobReader::~BlobReader() {
    Cache::Impl* impl = core_->impl;
    if (core_->fill) {
        auto fill = std::move(core_->fill);
        fill->reader_left();
    }
    if (impl != nullptr) impl->unpin(core_->digest);
}

ReadResult BlobReader::read(std::size_t max_bytes) {
    return core_->read(max_bytes);
}

void BlobReader::on_readable(std::function<void()> callback) {
    core_->callback = std::move(callback);
}

std::optional<std::uint64_t> BlobReader::end() const {
    return core_->end();
}

void BlobReader::narrow(std::uint64_t offset, std::uint64_t len) {
    core_->pos = offset;
    core_->req_end = offset + len;
}

std::optional<std::uint64_t> BlobReader::blob_size() const {
    if (!core_->fill) return core_->blob_size;
    if (core_->fill->state_ == CacheFill::State::running) return core_->fill->expected_size_;
    return core_->fill->received_;
}

// ---------------------------------------------------------------------------------------------
// CacheFill

CacheFill::CacheFill(Token, Cache* cache, std::string digest, std::optional<std::uint64_t> expected,
                     std::uint64_t fill_id, std::uint64_t chunk_size)
    : cache_(cache),
      digest_(std::move(digest)),
      expected_size_(expected),
      fill_id_(fill_id),
      chunk_size_(chunk_size) {
    tail_.reserve(chunk_size_);
}

CacheFill::~CacheFill() = default;

bool CacheFill::append(std::string_view bytes) {
    if (state_ != State::running || cache_ == nullptr) return false;
    Cache::Impl& impl = *cache_->impl_;
    if (expected_size_ && received_ + bytes.size() > *expected_size_) {
        end_with(make_error(kErrSizeMismatch, "source sent more than the expected " +
                                                  std::to_string(*expected_size_) + " bytes of " +
                                                  digest_),
                 true);
        return false;
    }
    if (!expected_size_ &&
        impl.blob_charge(received_ + bytes.size()) > impl.options.config.max_size) {
        // A source that sent no length turned out to send more than the cache can hold. Its
        // bytes so far are dropped before they push the cache over max_size; the readers are
        // cut (each held back its last byte, so none took a short body for a whole one), and
        // their retries are streamed uncached (start_or_join_fill remembers the digest).
        impl.remember_too_large(digest_);
        end_with(make_error(kErrTooLarge, digest_ + " sent without a length is larger than "
                                                    "cache.max_size; not cached"),
                 true);
        return false;
    }
    while (!bytes.empty()) {
        std::size_t n = std::min<std::size_t>(chunk_size_ - tail_.size(), bytes.size());
        tail_.append(bytes.data(), n);
        received_ += n;
        bytes.remove_prefix(n);
        if (tail_.size() == chunk_size_) submit_tail(false);
    }
    wake_readers();
    if (impl.queued_bytes > impl.options.queue_high_watermark) {
        if (!paused_) {
            paused_ = true;
            impl.paused.push_back(weak_from_this());
        }
        return false;
    }
    return true;
}

void CacheFill::submit_tail(bool last) {
    if (tail_.empty()) return;
    Cache::Impl& impl = *cache_->impl_;
    auto data = std::make_shared<const std::string>(std::move(tail_));
    tail_ = std::string();
    if (!last) tail_.reserve(chunk_size_);
    in_flight_[next_index_] = data;
    queued_bytes_ += data->size();
    impl.queued_bytes += data->size();
    WriterOp op;
    op.kind = WriterOp::Kind::fill_chunk;
    op.fill_id = fill_id_;
    op.index = next_index_;
    op.data = std::move(data);
    impl.writer->push(std::move(op));
    ++next_index_;
}

void CacheFill::finish() {
    if (state_ != State::running || cache_ == nullptr) return;
    if (expected_size_ && received_ != *expected_size_) {
        end_with(make_error(kErrSizeMismatch, "source ended after " + std::to_string(received_) +
                                                  " of " + std::to_string(*expected_size_) +
                                                  " bytes of " + digest_),
                 true);
        return;
    }
    submit_tail(true);
    state_ = State::finishing;
    WriterOp op;
    op.kind = WriterOp::Kind::fill_finish;
    op.fill_id = fill_id_;
    op.size = received_;
    cache_->impl_->writer->push(std::move(op));
    wake_readers();
}

void CacheFill::fail(Error error) {
    if (state_ != State::running) return;
    if (error.code.empty()) error.code = kErrSourceFailed;
    on_cancel_ = nullptr;  // the source knows
    end_with(std::move(error), true);
}

void CacheFill::set_resume_callback(std::function<void()> cb) {
    on_resume_ = std::move(cb);
}
void CacheFill::set_cancel_callback(std::function<void()> cb) {
    on_cancel_ = std::move(cb);
}
void CacheFill::on_end(std::function<void(const Status&)> cb) {
    on_end_ = std::move(cb);
    if (done()) report_end();
}

void CacheFill::report_end() {
    if (!on_end_) return;
    auto cb = std::move(on_end_);
    on_end_ = nullptr;
    Status outcome;
    if (state_ != State::complete) outcome = error_;
    if (cache_ == nullptr) return cb(outcome);
    cache_->impl_->defer([cb = std::move(cb), outcome] { cb(outcome); });
}

void CacheFill::end_with(Error error, bool tell_writer) {
    if (state_ == State::failed || state_ == State::complete) return;
    state_ = State::failed;
    error_ = std::move(error);
    in_flight_.clear();
    tail_ = std::string();
    if (cache_ == nullptr) return;
    Cache::Impl& impl = *cache_->impl_;
    impl.fills_failed.fetch_add(1);
    impl.forget_fill(*this);
    impl.by_id.erase(fill_id_);  // completions still in flight only release queue bytes
    if (tell_writer) {
        WriterOp op;
        op.kind = WriterOp::Kind::fill_abort;
        op.fill_id = fill_id_;
        impl.writer->push(std::move(op));
    }
    wake_readers();
    if (on_cancel_ && !cancel_sent_) {
        cancel_sent_ = true;
        impl.defer(std::move(on_cancel_));
        on_cancel_ = nullptr;
    }
    on_resume_ = nullptr;
    report_end();
}

void CacheFill::wake_readers() {
    if (waiters_.empty() || cache_ == nullptr) return;
    Cache::Impl& impl = *cache_->impl_;
    for (auto& w : waiters_) {
        impl.defer([w] {
            auto core = w.lock();
            if (!core || !core->waiting) return;
            core->waiting = false;
            if (core->callback) {
                auto cb = core->callback;  // the callback may replace itself or drop the reader
                cb();
            }
        });
    }
    waiters_.clear();
}

void CacheFill::reader_left() {
    if (readers_ > 0) --readers_;
    if (readers_ == 0 && state_ == State::running && cache_ != nullptr &&
        !cache_->impl_->options.config.complete_orphan_fills) {
        end_with(make_error(kErrAbandoned, "every reader of " + digest_ + " left"), true);
    }
}

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

Result<std::optional<std::uint64_t>> Cache::read_small(
    std::string_view digest, std::uint64_t max_bytes,
    const std::function<char*(std::size_t)>& place) {
    Impl& impl = *impl_;
    auto r = impl.store->read_small(digest, max_bytes, place);
    if (!r) return r.error();
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

Status Cache::put_document(std::string_view digest, std::string_view media_type, std::string bytes,
                           std::function<void(Status)> done) {
    Impl& impl = *impl_;
    if (!is_sha256_digest(digest)) {
        return make_error("DIGEST_INVALID", "not a sha256 digest: " + std::string(digest), 400);
    }
    if (bytes.size() > 16 * 1024 * 1024) {
        return make_error("cache.too_large", "documents over 16 MiB are not cached");
    }
    std::uint64_t id = ++impl.next_doc_id;
    std::string d(digest);
    auto shared = std::make_shared<const std::string>(std::move(bytes));
    impl.pending_docs[d] = Impl::PendingDoc{id, std::string(media_type), shared};
    if (done) impl.doc_callbacks[id] = std::move(done);
    WriterOp op;
    op.kind = WriterOp::Kind::document;
    op.id = id;
    op.digest = d;
    op.media_type = std::string(media_type);
    op.data = std::move(shared);
    op.now = clock::unix_now();
    impl.writer->push(std::move(op));
    return {};
}

Result<std::optional<Document>> Cache::get_document(std::string_view digest) {
    Impl& impl = *impl_;
    std::string d(digest);
    auto p = impl.pending_docs.find(d);
    if (p != impl.pending_docs.end()) {
        return std::optional<Document>{Document{p->second.media_type, *p->second.bytes}};
    }
    auto reader = open_reader(digest, 0, std::nullopt);
    if (!reader) {
        if (reader.error().code == kErrNotFound) return std::optional<Document>{};
        return reader.error();
    }
    if ((*reader)->core_->fill)
        return std::optional<Document>{};  // a blob being filled, not a document
    auto m = impl.store->stat(digest);
    if (!m) return m.error();
    if (!*m) return std::optional<Document>{};
    Document doc;
    doc.media_type = (*m)->media_type;
    for (;;) {
        ReadResult r = (*reader)->read(impl.store->chunk_size());
        if (r.kind == ReadResult::Kind::data) {
            doc.bytes.append(r.bytes);
        } else if (r.kind == ReadResult::Kind::end) {
            break;
        } else {
            return r.error;
        }
    }
    return std::optional<Document>{std::move(doc)};
}

void Cache::link(std::string_view repo, std::string_view digest) {
    Impl& impl = *impl_;
    std::string key(repo);
    key.push_back('\0');
    key.append(digest);
    impl.pending_links.insert(key);
    WriterOp op;
    op.kind = WriterOp::Kind::link;
    op.digest = key;
    impl.writer->push(std::move(op));
}

Result<bool> Cache::is_linked(std::string_view repo, std::string_view digest) {
    std::string key(repo);
    key.push_back('\0');
    key.append(digest);
    if (impl_->pending_links.count(key) > 0) return true;
    return impl_->store->is_linked(repo, digest);
}

void Cache::put_tag(std::string_view key, TagRecord record) {
    WriterOp op;
    op.kind = WriterOp::Kind::tag_put;
    op.digest = std::string(key);
    op.tag = std::move(record);
    impl_->writer->push(std::move(op));
}

void Cache::drop_tag(std::string_view key) {
    WriterOp op;
    op.kind = WriterOp::Kind::tag_drop;
    op.digest = std::string(key);
    impl_->writer->push(std::move(op));
}

void Cache::drop_tags_checked_before(std::int64_t unix_seconds) {
    WriterOp op;
    op.kind = WriterOp::Kind::tags_expire;
    op.now = unix_seconds;
    impl_->writer->push(std::move(op));
}

Result<std::optional<TagRecord>> Cache::get_tag(std::string_view key) {
    return impl_->store->get_tag(key);
}

bool Cache::evict(std::string_view digest) {
    std::string d(digest);
    if (impl_->pins.count(d) > 0) return false;
    WriterOp op;
    op.kind = WriterOp::Kind::evict;
    op.digest = d;
    impl_->writer->push(std::move(op));
    return true;
}

void Cache::when_idle(std::function<void()> cb) {
    std::uint64_t id = ++impl_->next_doc_id;
    impl_->idle_callbacks[id] = std::move(cb);
    WriterOp op;
    op.kind = WriterOp::Kind::barrier;
    op.id = id;
    impl_->writer->push(std::move(op));
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
