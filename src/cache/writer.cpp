// The writer thread: every write transaction of this process, group-committed.
//
// Ops pass through a hashing thread first (sha256 of fill chunks and documents; it attaches the
// verdict to fill_finish and document ops), so hashing one batch overlaps writing the last. Each
// writer turn takes what is queued (up to max_batch_bytes), makes room under max_size in
// bounded eviction transactions, then applies the batch in one transaction. MDB_MAP_FULL
// (freed pages not reusable yet, or the file at its map size) is answered by evicting more and
// retrying, up to three times; only then do the fills in that batch fail.
//
// A fill's chunks may commit in several batches before its `complete` mark; the mark and the
// last chunks go in the same transaction, and only after the sha256 of every byte matched.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>

#include "cache_impl.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/log.hpp"

namespace drayage::cache {

struct Writer::FillState {
    std::string digest;
    std::uint64_t blob_id = 0;
    bool failed = false;
};

struct Writer::HashState {
    std::string digest;
    EVP_MD_CTX* ctx = nullptr;
    bool bad_index = false;
    std::uint32_t next_index = 0;
    ~HashState() {
        if (ctx != nullptr) EVP_MD_CTX_free(ctx);
    }
};

namespace {

std::string sha256_hex_final(EVP_MD_CTX* ctx) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    return digest::hex_encode(std::string_view(reinterpret_cast<const char*>(md), len));
}

EVP_MD_CTX* new_sha256() {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
        EVP_MD_CTX_free(ctx);
        return nullptr;
    }
    return ctx;
}

// Per op of a batch: what the pre-pass decided.
struct Prepared {
    bool skip = false;
    bool ok = true;
    Error error;
};

}  // namespace

Writer::Writer(Cache::Impl& impl) : impl_(impl), store_(*impl.store) {}

Result<std::unique_ptr<Writer>> Writer::start(Cache::Impl& impl) {
    std::unique_ptr<Writer> w(new Writer(impl));
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        return make_error(kErrStore, "cannot create the cache writer's wake-up pipe");
    }
    w->wake_read_ = fds[0];
    w->wake_write_ = fds[1];
    w->thread_ = std::thread([p = w.get()] { p->run(); });
    w->hasher_ = std::thread([p = w.get()] { p->run_hasher(); });
    return w;
}

Writer::~Writer() {
    stop_and_join();
    if (wake_read_ >= 0) ::close(wake_read_);
    if (wake_write_ >= 0) ::close(wake_write_);
}

void Writer::push(WriterOp op) {
    {
        std::lock_guard lock(hash_mu_);
        hash_queue_.push_back(std::move(op));
    }
    hash_cv_.notify_one();
}

void Writer::run_hasher() {
    for (;;) {
        std::deque<WriterOp> ops;
        {
            std::unique_lock lock(hash_mu_);
            hash_cv_.wait(lock, [&] { return !hash_queue_.empty(); });
            ops.swap(hash_queue_);
        }
        bool stop = false;
        for (WriterOp& op : ops) {
            hash(op);
            if (op.kind == WriterOp::Kind::stop) stop = true;
            {
                std::lock_guard lock(mu_);
                queue_.push_back(std::move(op));
            }
            cv_.notify_one();  // one op at a time: the writer starts on a batch at once
        }
        if (stop) {
            hashing_.clear();
            return;
        }
    }
}

