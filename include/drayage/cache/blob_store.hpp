// BlobStore: the narrow storage interface under the blob cache, with an LMDB implementation
// (production) and an in-memory one (tests).
//
// Data model (LMDB named databases in one environment under `cache.path`):
//   meta    digest -> BlobMeta          one record per blob or document
//   chunks  be64(blob_id) be32(index)   -> at most chunk_size() bytes; LMDB stores each as one
//                                          run of contiguous overflow pages, so a blob is many
//                                          small values, never one huge one
//   lru     be64(last_access) digest    -> ""   (the LRU index; touched lazily by the Cache)
//   links   repo '\0' digest           -> ""   (which repositories a blob is known to belong to)
//   linked_by digest '\0' repo         -> ""   (the same relation by digest, written in the same
//                                          transaction: whether any repository still links a
//                                          blob; built from `links` when a store without it opens)
//   garbage be64(blob_id)              -> ""   (chunks of dropped blobs, deleted in bounded steps)
//   tags    repo ':' tag               -> TagRecord (the manifest a tag last named upstream)
//   info    "charged" | "next_id" | "chunk_size"
//
// Chunks are keyed by a blob_id, not by digest: a blob that is dropped (evicted, failed fill,
// corrupt) disappears from `meta` in one small transaction and its chunks are deleted later in
// bounded batches, while a fresh fill of the same digest writes under a new blob_id.
//
// Size accounting: every write keeps `charged` = what the stored bytes really occupy: each chunk
// is charged its whole overflow pages (ceil((len + 16) / page) * page), each blob a fixed
// kMetaCharge for its meta, LRU and link records. The Cache keeps `charged <= max_size`.
// Margin: what `charged` does not cover (branch pages, chunk-key leaf pages, the info and lru
// databases) measured as (pages in use - charged) / charged with one 1 GiB blob:
// 0.072% at 64 KiB chunks, 0.020% at 256 KiB, 0.006% at 1 MiB (bench/cache_bench.cpp); the unit
// test asserts < 0.1% over 40 blobs of mixed sizes. So pages in use stay within max_size * 1.001.
// The data file itself may grow past that (LMDB never shrinks it, and pages freed by eviction
// are reused only once no reader snapshot needs them): the map is max_size + 25% + 64 MiB, and
// MDB_MAP_FULL is answered by evicting and retrying.
//
// Chunk size: 256 KiB - 16 (64 pages exactly). Measured (bench/cache_bench.cpp, 1 GiB, loaded
// 2-core box): reader throughput 2.1-3.3 GB/s for all three sizes, i.e. 0.6x read() from the page
// cache (one memcpy out of the map per chunk plus the copy into the client buffer); fill
// throughput was bound by page-cache writes and the fsync of each commit (commits use MDB_NOSYNC
// since; see lmdb_store.cpp), not by the chunk size. 256 KiB keeps a
// reader's buffer (one chunk) at 256 KiB, so thousands of concurrent readers stay cheap, with
// 1/4 of the LMDB operations of 64 KiB chunks and 0.02% overhead.
//
// Threads: every method may be called from any thread. Reads use their own short read
// transactions (MDB_NOTLS) and copy what they return, so no transaction outlives a call. Writes
// go through one StoreWrite at a time: LMDB's own writer lock serialises writers across threads
// and processes (the operator CLI opens the same environment while the server runs).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/util/result.hpp"

