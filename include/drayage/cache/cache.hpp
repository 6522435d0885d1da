// The blob cache: a BlobStore, a hashing thread and a writer thread, and single-flight verified
// fills.
//
// Life of a blob GET through the cache (the registry front drives it):
//   read_small(digest, max, place, proof)  a complete blob of at most `max` bytes (a whole GET),
//                                   linked to the requested repository: copied into the
//                                   response in one read transaction, no reader
//   lookup(digest)
//     complete -> open_reader(digest, offset, len): a BlobReader over committed chunks
//     filling  -> open_reader(...): a BlobReader joined to that fill
//     absent   -> the fetch layer (registry/fetch.hpp) asks the origins (the bucket, the
//                 upstream) in turn; when one answers with the blob's head,
//                 start_or_join_fill(digest, size). If `started`, it drives that origin's bytes
//                 into the fill (append, finish or fail); either way the front opens a reader for
//                 each client waiting for the digest.
//   The server calls reader->read(max) while its socket is under the high watermark; on
//   would_block it waits for the on_readable callback.
//
// Threads: every method of Cache, CacheFill and BlobReader, and every callback they make, runs on
// the event loop thread of the event_base passed to open(), except read_small(),
// open_complete_reader() and the readers it returns. Fill chunks and documents go from the loop
// to the hashing thread, which computes their sha256 (OpenSSL EVP) and so decides whether a fill
// verified, and on to the writer thread, which owns every write transaction: it takes whatever
// is queued (group commit, at most max_batch_bytes per txn), writes the chunks, evicts to stay
// under max_size, commits, and wakes the loop through a pipe. The two threads overlap: a cold
// fill hashes the next batch while this one is written. Readers copy one chunk at a time out of
// the store in a short read transaction, or point at a not-yet-committed chunk held in memory by
// the fill.
//
// Lifetimes: BlobReaders must be destroyed before the Cache. A CacheFill may outlive it (the source
// may still hold it); once the Cache is gone the fill reports failure and ignores input.
#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/cache/blob_store.hpp"
#include "drayage/config/config.hpp"
#include "drayage/util/result.hpp"

namespace drayage::cache {

class Cache;
class CacheFill;
struct ReaderCore;

// Error codes a reader or fill reports (Error::code), besides the store's.
inline constexpr const char* kErrDigestMismatch = "cache.digest_mismatch";
inline constexpr const char* kErrSizeMismatch = "cache.size_mismatch";
inline constexpr const char* kErrSourceFailed = "cache.source_failed";
inline constexpr const char* kErrAbandoned = "cache.abandoned";  // orphan fill, or Cache closed
inline constexpr const char* kErrRange = "cache.range";          // offset past the end (416)
inline constexpr const char* kErrGone =
    "cache.gone";  // blob dropped under a reader (operator evict)
inline constexpr const char* kErrTooLarge = "cache.too_large";  // larger than max_size
// Writes are failing (disk full beyond what eviction frees, I/O errors): no new fills for a while.
inline constexpr const char* kErrUnwritable = "cache.unwritable";
// read_small with a LinkProof: the repository does not link the blob (as far as the calling
// thread can see).
inline constexpr const char* kErrNotLinked = "cache.not_linked";

struct CacheOptions {
    config::CacheConfig config;
    std::uint64_t chunk_size = 256 * 1024;    // requested; see StoreOptions
    std::chrono::seconds touch_interval{60};  // LRU/hit-count updates per blob at most this often
    // Writer queue watermarks (bytes of queued chunks): above high every append() returns false;
    // sources are resumed when the queue drains under low. Measured on a cold 1 GiB pull (3 rounds
    // each) when every commit still ended in an fsync: 16/4 MiB with 16 MiB commits filled at
    // 0.42 GB/s with 36 MiB anonymous RSS, where 32/8 MiB with 64 MiB commits gave 0.32 GB/s and
    // 64 MiB: smaller commits kept the fsync and the network overlapped. Commits use MDB_NOSYNC
    // now (no fsync; see lmdb_store.cpp); the sizes still bound memory, since LMDB holds a
    // commit's dirty pages in memory until it is written.
    std::uint64_t queue_high_watermark = 16 * 1024 * 1024;
    std::uint64_t queue_low_watermark = 4 * 1024 * 1024;
    std::uint64_t max_batch_bytes = 16 * 1024 * 1024;  // per group commit
    std::size_t evict_batch_blobs = 64;                // per eviction transaction
    std::uint64_t gc_batch_chunks = 1024;              // chunk deletions per transaction
    // Tests: use this store instead of opening LMDB at config.path.
    std::function<std::unique_ptr<BlobStore>()> store_factory;
};

struct ReadResult {
    enum class Kind { data, would_block, end, error };
    Kind kind = Kind::would_block;
    std::string_view bytes;  // kind == data: valid until the next read() or the reader's end
    // kind == data: the buffer `bytes` points into. Holding it keeps the bytes valid after the
    // next read(), so a server can queue them on a socket without copying (evbuffer reference).
    std::shared_ptr<const void> owner;
    Error error;  // kind == error
};

// One client's transfer of [offset, offset + len) of one blob, at the client's own pace.
class BlobReader {
public:
    ~BlobReader();
    BlobReader(const BlobReader&) = delete;
    BlobReader& operator=(const BlobReader&) = delete;