void Writer::hash(WriterOp& op) {
    switch (op.kind) {
        case WriterOp::Kind::fill_begin: {
            auto hs = std::make_unique<HashState>();
            hs->digest = op.digest;
            hs->ctx = new_sha256();
            hashing_[op.fill_id] = std::move(hs);
            break;
        }
        case WriterOp::Kind::fill_chunk: {
            auto it = hashing_.find(op.fill_id);
            if (it == hashing_.end() || it->second->ctx == nullptr) break;
            HashState& hs = *it->second;
            if (op.index != hs.next_index) hs.bad_index = true;  // cannot happen: FIFO queue
            ++hs.next_index;
            EVP_DigestUpdate(hs.ctx, op.data->data(), op.data->size());
            break;
        }
        case WriterOp::Kind::fill_finish: {
            auto it = hashing_.find(op.fill_id);
            if (it == hashing_.end()) break;  // aborted: the writer skips it too
            HashState& hs = *it->second;
            if (hs.ctx == nullptr) {
                op.verified = false;
                op.verify_error = make_error(kErrStore, "sha256 unavailable");
            } else {
                std::string hex = sha256_hex_final(hs.ctx);
                if (hs.bad_index || "sha256:" + hex != hs.digest) {
                    op.verified = false;
                    op.verify_error =
                        make_error(kErrDigestMismatch,
                                   "bytes of " + hs.digest + " hash to sha256:" + hex, 502);
                }
            }
            hashing_.erase(it);
            break;
        }
        case WriterOp::Kind::fill_abort: hashing_.erase(op.fill_id); break;
        case WriterOp::Kind::document: {
            EVP_MD_CTX* ctx = new_sha256();
            if (ctx == nullptr) {
                op.verified = false;
                op.verify_error = make_error(kErrStore, "sha256 unavailable");
                break;
            }
            EVP_DigestUpdate(ctx, op.data->data(), op.data->size());
            std::string hex = sha256_hex_final(ctx);
            EVP_MD_CTX_free(ctx);
            if ("sha256:" + hex != op.digest) {
                op.verified = false;
                op.verify_error =
                    make_error(kErrDigestMismatch, "document hashes to sha256:" + hex, 400);
            }
            break;
        }
        default: break;
    }
}

std::vector<Completion> Writer::take_completions() {
    std::lock_guard lock(done_mu_);
    std::vector<Completion> out;
    out.swap(done_);
    return out;
}

void Writer::stop_and_join() {
    if (!thread_.joinable()) return;
    WriterOp op;
    op.kind = WriterOp::Kind::stop;
    push(std::move(op));  // passes through the hasher, which stops after forwarding it
    hasher_.join();
    thread_.join();
}

void Writer::post(std::vector<Completion> done) {
    if (done.empty()) return;
    {
        std::lock_guard lock(done_mu_);
        for (auto& c : done)
            done_.push_back(std::move(c));
    }
    if (!wake_pending_.exchange(true)) {
        char b = 1;
        // A full pipe already means a wake-up is pending; nothing else can go wrong here.
        [[maybe_unused]] ssize_t n = ::write(wake_write_, &b, 1);
    }
}

void Writer::run() {
    for (;;) {
        std::vector<WriterOp> batch;
        bool stop = false;
        {
            std::unique_lock lock(mu_);
            if (queue_.empty() && !garbage_) cv_.wait(lock, [&] { return !queue_.empty(); });
            std::uint64_t bytes = 0;
            while (!queue_.empty() && bytes < impl_.options.max_batch_bytes) {
                WriterOp op = std::move(queue_.front());
                queue_.pop_front();
                if (op.kind == WriterOp::Kind::stop) {
                    stop = true;
                    break;
                }
                if (op.data) bytes += op.data->size();
                batch.push_back(std::move(op));
            }
        }
        if (!batch.empty()) {
            process(batch);
        } else if (!stop && garbage_) {
            collect_garbage_step();
        }
        if (stop) {
            // Fills still open here belong to a closing Cache: the next open sweeps them.
            fills_.clear();
            return;
        }
    }
}

void Writer::collect_garbage_step() {
    auto txn = store_.begin_write();
    if (!txn) {
        spdlog::error("cache: {}", txn.error().to_string());
        garbage_ = false;
        return;
    }
    auto n = (*txn)->collect_garbage(impl_.options.gc_batch_chunks);
    auto more = (*txn)->has_garbage();
    if (!n || !more) {
        garbage_ = false;
        return;
    }
    if (auto st = (*txn)->commit(); !st) {
        spdlog::error("cache: deleting evicted chunks: {}", st.error().to_string());
        garbage_ = false;
        return;
    }
    impl_.commits.fetch_add(1);
    garbage_ = *more;
}

std::optional<Writer::DiskSpace> Writer::disk_space() const {
    struct statvfs fs {};
    if (::statvfs(impl_.options.config.path.c_str(), &fs) != 0) return std::nullopt;
    DiskSpace d;
    d.available = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize;
    // Kept free once the disk is tight: 64 MiB (four write batches), or a quarter of a small
    // filesystem.
    d.headroom = std::min<std::uint64_t>(64ull << 20,
                                         static_cast<std::uint64_t>(fs.f_blocks) * fs.f_frsize / 4);
    return d;
}

bool Writer::disk_full(std::uint64_t incoming) const {
    // LMDB reports a short write as EIO, so ENOSPC is read off the filesystem instead.
    auto d = disk_space();
    return d && d->available < std::max(2 * incoming, d->headroom);
}