namespace drayage::cache {

// Error codes used by the store (Error::code).
inline constexpr const char* kErrMapFull = "cache.map_full";  // MDB_MAP_FULL: evict and retry
inline constexpr const char* kErrNotFound = "cache.not_found";
inline constexpr const char* kErrStore = "cache.store";  // any other storage failure

// Fixed charge per blob for its meta, LRU and chunk-key records (measured: about 150 bytes).
inline constexpr std::uint64_t kMetaCharge = 256;

enum class BlobState : std::uint8_t { filling = 1, complete = 2 };

struct BlobMeta {
    std::string digest;         // "sha256:<64 lowercase hex>"
    std::uint64_t blob_id = 0;  // chunk key prefix; new for every fill
    std::uint64_t size = 0;     // bytes; 0 while filling (the fill knows its progress)
    BlobState state = BlobState::filling;
    std::int64_t created = 0;      // unix seconds
    std::int64_t last_access = 0;  // unix seconds; updated lazily (Cache touch interval)
    std::uint64_t hits = 0;
    std::string media_type;  // documents (manifests) only; empty for layer blobs
};

// The manifest a tag named when the upstream last confirmed it: what lets a restarted mirror still
// answer a tag (stale-if-error) while the upstream is down. Not charged against max_size; the
// registry front drops records older than upstream.max_stale, which bounds them.
struct TagRecord {
    std::string digest;
    std::string media_type;
    std::int64_t checked = 0;  // unix seconds
};

struct StoreUsage {
    std::uint64_t charged_bytes = 0;  // what the Cache bounds by max_size
    std::uint64_t used_bytes = 0;     // pages in use by every database (LMDB: mdb_stat totals)
    std::uint64_t file_bytes = 0;     // data file size (LMDB never shrinks it)
    std::uint64_t map_bytes = 0;
    std::uint64_t max_size = 0;
    std::uint64_t blobs = 0;          // meta records, any state
    std::uint64_t garbage_blobs = 0;  // dropped blobs whose chunks are not all deleted yet
    std::uint64_t chunk_size = 0;
};

// One write transaction. Not thread-safe; used by one thread, then committed or destroyed
// (destroying without commit aborts). After any call returns kErrMapFull the transaction is dead:
// destroy it, make room, start again.
class StoreWrite {
public:
    virtual ~StoreWrite() = default;