    // Up to max_bytes (never more than one chunk). would_block: the bytes have not arrived yet;
    // on_readable fires when they have (or the fill ended). error: the transfer is cut (digest
    // mismatch, source failure, blob dropped).
    // A reader joined to a running fill holds back the last byte of its range until the fill's
    // sha256 has checked out: a client can never complete a transfer of bytes that fail
    // verification, and `end` is only ever returned for verified blobs.
    ReadResult read(std::size_t max_bytes);
    // Called on the loop thread (never from inside read()) after a would_block, when read() may
    // make progress. Replaces any previous callback.
    void on_readable(std::function<void()> callback);

    std::optional<std::uint64_t> end() const;  // one past the last byte, once known
    std::optional<std::uint64_t> blob_size() const;
    // Narrows a reader opened on the whole blob (offset 0, no len), before its first read(), to
    // [offset, offset + len), offset below blob_size(): a Range resolved against the size this
    // reader reports is served by this reader, without a second open (pin and lookup) of the
    // same blob.
    void narrow(std::uint64_t offset, std::uint64_t len);

private:
    friend class Cache;
    explicit BlobReader(std::shared_ptr<ReaderCore> core);
    std::shared_ptr<ReaderCore> core_;
};

// The one fill of a digest in this process. The source pushes bytes in order.
class CacheFill : public std::enable_shared_from_this<CacheFill> {
public:
    // Feeds bytes. Returns false when the writer queue is over its high watermark: the source
    // should stop reading until the resume callback fires (the bytes given are kept either way).
    // After the fill ended (failed, abandoned) bytes are ignored and it returns false.
    // A fill started without an expected size fails with kErrTooLarge (readers cut, nothing
    // kept) as soon as the bytes would no longer fit in max_size; the Cache remembers the
    // digest, so start_or_join_fill refuses it from then on and the caller streams it uncached.
    bool append(std::string_view bytes);
    // All bytes given. The fill completes once the writer has verified the sha256.
    void finish();
    // The source broke. Readers are cut short; the next request starts a new fill.
    void fail(Error error);

    void set_resume_callback(std::function<void()> cb);
    // The fill no longer wants bytes (orphaned with complete_orphan_fills false, Cache closed,
    // or verification failed early): the source should stop and drop its fill pointer.
    void set_cancel_callback(std::function<void()> cb);
    // Runs once on the loop when the fill has ended: ok once every byte is stored and the
    // writer's sha256 of them matched the digest, the fill's error otherwise (source failure,
    // digest or size mismatch, abandoned, Cache closed). Whoever tees the same bytes elsewhere
    // (write-through to the bucket) can rely on that one hash instead of computing its own.
    // Set after the fill ended, it runs with the outcome on the next loop turn (at once when the
    // Cache is gone).
    void on_end(std::function<void(const Status&)> cb);