void Writer::fit_to_disk() {
    // The cache may hold what it holds now, plus the free pages inside LMDB's file, plus the
    // filesystem's free space beyond a headroom: the headroom keeps LMDB's own bookkeeping
    // (copy-on-write pages, the free list) from ever meeting a full disk.
    auto d = disk_space();
    if (!d) return;
    const std::uint64_t max_size = store_.max_size();
    // Room for even a full cache: nothing to work out.
    if (disk_cap_ == UINT64_MAX && d->available >= max_size + d->headroom) return;
    auto u = store_.usage();
    if (!u) return;
    // Below the headroom this is less than what is cached: eviction brings the disk back to it.
    std::uint64_t inside = u->file_bytes > u->used_bytes ? u->file_bytes - u->used_bytes : 0;
    std::uint64_t have = u->charged_bytes + inside + d->available;
    std::uint64_t fits = have > d->headroom ? have - d->headroom : 0;
    if (fits >= max_size) {
        if (disk_cap_ != UINT64_MAX) {
            spdlog::info(
                "cache: the filesystem under {} has room again; the limit is "
                "cache.max_size",
                impl_.options.config.path);
            disk_cap_ = UINT64_MAX;
        }
        return;
    }
    if (disk_cap_ == UINT64_MAX) {
        spdlog::warn(
            "cache: the filesystem under {} has room for about {} bytes of cache, less "
            "than cache.max_size {}; the cache keeps within that",
            impl_.options.config.path, fits, max_size);
    }
    disk_cap_ = fits;
}

