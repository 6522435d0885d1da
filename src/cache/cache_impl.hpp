// Internals shared by the loop side (cache.cpp, fill.cpp, records.cpp) and the writer thread
// (writer.cpp, writer_batch.cpp).
#pragma once

#include <event2/event.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache_dir.hpp"
#include "drayage/cache/cache.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::cache {

// What the loop asks the writer to do. Processed strictly in order.
struct WriterOp {
    enum class Kind {
        fill_begin,
        fill_chunk,
        fill_finish,
        fill_abort,
        touch,
        document,
        link,
        unlink,       // digest: repo '\0' digest
        tag_put,      // digest: the tag key; tag: the record
        tag_drop,     // digest: the tag key
        tags_expire,  // now: drop tag records checked before this
        evict,
        barrier,
        stop
    };
    Kind kind = Kind::barrier;
    std::uint64_t fill_id = 0;
    std::uint64_t id = 0;  // document / barrier
    std::string digest;    // link: repo '\0' digest
    std::uint32_t index = 0;
    std::shared_ptr<const std::string> data;
    std::uint64_t size = 0;
    std::int64_t now = 0;
    std::uint64_t hits = 0;
    std::string media_type;
    TagRecord tag;
    // Set by the hashing stage for fill_finish and document: did the bytes hash to the digest?
    bool verified = true;
    Error verify_error;
};

// What the writer reports back to the loop.
struct Completion {
    enum class Kind { committed, fill_done, document_done, linked, unlinked, barrier };
    Kind kind = Kind::barrier;
    std::uint64_t fill_id = 0;
    std::uint64_t id = 0;
    std::uint64_t blob_id = 0;
    std::uint32_t committed = 0;       // chunks committed, contiguous from 0
    std::uint64_t bytes_released = 0;  // queued bytes now on disk (or dropped)
    bool ok = true;
    Error error;
    std::string digest;
};

// Pin counts held by readers and fills of this process; the writer never evicts a pinned blob.
// A blob the writer is evicting cannot be pinned until that commit is done.
class Pins {
public:
    bool pin(const std::string& digest) {
        std::lock_guard lock(mu_);
        if (evicting_.count(digest) > 0) return false;
        ++counts_[digest];
        return true;
    }
    void unpin(const std::string& digest) {
        std::lock_guard lock(mu_);
        auto it = counts_.find(digest);
        if (it == counts_.end()) return;
        if (--it->second == 0) counts_.erase(it);
    }
    std::size_t count(const std::string& digest) {
        std::lock_guard lock(mu_);
        auto it = counts_.find(digest);
        return it == counts_.end() ? 0 : static_cast<std::size_t>(it->second);
    }
    // Writer: claims `digest` for eviction unless pinned.
    bool claim_for_eviction(const std::string& digest) {
        std::lock_guard lock(mu_);
        if (counts_.count(digest) > 0) return false;
        evicting_.insert(digest);
        return true;
    }
    void release_claims() {
        std::lock_guard lock(mu_);
        evicting_.clear();
    }

private:
    std::mutex mu_;
    std::unordered_map<std::string, int> counts_;
    std::set<std::string> evicting_;
};

class Writer;

// A per-Cache count (stats(), tests) that also feeds the process-wide /metrics counter.
struct Tally {
    Tally(const char* name, const char* help) : metric(metrics::global().counter(name, help)) {}
    void fetch_add(std::uint64_t n) {
        local.fetch_add(n, std::memory_order_relaxed);
        metric.inc(n);
    }
    std::uint64_t load() const { return local.load(std::memory_order_relaxed); }
    std::atomic<std::uint64_t> local{0};
    metrics::Counter& metric;
};

struct Cache::Impl {
    event_base* base = nullptr;
    CacheOptions options;
    std::unique_ptr<BlobStore> store;
    std::unique_ptr<Writer> writer;
    Pins pins;
    std::optional<DirLock> lock;  // real LMDB stores only
    event* notify_ev = nullptr;
    event* wake_ev = nullptr;