    const std::string& digest() const { return digest_; }
    std::uint64_t received() const { return received_; }
    std::optional<std::uint64_t> expected_size() const { return expected_size_; }
    bool done() const { return state_ != State::running && state_ != State::finishing; }
    bool succeeded() const { return state_ == State::complete; }
    const Error& error() const { return error_; }
    std::size_t readers() const { return readers_; }

    // Internal (constructed by Cache::start_or_join_fill).
    struct Token {};
    CacheFill(Token, Cache* cache, std::string digest, std::optional<std::uint64_t> expected,
              std::uint64_t fill_id, std::uint64_t chunk_size);
    ~CacheFill();

private:
    friend class Cache;
    friend struct ReaderCore;
    friend class BlobReader;
    enum class State { running, finishing, complete, failed };

    void submit_tail(bool last);
    void end_with(Error error, bool tell_writer);
    void report_end();  // hands the outcome to on_end's callback, once
    void wake_readers();
    void reader_left();

    Cache* cache_;
    std::string digest_;
    std::optional<std::uint64_t> expected_size_;
    std::uint64_t fill_id_;
    std::uint64_t chunk_size_;
    State state_ = State::running;
    Error error_;
    std::uint64_t received_ = 0;
    std::string tail_;  // bytes of the chunk being assembled (reserved: never reallocates)
    std::uint32_t next_index_ = 0;  // chunks handed to the writer
    std::uint32_t committed_ = 0;   // chunks committed, contiguous from 0
    std::uint64_t blob_id_ = 0;     // known once the first commit reports back
    std::map<std::uint32_t, std::shared_ptr<const std::string>> in_flight_;
    std::uint64_t queued_bytes_ = 0;
    bool paused_ = false;
    bool cancel_sent_ = false;
    std::size_t readers_ = 0;
    std::vector<std::weak_ptr<ReaderCore>> waiters_;
    std::function<void()> on_resume_;
    std::function<void()> on_cancel_;
    std::function<void(const Status&)> on_end_;
};

struct FillHandle {
    std::shared_ptr<CacheFill> fill;
    bool started = false;  // true: this caller must drive a source into `fill`
};

enum class Presence { absent, filling, complete };

struct Lookup {
    Presence presence = Presence::absent;
    std::uint64_t size = 0;  // complete only
};

struct Document {
    std::string media_type;
    std::string bytes;
};

struct CacheStats {
    StoreUsage store;
    std::uint64_t hits = 0;   // readers opened on complete blobs, and read_small copies
    std::uint64_t joins = 0;  // readers joined to a running fill
    std::uint64_t fills_started = 0;
    std::uint64_t fills_completed = 0;
    std::uint64_t fills_failed = 0;  // source failure, mismatch, abandoned
    std::uint64_t digest_mismatches = 0;
    std::uint64_t evicted_blobs = 0;
    std::uint64_t commits = 0;  // write transactions committed
    std::uint64_t map_full_retries = 0;
    std::uint64_t over_limit = 0;  // batches written over max_size (everything else pinned)
    std::uint64_t queued_bytes = 0;
    std::size_t running_fills = 0;
};

class Cache {
public:
    // Opens (or creates) the store, sweeps `filling` records left by a crash, starts the writer.
    // Only one Cache per path per host: an exclusive flock on <path>/drayage.lock (the operator
    // CLI does not take it). Errors name the path and the cause.
    static Result<std::unique_ptr<Cache>> open(event_base* base, CacheOptions options);
    ~Cache();  // drains the writer queue, abandons running fills, joins the writer