void Writer::note_write_result(const Status& result, bool blob_data) {
    using std::chrono::milliseconds;
    if (result) {
        // Only blob chunks prove the store takes data again: a batch of small records may fit
        // where chunks do not.
        if (blob_data && unwritable_backoff_.count() != 0) {
            spdlog::info("cache: writes succeed again; misses are cached again");
            unwritable_backoff_ = milliseconds(0);
            impl_.unwritable_until_ns.store(0);
            impl_.writable_gauge.set(1);
        }
        return;
    }
    impl_.write_failures.fetch_add(1);
    // Until writes work again, misses are streamed uncached: 5 s at first, doubling up to a
    // minute for each try after a pause that fails too. The rest of a burst (the queued chunks
    // of the fills that just failed) does not count as a try.
    std::int64_t now_ns = clock::steady_ns();
    if (unwritable_backoff_.count() != 0 && now_ns < impl_.unwritable_until_ns.load()) return;
    unwritable_backoff_ = unwritable_backoff_.count() == 0
                              ? milliseconds(5'000)
                              : std::min(unwritable_backoff_ * 2, milliseconds(60'000));
    impl_.unwritable_until_ns.store(
        now_ns + std::chrono::duration_cast<std::chrono::nanoseconds>(unwritable_backoff_).count());
    impl_.writable_gauge.set(0);
    spdlog::warn("cache: writes are failing ({}); blob misses are streamed uncached for {} s",
                 result.error().to_string(), unwritable_backoff_.count() / 1000);
}

void Writer::settle_freed_pages() {
    // LMDB reuses the pages transaction N freed from transaction N + 2 on (N + 1 may still need
    // N's snapshot). One more small commit lets the next write go into them instead of growing
    // the file, which a tight disk may not allow.
    if (auto t = store_.begin_write(); t) (void)(*t)->commit();
}

bool Writer::make_room(std::uint64_t incoming, std::uint64_t shrink_by) {
    if (shrink_by == 0) fit_to_disk();
    const bool tight = disk_cap_ != UINT64_MAX;
    bool evicted = false;
    std::uint64_t max = std::min(store_.max_size(), disk_cap_);
    if (shrink_by > 0) {
        // After MDB_MAP_FULL: the map, not max_size, is the bound; free `shrink_by` below what
        // is stored now.
        auto txn = store_.begin_write();
        if (!txn) return false;
        std::uint64_t now = (*txn)->charged_bytes();
        max = std::min(max, now > shrink_by ? now - shrink_by : 0);
    }
    std::size_t skip = 0;
    for (int round = 0; round < 100000; ++round) {
        auto txn = store_.begin_write();
        if (!txn) {
            spdlog::error("cache: {}", txn.error().to_string());
            return false;
        }
        StoreWrite& w = **txn;
        if (w.charged_bytes() + incoming <= max) {
            txn->reset();
            if (evicted && tight) settle_freed_pages();
            return true;
        }
        std::uint64_t deleted = 0;
        std::size_t dropped = 0;
        if (auto n = w.collect_garbage(impl_.options.gc_batch_chunks); n) deleted = *n;
        if (w.charged_bytes() + incoming > max) {
            auto candidates = w.oldest(skip, impl_.options.evict_batch_blobs);
            if (!candidates) {
                spdlog::error("cache: {}", candidates.error().to_string());
                return false;
            }
            for (const BlobMeta& m : *candidates) {
                if (m.state != BlobState::complete || !impl_.pins.claim_for_eviction(m.digest)) {
                    ++skip;  // being read or filled: never evicted
                    continue;
                }
                if (auto d = w.drop_blob(m.digest); d && *d) ++dropped;
            }
            if (auto n = w.collect_garbage(impl_.options.gc_batch_chunks); n) deleted += *n;
        }
        auto more = w.has_garbage();
        Status st = w.commit();
        impl_.pins.release_claims();
        if (!st) {
            spdlog::error("cache: evicting: {}", st.error().to_string());
            return false;
        }
        impl_.commits.fetch_add(1);
        impl_.evicted_blobs.fetch_add(dropped);
        evicted = evicted || dropped > 0 || deleted > 0;
        garbage_ = more && *more;
        if (deleted == 0 && dropped == 0) {
            // Everything left is pinned or filling: write anyway, over the limit, rather than
            // fail a request (counted; the next batch tries again).
            impl_.over_limit.fetch_add(1);
            return false;
        }
    }
    return false;
}

void Writer::process(std::vector<WriterOp>& batch) {
    std::vector<Prepared> prep(batch.size());
    std::uint64_t incoming = 0;
    bool blob_data = false;  // the batch writes chunks of a fill
    // Pre-pass: what the batch will charge, and the hasher's verdicts.
    for (std::size_t i = 0; i < batch.size(); ++i) {
        WriterOp& op = batch[i];
        Prepared& p = prep[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_begin: {
                auto fs = std::make_unique<FillState>();
                fs->digest = op.digest;
                fills_[op.fill_id] = std::move(fs);
                incoming += kMetaCharge;
                break;
            }
            case WriterOp::Kind::fill_chunk: {
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end() || it->second->failed) {
                    p.skip = true;
                    break;
                }
                incoming += store_.chunk_charge(op.data->size());
                blob_data = true;
                break;
            }
            case WriterOp::Kind::fill_finish: {
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end() || it->second->failed) {
                    p.skip = true;
                    break;
                }
                p.ok = op.verified;
                p.error = op.verify_error;
                break;
            }
            case WriterOp::Kind::document: {
                p.ok = op.verified;
                p.error = op.verify_error;
                incoming += kMetaCharge + store_.chunk_charge(op.data->size());
                break;
            }
            default: break;
        }
    }

    make_room(incoming);

    // Per fill touched by this batch: what to report.
    struct FillReport {
        std::uint64_t released = 0;
        std::uint32_t committed = 0;
        bool touched = false;
    };
    std::map<std::uint64_t, FillReport> reports;

    Status result;
    for (int attempt = 0; attempt < 4; ++attempt) {
        result = Status{};
        auto txn = store_.begin_write();
        if (!txn) {
            result = txn.error();
            break;
        }
        StoreWrite& w = **txn;
        auto apply = [&]() -> Status {
            for (std::size_t i = 0; i < batch.size(); ++i) {
                WriterOp& op = batch[i];
                Prepared& p = prep[i];
                if (p.skip) continue;
                switch (op.kind) {
                    case WriterOp::Kind::fill_begin: {
                        FillState& fs = *fills_.at(op.fill_id);
                        auto old = w.drop_blob(op.digest);  // a stale record of the same digest
                        if (!old) return old.error();
                        auto id = w.new_blob_id();
                        if (!id) return id.error();
                        fs.blob_id = *id;
                        BlobMeta m;
                        m.digest = op.digest;
                        m.blob_id = *id;
                        m.state = BlobState::filling;
                        m.created = m.last_access = op.now;
                        if (auto st = w.put_meta(m); !st) return st;
                        break;
                    }
                    case WriterOp::Kind::fill_chunk: {
                        FillState& fs = *fills_.at(op.fill_id);
                        if (auto st = w.put_chunk(fs.blob_id, op.index, *op.data); !st) return st;
                        break;
                    }
                    case WriterOp::Kind::fill_finish: {
                        FillState& fs = *fills_.at(op.fill_id);
                        auto m = w.get_meta(fs.digest);
                        if (!m) return m.error();
                        bool ours = *m && (*m)->blob_id == fs.blob_id;
                        if (p.ok && !ours) {
                            p.ok = false;
                            p.error =
                                make_error(kErrGone, fs.digest + " was evicted while filling");
                        }
                        if (p.ok) {
                            BlobMeta meta = **m;
                            meta.size = op.size;
                            meta.state = BlobState::complete;
                            if (auto st = w.put_meta(meta); !st) return st;
                        } else if (ours) {
                            if (auto d = w.drop_blob(fs.digest); !d) return d.error();
                        }
                        break;
                    }
                    case WriterOp::Kind::fill_abort: {
                        auto it = fills_.find(op.fill_id);
                        if (it == fills_.end()) break;
                        auto m = w.get_meta(it->second->digest);
                        if (!m) return m.error();
                        if (*m && (*m)->blob_id == it->second->blob_id &&
                            (*m)->state == BlobState::filling) {
                            if (auto d = w.drop_blob(it->second->digest); !d) return d.error();
                        }
                        break;
                    }
                    case WriterOp::Kind::touch: {
                        auto m = w.get_meta(op.digest);
                        if (!m) return m.error();
                        if (!*m || (*m)->state != BlobState::complete) break;
                        BlobMeta meta = **m;
                        meta.last_access = std::max(meta.last_access, op.now);
                        meta.hits += op.hits;
                        if (auto st = w.put_meta(meta); !st) return st;
                        break;
                    }
                    case WriterOp::Kind::document: {
                        if (!p.ok) break;
                        auto m = w.get_meta(op.digest);
                        if (!m) return m.error();
                        if (*m && (*m)->state == BlobState::complete) break;  // same bytes already
                        if (*m) {
                            if (auto d = w.drop_blob(op.digest); !d) return d.error();
                        }
                        auto id = w.new_blob_id();
                        if (!id) return id.error();
                        const std::string& bytes = *op.data;
                        const std::uint64_t cs = store_.chunk_size();
                        for (std::uint64_t off = 0, idx = 0; off < bytes.size(); off += cs, ++idx) {
                            std::string_view piece = std::string_view(bytes).substr(off, cs);
                            if (auto st = w.put_chunk(*id, static_cast<std::uint32_t>(idx), piece);
                                !st) {
                                return st;
                            }
                        }
                        BlobMeta meta;
                        meta.digest = op.digest;
                        meta.blob_id = *id;
                        meta.size = bytes.size();
                        meta.state = BlobState::complete;
                        meta.created = meta.last_access = op.now;
                        meta.media_type = op.media_type;
                        if (auto st = w.put_meta(meta); !st) return st;
                        break;
                    }
                    case WriterOp::Kind::link: {
                        std::size_t z = op.digest.find('\0');
                        std::string_view all(op.digest);
                        if (auto st = w.link(all.substr(0, z), all.substr(z + 1)); !st) return st;
                        break;
                    }
                    case WriterOp::Kind::tag_put:
                        if (auto st = w.put_tag(op.digest, op.tag); !st) return st;
                        break;
                    case WriterOp::Kind::tag_drop:
                        if (auto st = w.drop_tag(op.digest); !st) return st;
                        break;
                    case WriterOp::Kind::tags_expire: {
                        auto n = w.drop_tags_checked_before(op.now);
                        if (!n) return n.error();
                        if (*n > 0) spdlog::info("cache: dropped {} expired tag records", *n);
                        break;
                    }
                    case WriterOp::Kind::evict: {
                        auto m = w.get_meta(op.digest);
                        if (!m) return m.error();
                        if (!*m || (*m)->state != BlobState::complete) break;
                        if (!impl_.pins.claim_for_eviction(op.digest)) break;
                        if (auto d = w.drop_blob(op.digest); !d) return d.error();
                        garbage_ = true;
                        break;
                    }
                    case WriterOp::Kind::barrier:
                    case WriterOp::Kind::stop: break;
                }
            }
            if (garbage_) {
                auto n = w.collect_garbage(impl_.options.gc_batch_chunks);
                if (!n) return n.error();
                auto more = w.has_garbage();
                if (!more) return more.error();
                garbage_ = *more;
            }
            std::uint64_t charged = w.charged_bytes();
            Status st = w.commit();
            if (st) impl_.charged_gauge.set(static_cast<std::int64_t>(charged));
            return st;
        };
        result = apply();
        txn->reset();  // end this transaction before make_room() begins another
        impl_.pins.release_claims();
        if (result) break;
        std::uint64_t shrink_by = 0;
        if (result.error().code == kErrMapFull) {
            impl_.map_full_retries.fetch_add(1);
            shrink_by = std::max(incoming, store_.max_size() / 8);
        } else if (!disk_full(incoming)) {
            break;
        }
        // Map or disk full: make room (make_room() fits the cache to the disk, and lets LMDB
        // reuse what it evicted) and try again.
        garbage_ = true;
        make_room(incoming, shrink_by);
    }
    if (result) impl_.commits.fetch_add(1);
    note_write_result(result, blob_data);

    std::vector<Completion> done;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        WriterOp& op = batch[i];
        Prepared& p = prep[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_begin: reports[op.fill_id].touched = true; break;
            case WriterOp::Kind::fill_chunk: {
                FillReport& r = reports[op.fill_id];
                r.touched = true;
                r.released += op.data->size();
                if (result && !p.skip) r.committed = op.index + 1;
                break;
            }
            default: break;
        }
    }
    for (auto& [fid, r] : reports) {
        auto it = fills_.find(fid);
        Completion c;
        c.kind = Completion::Kind::committed;
        c.fill_id = fid;
        c.bytes_released = r.released;
        c.committed = r.committed;
        if (it != fills_.end()) c.blob_id = it->second->blob_id;
        done.push_back(std::move(c));
        if (!result && it != fills_.end() && !it->second->failed) {
            it->second->failed = true;
            Completion f;
            f.kind = Completion::Kind::fill_done;
            f.fill_id = fid;
            f.ok = false;
            f.error = result.error();
            done.push_back(std::move(f));
        }
    }
    std::vector<std::string> to_drop;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        WriterOp& op = batch[i];
        Prepared& p = prep[i];
        switch (op.kind) {
            case WriterOp::Kind::fill_finish: {
                if (p.skip) break;
                auto it = fills_.find(op.fill_id);
                if (it == fills_.end()) break;
                if (!result) {
                    to_drop.push_back(it->second->digest);
                    break;  // reported above
                }
                Completion c;
                c.kind = Completion::Kind::fill_done;
                c.fill_id = op.fill_id;
                c.blob_id = it->second->blob_id;
                c.ok = p.ok;
                c.error = p.error;
                done.push_back(std::move(c));
                fills_.erase(it);
                break;
            }
            case WriterOp::Kind::fill_abort: fills_.erase(op.fill_id); break;
            case WriterOp::Kind::document: {
                Completion c;
                c.kind = Completion::Kind::document_done;
                c.id = op.id;
                c.digest = op.digest;
                c.ok = result && p.ok;
                if (!p.ok)
                    c.error = p.error;
                else if (!result)
                    c.error = result.error();
                done.push_back(std::move(c));
                break;
            }
            case WriterOp::Kind::link: {
                Completion c;
                c.kind = Completion::Kind::linked;
                c.digest = op.digest;
                done.push_back(std::move(c));
                break;
            }
            case WriterOp::Kind::barrier: {
                Completion c;
                c.kind = Completion::Kind::barrier;
                c.id = op.id;
                done.push_back(std::move(c));
                break;
            }
            default: break;
        }
    }
    if (!result) {
        spdlog::error("cache: write failed, fills in this batch dropped: {}",
                      result.error().to_string());
        // Chunks committed by earlier batches of the failed fills: drop them.
        for (auto& [fid, fs] : fills_) {
            if (fs->failed && reports.count(fid) > 0) to_drop.push_back(fs->digest);
        }
        if (auto txn = store_.begin_write(); txn) {
            for (const std::string& d : to_drop) {
                auto m = (*txn)->get_meta(d);
                if (m && *m && (*m)->state == BlobState::filling) (void)(*txn)->drop_blob(d);
            }
            if ((*txn)->commit()) garbage_ = true;
        }
    }
    post(std::move(done));
}

}  // namespace drayage::cache