    // Loop-thread state.
    std::map<std::string, std::shared_ptr<CacheFill>> fills;  // running, by digest
    std::map<std::uint64_t, std::weak_ptr<CacheFill>> by_id;  // until the writer is done
    std::vector<std::weak_ptr<CacheFill>> paused;
    std::vector<std::function<void()>> deferred;
    std::uint64_t queued_bytes = 0;
    std::uint64_t next_fill_id = 0;
    std::uint64_t next_doc_id = 0;
    struct PendingDoc {
        std::uint64_t id;
        std::string media_type;
        std::shared_ptr<const std::string> bytes;
    };
    std::map<std::string, PendingDoc> pending_docs;
    std::map<std::uint64_t, std::function<void(Status)>> doc_callbacks;
    std::map<std::uint64_t, std::function<void()>> idle_callbacks;
    // Links (repo '\0' digest) queued and not yet committed: what is_linked answers for them.
    std::set<std::string> pending_links;
    std::set<std::string> pending_unlinks;
    // What the queued links say of `repo` and `digest`: true (a link is queued), false (an
    // unlink is), nullopt (neither: the store answers).
    std::optional<bool> queued_link(std::string_view repo, std::string_view digest) const;
    // Digests of blobs found larger than max_size while being filled without a known size, so
    // that later misses stream them uncached at once instead of filling (and evicting) again.
    // The oldest are forgotten past kTooLargeMemory.
    static constexpr std::size_t kTooLargeMemory = 1024;
    std::set<std::string> too_large;
    std::deque<std::string> too_large_order;
    struct Touch {
        std::uint64_t hits = 0;
        std::int64_t queued_at = 0;
    };
    std::mutex touch_mu;  // touches: the loop and the hit workers
    std::unordered_map<std::string, Touch> touches;

    // Counters (the writer updates some).
    Tally hits{"drayage_cache_hits_total", "Readers opened on complete cached blobs."};
    Tally joins{"drayage_cache_fill_joins_total", "Readers joined to a running fill."};
    Tally fills_started{"drayage_cache_fills_started_total", "Cache fills started (misses)."};
    Tally fills_completed{"drayage_cache_fills_completed_total", "Fills verified and stored."};
    Tally fills_failed{"drayage_cache_fills_failed_total",
                       "Fills dropped: source failure, digest mismatch, abandoned, store error."};
    Tally digest_mismatches{"drayage_cache_digest_mismatches_total",
                            "Fills whose bytes did not hash to their digest."};
    Tally evicted_blobs{"drayage_cache_evicted_blobs_total",
                        "Blobs evicted to stay under max_size."};
    Tally commits{"drayage_cache_commits_total", "LMDB write transactions committed."};
    Tally map_full_retries{"drayage_cache_map_full_retries_total",
                           "Write batches retried after MDB_MAP_FULL."};
    Tally over_limit{"drayage_cache_over_limit_total",
                     "Write batches stored over max_size because everything else was pinned."};
    Tally write_failures{"drayage_cache_write_failures_total",
                         "Write batches that could not be stored (disk full, I/O errors)."};
    metrics::Gauge& charged_gauge = metrics::global().gauge(
        "drayage_cache_charged_bytes", "Bytes the cache holds (bounded by max_size).");
    metrics::Gauge& writable_gauge = metrics::global().gauge(
        "drayage_cache_writable",
        "0 while cache writes are failing and misses are streamed uncached, else 1.");
    // Set by the writer after a failed write: until then (steady clock, ns) start_or_join_fill
    // refuses new fills, so misses are streamed uncached instead of failing one after another.
    std::atomic<std::int64_t> unwritable_until_ns{0};

    void defer(std::function<void()> fn);
    void run_deferred();
    bool pin(const std::string& digest);
    void unpin(const std::string& digest);
    void forget_fill(CacheFill& fill);
    void on_completions();
    void note_access(const BlobMeta& meta);
    // What a blob of `size` bytes charges against max_size once stored (chunks and records).
    std::uint64_t blob_charge(std::uint64_t size) const;
    void remember_too_large(const std::string& digest);
};

// The writer thread: owns every write transaction of this process.
class Writer {
public:
    static Result<std::unique_ptr<Writer>> start(Cache::Impl& impl);
    ~Writer();

    void push(WriterOp op);
    std::vector<Completion> take_completions();
    int wake_fd() const { return wake_read_; }
    void clear_wake() { wake_pending_.store(false); }
    void stop_and_join();

