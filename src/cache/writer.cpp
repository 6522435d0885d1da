// The writer thread: every write transaction of this process, group-committed.
//
// Ops pass through a hashing thread first (sha256 of fill chunks and documents; it attaches the
// verdict to fill_finish and document ops), so hashing one batch overlaps writing the last. Each
// writer turn takes what is queued (up to max_batch_bytes), makes room under max_size in
// bounded eviction transactions, then applies the batch in one transaction (writer_batch.cpp).
// MDB_MAP_FULL (freed pages not reusable yet, or the file at its map size) is answered by
// evicting more and retrying, up to three times; only then do the fills in that batch fail.
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

}  // namespace drayage::cache