    Result<Lookup> lookup(std::string_view digest);
    // [offset, offset+len) of a complete or filling blob; len nullopt = to the end.
    // kErrNotFound: absent. kErrRange: offset past a known end.
    Result<std::unique_ptr<BlobReader>> open_reader(std::string_view digest, std::uint64_t offset,
                                                    std::optional<std::uint64_t> len);
    // The same for a complete blob only, callable from any thread (the hit workers): the
    // reader, its reads and its destruction then belong to the calling thread and never touch
    // the loop's state. kErrNotFound also while the blob is being filled. Readers must still be
    // destroyed before the Cache.
    Result<std::unique_ptr<BlobReader>> open_complete_reader(std::string_view digest,
                                                             std::uint64_t offset,
                                                             std::optional<std::uint64_t> len);
    // Which repository must link a blob for read_small to read it: the registry front's proof
    // that <name> holds <digest>, looked up in the read transaction that reads the blob.
    struct LinkProof {
        std::string_view repo;
        // true on the loop thread only: links queued and not yet committed count, and queued
        // unlinks count as gone, exactly as for is_linked. false: committed links only (the
        // hit workers, like store().is_linked).
        bool queued = true;
    };
    // A complete blob of at most `max_bytes` (and one chunk), copied whole to place(size) in one
    // read transaction: hits on small blobs need no reader and no pin. Any thread, like
    // open_complete_reader. Returns the size when copied; nullopt when the blob is complete but
    // larger (open a reader). kErrNotFound when not complete (absent, or being filled).
    // With `proof`: kErrNotLinked when its repository does not link the blob (checked first,
    // nothing else is read); every other answer means it does.
    Result<std::optional<std::uint64_t>> read_small(std::string_view digest,
                                                    std::uint64_t max_bytes,
                                                    const std::function<char*(std::size_t)>& place,
                                                    const LinkProof* proof = nullptr);
    // Joins the running fill of `digest` or starts one. Errors: not a sha256 digest; kErrTooLarge
    // (stored at its expected size, or at the size an earlier fill without one reached, the
    // blob would charge more than max_size; the last 1024 such digests are remembered) and
    // kErrUnwritable (the last write failed; retried after a backoff of 5 s doubling to 60 s):
    // the caller streams without caching.
    Result<FillHandle> start_or_join_fill(std::string_view digest,
                                          std::optional<std::uint64_t> expected_size);

    // Small JSON documents (manifests), verified against their digest before they are stored.
    // `done` (optional) runs on the loop after the commit.
    Status put_document(std::string_view digest, std::string_view media_type, std::string bytes,
                        std::function<void(Status)> done = {});
    Result<std::optional<Document>> get_document(std::string_view digest);

    // The repository -> blob relation (for access control): written through the writer.
    void link(std::string_view repo, std::string_view digest);
    // The registry deleted `digest` in `repo`: ends what the cache records of it there (the
    // link, the tag records of `repo` naming it) and drops the blob or document itself once no
    // repository links it any more. A blob a reader or fill holds at that moment stays, linked
    // nowhere, until it is evicted. is_linked on the loop answers false at once; `done`
    // (optional) runs on the loop once it is committed, so the store's readers (the hit
    // workers, a restarted process) see it too.
    void unlink(std::string_view repo, std::string_view digest, std::function<void()> done = {});
    // Loop thread: includes what is queued. Other threads read store().is_linked (committed).
    // A whole GET proves the link with read_small's LinkProof instead, in the same lookup.
    Result<bool> is_linked(std::string_view repo, std::string_view digest);

    // Tag records (see TagRecord; `key` is "<repo>:<tag>"), written through the writer in order
    // with everything else. get_tag reads what is committed.
    void put_tag(std::string_view key, TagRecord record);
    void drop_tag(std::string_view key);
    void drop_tags_checked_before(std::int64_t unix_seconds);
    Result<std::optional<TagRecord>> get_tag(std::string_view key);

    // Drops a blob now unless a reader or fill holds it (returns false then).
    bool evict(std::string_view digest);

    CacheStats stats();
    // Runs `cb` on the loop once everything queued so far is committed (tests, shutdown).
    void when_idle(std::function<void()> cb);

    BlobStore& store();
    event_base* base() const;

    struct Impl;

private:
    friend class CacheFill;
    friend struct ReaderCore;
    friend class BlobReader;
    explicit Cache(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace drayage::cache