    // A fill the writer has seen begin and not yet finish (writer thread only).
    struct FillState {
        std::string digest;
        std::uint64_t blob_id = 0;
        bool failed = false;
    };
    struct HashState;

private:
    explicit Writer(Cache::Impl& impl);
    void run();
    void run_hasher();
    void hash(WriterOp& op);
    // One batch, in one write transaction (writer_batch.cpp): prepare() charges it and reads
    // the hasher's verdicts, write_batch() applies it (apply(): one handler per op kind),
    // retrying after MDB_MAP_FULL or a full disk, and report() posts the completions.
    struct Prepared;
    struct FillReport;
    struct BatchCharge {
        std::uint64_t incoming = 0;  // bytes the batch charges against max_size
        bool blob_data = false;      // the batch writes chunks of a fill
    };
    void process(std::vector<WriterOp>& batch);
    BatchCharge prepare(std::vector<WriterOp>& batch, std::vector<Prepared>& prep);
    Status write_batch(std::vector<WriterOp>& batch, std::vector<Prepared>& prep,
                       std::uint64_t incoming);
    Status apply_batch(StoreWrite& w, std::vector<WriterOp>& batch, std::vector<Prepared>& prep);
    Status apply(StoreWrite& w, const WriterOp& op, Prepared& p);
    Status apply_fill_begin(StoreWrite& w, const WriterOp& op);
    Status apply_fill_finish(StoreWrite& w, const WriterOp& op, Prepared& p);
    Status apply_fill_abort(StoreWrite& w, const WriterOp& op);
    Status apply_touch(StoreWrite& w, const WriterOp& op);
    Status apply_document(StoreWrite& w, const WriterOp& op);
    Status apply_evict(StoreWrite& w, const WriterOp& op);
    Status apply_unlink(StoreWrite& w, const WriterOp& op);
    void report(const std::vector<WriterOp>& batch, const std::vector<Prepared>& prep,
                const Status& result);
    std::map<std::uint64_t, FillReport> report_fills(const std::vector<WriterOp>& batch,
                                                     const std::vector<Prepared>& prep,
                                                     const Status& result,
                                                     std::vector<Completion>& done);
    std::vector<std::string> report_ops(const std::vector<WriterOp>& batch,
                                        const std::vector<Prepared>& prep, const Status& result,
                                        std::vector<Completion>& done);
    void drop_failed_fills(const Status& result, const std::map<std::uint64_t, FillReport>& reports,
                           std::vector<std::string> to_drop);
    bool make_room(std::uint64_t incoming, std::uint64_t shrink_by = 0);
    struct DiskSpace {
        std::uint64_t available = 0;
        std::uint64_t headroom = 0;
    };
    std::optional<DiskSpace> disk_space() const;
    bool disk_full(std::uint64_t incoming) const;
    void fit_to_disk();
    void settle_freed_pages();
    void note_write_result(const Status& result, bool blob_data);
    void collect_garbage_step();
    void post(std::vector<Completion> done);

    Cache::Impl& impl_;
    BlobStore& store_;
    // push() -> hasher thread (sha256 of every fill chunk and document) -> writer thread. The two
    // stages overlap: a cold fill hashes the next batch while LMDB writes this one.
    std::thread hasher_;
    std::mutex hash_mu_;
    std::condition_variable hash_cv_;
    std::deque<WriterOp> hash_queue_;
    std::map<std::uint64_t, std::unique_ptr<HashState>> hashing_;  // hasher thread only
    std::thread thread_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<WriterOp> queue_;
    bool stopping_ = false;
    std::mutex done_mu_;
    std::vector<Completion> done_;
    std::atomic<bool> wake_pending_{false};
    int wake_read_ = -1;
    int wake_write_ = -1;
    bool garbage_ = true;  // writer thread only
    // Writer thread only. When the filesystem has less room than max_size: the most the cache
    // may hold, raised again as space comes back. Pages freed by eviction are reused inside
    // LMDB's file, which needs no new disk space.
    std::uint64_t disk_cap_ = UINT64_MAX;
    std::chrono::milliseconds unwritable_backoff_{0};            // 0: writes are succeeding
    std::map<std::uint64_t, std::unique_ptr<FillState>> fills_;  // writer thread only
};

}  // namespace drayage::cache