    virtual Result<std::optional<BlobMeta>> get_meta(std::string_view digest) = 0;
    // Inserts or replaces; keeps the LRU index in step with last_access.
    virtual Status put_meta(const BlobMeta& meta) = 0;
    virtual Result<std::uint64_t> new_blob_id() = 0;
    virtual Status put_chunk(std::uint64_t blob_id, std::uint32_t index,
                             std::string_view bytes) = 0;
    // Removes the meta and LRU records now (the blob is gone for readers after commit) and
    // queues its chunks as garbage. Not found is not an error (returns false).
    virtual Result<bool> drop_blob(std::string_view digest) = 0;
    // Deletes up to `max_chunks` garbage chunks; returns how many were deleted.
    virtual Result<std::uint64_t> collect_garbage(std::uint64_t max_chunks) = 0;
    virtual Result<bool> has_garbage() = 0;
    // Up to `n` metas in LRU order (least recently used first), skipping the first `skip`.
    virtual Result<std::vector<BlobMeta>> oldest(std::size_t skip, std::size_t n) = 0;
    virtual Status link(std::string_view repo, std::string_view digest) = 0;
    // Removes the link of `digest` to `repo`, if any (returns whether there was one).
    virtual Result<bool> unlink(std::string_view repo, std::string_view digest) = 0;
    // Whether any repository links `digest`.
    virtual Result<bool> has_links(std::string_view digest) = 0;
    // Drops every tag record of `repo` ("<repo>:<tag>") that names `digest`; returns how many.
    virtual Result<std::uint64_t> drop_tags_naming(std::string_view repo,
                                                   std::string_view digest) = 0;
    // `key` is "<repo>:<tag>". Inserts or replaces.
    virtual Status put_tag(std::string_view key, const TagRecord& record) = 0;
    // Not found is not an error.
    virtual Status drop_tag(std::string_view key) = 0;
    // Drops every tag record checked before `before` (unix seconds); returns how many.
    virtual Result<std::uint64_t> drop_tags_checked_before(std::int64_t before) = 0;
    virtual std::uint64_t charged_bytes() const = 0;
    virtual Status commit() = 0;
};

// The bytes of one chunk, read out of a store. Unlike a std::string it is sized without being
// zero-filled first: the read overwrites every byte, and clearing 256 KiB per chunk was a
// quarter of the instructions of a small cache hit.
class ChunkBuffer {
public:
    // Room for exactly n bytes, uninitialised; the allocation is kept when it is large enough.
    char* resize(std::size_t n) {
        if (n > capacity_) {
            data_ = std::make_unique_for_overwrite<char[]>(n);
            capacity_ = n;
        }
        size_ = n;
        return data_.get();
    }
    const char* data() const { return data_.get(); }
    std::size_t size() const { return size_; }
    std::string_view view() const { return {data_.get(), size_}; }

private:
    std::unique_ptr<char[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

class BlobStore {
public:
    virtual ~BlobStore() = default;

    virtual std::uint64_t chunk_size() const = 0;
    virtual std::uint64_t max_size() const = 0;
    // Bytes a chunk of `len` bytes is charged (whole overflow pages).
    virtual std::uint64_t chunk_charge(std::uint64_t len) const = 0;

    virtual Result<std::optional<BlobMeta>> stat(std::string_view digest) = 0;
    // Copies chunk `index` of `blob_id` into `out`. kErrNotFound when absent (dropped meanwhile).
    virtual Status read_chunk(std::uint64_t blob_id, std::uint32_t index, ChunkBuffer& out) = 0;
    // The meta of `digest` and, when the blob is complete and fits in one chunk of at most
    // `max_bytes`, its bytes, copied to place(size) (not called for an empty blob), all in one
    // read transaction: what is read is consistent without pinning the blob. `copied` says
    // whether the bytes were copied. nullopt: no meta.
    // `linked_to` not empty: first, in the same transaction, whether that repository links
    // `digest` (the registry front's proof on a hit, at the cost of one more key lookup rather
    // than a transaction of its own). When it does not, nothing else is read: `linked` is
    // false, `meta` empty, nothing copied.
    struct SmallRead {
        BlobMeta meta;
        bool copied = false;
        bool linked = true;
    };
    virtual Result<std::optional<SmallRead>> read_small(
        std::string_view digest, std::uint64_t max_bytes,
        const std::function<char*(std::size_t)>& place, std::string_view linked_to) = 0;
    virtual Result<std::unique_ptr<StoreWrite>> begin_write() = 0;
    // Every meta record (any state), in key order. Reads in pages of short transactions.
    virtual Result<std::vector<BlobMeta>> list() = 0;
    virtual Result<bool> is_linked(std::string_view repo, std::string_view digest) = 0;
    virtual Result<std::optional<TagRecord>> get_tag(std::string_view key) = 0;
    virtual Result<StoreUsage> usage() = 0;
    // Flushes every commit to disk (LMDB commits with MDB_NOSYNC; see cache_dir.hpp).
    virtual Status sync() = 0;
};

struct StoreOptions {
    std::string path;            // directory; created if missing
    std::uint64_t max_size = 0;  // cache.max_size
    // Requested chunk size; the store rounds it so a chunk fills whole overflow pages
    // (n * page - 16). Fixed when the store is created: an existing store keeps its own.
    std::uint64_t chunk_size = 256 * 1024;
    // 0: map_size_for(max_size). Tests set it lower to provoke kErrMapFull.
    std::uint64_t map_size = 0;
};

// LMDB store. Errors name the path and the LMDB message.
Result<std::unique_ptr<BlobStore>> open_lmdb_store(const StoreOptions& options);

// In-memory store with the same contract (including kErrMapFull once the data passes the map size
// the LMDB store would have): for tests.
std::unique_ptr<BlobStore> make_memory_store(const StoreOptions& options);

// The map size derived from max_size (headroom for MVCC, free list and B-tree pages).
std::uint64_t map_size_for(std::uint64_t max_size);

// "sha256:" followed by 64 lowercase hex digits.
bool is_sha256_digest(std::string_view digest);

}  // namespace drayage::cache
