// The LMDB BlobStore. See blob_store.hpp for the data model.
//
// Environment flags, and why:
//   MDB_NOTLS       read transactions are begun and ended on the event loop (and on the writer
//                   thread, and in the CLI); none is tied to a thread's slot.
//   MDB_NOSYNC      a commit goes to the page cache, not the disk. A kill -9 loses nothing (the
//                   kernel has every page); an OS crash or power cut may tear the file, so the
//                   cache directory carries a shutdown marker (cache_dir.hpp) and a cache that
//                   was open when the system went down is discarded at the next start. sync()
//                   (on clean shutdown, and when the store closes) flushes everything.
//                   Measured (bench/cache_bench, 1 GiB): fsync per group commit held fills to
//                   0.3-0.4 GB/s on this disk.
//   no MDB_WRITEMAP a stray write through a pointer cannot reach the file. Measured too: writing
//                   into the map faults in zero-filled pages of the sparse file (55% of a cold
//                   pull's CPU in the kernel's memset on a first fill), and every written page
//                   counts in the process's RSS.
//
// Chunks are read with pread() at the value's offset in the file, inside the read transaction
// (which keeps the pages from being reused): an overflow value's pages are never touched through
// the map, so serving a 1 GiB blob does not put 1 GiB of mapped pages into drayage's RSS, and
// there are no page faults on the hit path.
#include <lmdb.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "drayage/cache/blob_store.hpp"
#include "lmdb_common.hpp"
#include "store_common.hpp"

namespace drayage::cache {
namespace {

using lmdb::begin_txn;
using lmdb::CursorPtr;
using lmdb::Dbis;
using lmdb::lmdb_error;
using lmdb::read_meta;
using lmdb::read_u64;
using lmdb::TxnPtr;
using lmdb::val;
using lmdb::view;
using lmdb::write_u64;

// Read transactions for the hot paths (stat, read_chunk: several per cache hit, from the loop and
// the hit workers), kept reset between uses and renewed: mdb_txn_begin allocates and takes the
// reader table's lock, mdb_txn_renew does neither (MDB_NOTLS lets any thread renew any of them).
// A reset transaction holds no snapshot, so it never keeps pages from being reused.
class ReadPool {
public:
    explicit ReadPool(MDB_env* env) : env_(env) {}
    ~ReadPool() { clear(); }
    ReadPool(const ReadPool&) = delete;
    ReadPool& operator=(const ReadPool&) = delete;

    class Lease {
    public:
        Lease(ReadPool* pool, MDB_txn* txn) : pool_(pool), txn_(txn) {}
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ~Lease() {
            if (txn_ != nullptr) pool_->give(txn_);
        }
        MDB_txn* get() const { return txn_; }

    private:
        ReadPool* pool_;
        MDB_txn* txn_;
    };

    // 0 and `out` set, or an LMDB error.
    int take(std::optional<Lease>& out) {
        MDB_txn* t = nullptr;
        {
            std::lock_guard lock(mu_);
            if (!free_.empty()) {
                t = free_.back();
                free_.pop_back();
            }
        }
        if (t != nullptr && mdb_txn_renew(t) != 0) {
            mdb_txn_abort(t);  // e.g. MDB_MAP_RESIZED: begin afresh below
            t = nullptr;
        }
        if (t == nullptr) {
            TxnPtr fresh;
            if (int rc = begin_txn(env_, MDB_RDONLY, fresh); rc != 0) return rc;
            t = fresh.release();
        }
        out.emplace(this, t);
        return 0;
    }

    void clear() {
        std::lock_guard lock(mu_);
        for (MDB_txn* t : free_)
            mdb_txn_abort(t);
        free_.clear();
    }

private:
    void give(MDB_txn* t) {
        mdb_txn_reset(t);
        std::lock_guard lock(mu_);
        if (free_.size() < 32) {
            free_.push_back(t);
            return;
        }
        mdb_txn_abort(t);
    }

    MDB_env* env_;
    std::mutex mu_;
    std::vector<MDB_txn*> free_;
};

class LmdbStore final : public BlobStore {
public:
    ~LmdbStore() override {
        if (env_ == nullptr) return;
        reads_.reset();
        mdb_env_sync(env_, 1);  // the CLI's writes too; the server checks the result via sync()
        mdb_env_close(env_);
    }

    Status sync() override {
        if (int rc = mdb_env_sync(env_, 1); rc != 0) return lmdb_error(rc, "syncing " + path_);
        return {};
    }

    Status open(const StoreOptions& opts) {
        path_ = opts.path;
        max_size_ = opts.max_size;
        std::error_code ec;
        std::filesystem::create_directories(path_, ec);
        if (ec)
            return make_error(kErrStore,
                              "cannot create cache directory " + path_ + ": " + ec.message());
        if (int rc = mdb_env_create(&env_); rc != 0) return lmdb_error(rc, "mdb_env_create");
        mdb_env_set_maxdbs(env_, 16);
        mdb_env_set_maxreaders(env_, 1024);
        if (int rc = mdb_env_set_mapsize(
                env_, opts.map_size != 0 ? opts.map_size : map_size_for(max_size_));
            rc != 0) {
            return lmdb_error(rc, "setting map size for " + path_);
        }
        if (int rc = mdb_env_open(env_, path_.c_str(), MDB_NOTLS | MDB_NOSYNC, 0644); rc != 0) {
            return lmdb_error(rc, "opening cache at " + path_);
        }
        int dead = 0;
        mdb_reader_check(env_, &dead);  // reader slots of processes killed mid-read
        if (int rc = mdb_env_get_fd(env_, &fd_); rc != 0) return lmdb_error(rc, "env fd");
        reads_ = std::make_unique<ReadPool>(env_);
        if (auto st = find_map(); !st) return st;
        MDB_stat st;
        mdb_env_stat(env_, &st);
        page_ = st.ms_psize;

        TxnPtr txn;
        if (int rc = begin_txn(env_, 0, txn); rc != 0)
            return lmdb_error(rc, "opening cache at " + path_);
        struct Named {
            const char* name;
            MDB_dbi* dbi;
        };
        for (Named n : {Named{"meta", &dbi_.meta}, Named{"chunks", &dbi_.chunks},
                        Named{"lru", &dbi_.lru}, Named{"links", &dbi_.links},
                        Named{"linked_by", &dbi_.linked_by}, Named{"garbage", &dbi_.garbage},
                        Named{"info", &dbi_.info}, Named{"tags", &dbi_.tags}}) {
            if (int rc = mdb_dbi_open(txn.get(), n.name, MDB_CREATE, n.dbi); rc != 0) {
                return lmdb_error(rc, std::string("opening database ") + n.name + " in " + path_);
            }
        }
        chunk_size_ = read_u64(txn.get(), dbi_.info, "chunk_size", 0);
        if (chunk_size_ == 0) {
            chunk_size_ = detail::round_chunk_size(opts.chunk_size, page_);
            if (int rc = write_u64(txn.get(), dbi_.info, "chunk_size", chunk_size_); rc != 0) {
                return lmdb_error(rc, "initialising " + path_);
            }
        }
        if (int rc = lmdb::index_links(txn.get(), dbi_); rc != 0)
            return lmdb_error(rc, "indexing repository links in " + path_);
        if (int rc = mdb_txn_commit(txn.release()); rc != 0)
            return lmdb_error(rc, "initialising " + path_);
        return {};
    }

    std::uint64_t chunk_size() const override { return chunk_size_; }
    std::uint64_t max_size() const override { return max_size_; }
    std::uint64_t chunk_charge(std::uint64_t len) const override {
        return detail::chunk_charge(len, page_);
    }

    Result<std::optional<BlobMeta>> stat(std::string_view digest) override {
        std::optional<ReadPool::Lease> txn;
        if (int rc = reads_->take(txn); rc != 0) return lmdb_error(rc, "read txn");
        return read_meta(txn->get(), dbi_.meta, digest);
    }

    Status read_chunk(std::uint64_t blob_id, std::uint32_t index, ChunkBuffer& out) override {
        std::optional<ReadPool::Lease> txn;
        if (int rc = reads_->take(txn); rc != 0) return lmdb_error(rc, "read txn");
        MDB_val v;
        if (auto st = get_chunk(txn->get(), blob_id, index, v); !st) return st;
        // Copy and let go of the snapshot: a slow client must never hold a read transaction.
        return copy_value(v, out.resize(v.mv_size));
    }

    Result<std::optional<SmallRead>> read_small(std::string_view digest, std::uint64_t max_bytes,
                                                const std::function<char*(std::size_t)>& place,
                                                std::string_view linked_to) override {
        std::optional<ReadPool::Lease> txn;
        if (int rc = reads_->take(txn); rc != 0) return lmdb_error(rc, "read txn");
        if (!linked_to.empty()) {
            int rc = find_link(txn->get(), linked_to, digest);
            if (rc == MDB_NOTFOUND) {
                SmallRead unlinked;
                unlinked.linked = false;
                return std::optional<SmallRead>{std::move(unlinked)};
            }
            if (rc != 0) return lmdb_error(rc, "reading repository link");
        }
        auto meta = read_meta(txn->get(), dbi_.meta, digest);
        if (!meta) return meta.error();
        if (!*meta) return std::optional<SmallRead>{};
        SmallRead out{std::move(**meta), false};
        const BlobMeta& m = out.meta;
        if (!detail::small_read_copies(m, max_bytes, chunk_size_)) {
            return std::optional<SmallRead>{std::move(out)};
        }
        if (m.size > 0) {
            MDB_val v;
            if (auto st = get_chunk(txn->get(), m.blob_id, 0, v); !st) return st.error();
            if (v.mv_size != m.size) {
                return detail::short_chunk_error(m.digest);
            }
            if (auto st = copy_value(v, place(v.mv_size)); !st) return st.error();
        }
        out.copied = true;
        return std::optional<SmallRead>{std::move(out)};
    }

    Result<std::unique_ptr<StoreWrite>> begin_write() override {
        TxnPtr txn;
        if (int rc = begin_txn(env_, 0, txn); rc != 0) return lmdb_error(rc, "write txn");
        return lmdb::make_write(std::move(txn), dbi_, page_);
    }

    Result<std::vector<BlobMeta>> list() override {
        std::vector<BlobMeta> out;
        std::string last;
        bool first = true;
        for (;;) {
            TxnPtr txn;
            if (int rc = begin_txn(env_, MDB_RDONLY, txn); rc != 0)
                return lmdb_error(rc, "read txn");
            MDB_cursor* c = nullptr;
            if (int rc = mdb_cursor_open(txn.get(), dbi_.meta, &c); rc != 0) {
                return lmdb_error(rc, "meta cursor");
            }
            CursorPtr cur(c);
            MDB_val k = val(last);
            MDB_val v;
            int rc = first ? mdb_cursor_get(c, &k, &v, MDB_FIRST)
                           : mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
            if (rc == 0 && !first && view(k) == last) rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
            int page = 0;
            while (rc == 0 && page < 1024) {
                BlobMeta m;
                if (detail::decode_meta(view(k), view(v), m)) out.push_back(std::move(m));
                last.assign(view(k));
                ++page;
                rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
            }
            if (rc == MDB_NOTFOUND) break;
            if (rc != 0) return lmdb_error(rc, "listing blobs");
            first = false;
        }
        return out;
    }

    // The proof of the hits read_small does not serve (HEAD, Range): a pooled read transaction.
    Result<bool> is_linked(std::string_view repo, std::string_view digest) override {
        std::optional<ReadPool::Lease> txn;
        if (int rc = reads_->take(txn); rc != 0) return lmdb_error(rc, "read txn");
        int rc = find_link(txn->get(), repo, digest);
        if (rc == MDB_NOTFOUND) return false;
        if (rc != 0) return lmdb_error(rc, "reading repository link");
        return true;
    }

    Result<std::optional<TagRecord>> get_tag(std::string_view key) override {
        std::optional<ReadPool::Lease> txn;
        if (int rc = reads_->take(txn); rc != 0) return lmdb_error(rc, "read txn");
        MDB_val k = val(key);
        MDB_val v;
        int rc = mdb_get(txn->get(), dbi_.tags, &k, &v);
        if (rc == MDB_NOTFOUND) return std::optional<TagRecord>{};
        if (rc != 0) return lmdb_error(rc, "reading tag record");
        TagRecord r;
        if (!detail::decode_tag(view(v), r)) return std::optional<TagRecord>{};  // unreadable
        return std::optional<TagRecord>{std::move(r)};
    }

    Result<StoreUsage> usage() override {
        TxnPtr txn;
        if (int rc = begin_txn(env_, MDB_RDONLY, txn); rc != 0) return lmdb_error(rc, "read txn");
        StoreUsage u;
        u.max_size = max_size_;
        u.chunk_size = chunk_size_;
        u.charged_bytes = read_u64(txn.get(), dbi_.info, "charged", 0);
        for (MDB_dbi d : {dbi_.meta, dbi_.chunks, dbi_.lru, dbi_.links, dbi_.linked_by,
                          dbi_.garbage, dbi_.info, dbi_.tags}) {
            MDB_stat st;
            if (int rc = mdb_stat(txn.get(), d, &st); rc != 0) return lmdb_error(rc, "stat");
            u.used_bytes += (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) * page_;
            if (d == dbi_.meta) u.blobs = st.ms_entries;
            if (d == dbi_.garbage) u.garbage_blobs = st.ms_entries;
        }
        MDB_envinfo info;
        mdb_env_info(env_, &info);
        u.map_bytes = info.me_mapsize;
        struct stat sb;
        if (::stat((path_ + "/data.mdb").c_str(), &sb) == 0)
            u.file_bytes = static_cast<std::uint64_t>(sb.st_size);
        return u;
    }

private:
    // mdb_get of the link of `digest` to `repo`: 0 (linked), MDB_NOTFOUND or an LMDB error.
    int find_link(MDB_txn* txn, std::string_view repo, std::string_view digest) const {
        const detail::LinkKey key(repo, digest);
        MDB_val k = val(key.view());
        MDB_val v;
        return mdb_get(txn, dbi_.links, &k, &v);
    }

    Status get_chunk(MDB_txn* txn, std::uint64_t blob_id, std::uint32_t index, MDB_val& v) {
        const detail::ChunkKey key(blob_id, index);
        MDB_val k = val(key.view());
        if (int rc = mdb_get(txn, dbi_.chunks, &k, &v); rc != 0) {
            return lmdb_error(rc, "reading chunk");
        }
        return {};
    }

    // Copies a value out of the file, not the map (see the note at the top). Call inside the
    // transaction that found it.
    Status copy_value(const MDB_val& v, char* dst) {
        if (dst == nullptr) return make_error(kErrStore, "no memory to read a chunk into");
        const auto* at = static_cast<const char*>(v.mv_data);
        if (at < map_ || at + v.mv_size > map_ + map_len_) {
            return make_error(kErrStore, "chunk outside the map of " + path_);
        }
        auto off = static_cast<off_t>(at - map_);
        std::size_t done = 0;
        while (done < v.mv_size) {
            ssize_t n = ::pread(fd_, dst + done, v.mv_size - done, off + static_cast<off_t>(done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                return make_error(kErrStore, "reading " + path_ + "/data.mdb: " +
                                                 (n == 0 ? std::string("short file")
                                                         : std::string(std::strerror(errno))));
            }
            done += static_cast<std::size_t>(n);
        }
        return {};
    }

    // LMDB does not say where it mapped data.mdb (me_mapaddr is only set for MDB_FIXEDMAP), so
    // find the mapping of that file, offset 0, in /proc/self/maps.
    Status find_map() {
        struct stat sb;
        if (::fstat(fd_, &sb) != 0) return make_error(kErrStore, "cannot stat " + path_);
        std::FILE* maps = std::fopen("/proc/self/maps", "re");
        if (maps == nullptr) return make_error(kErrStore, "cannot read /proc/self/maps");
        char line[4096];
        while (std::fgets(line, sizeof line, maps) != nullptr) {
            unsigned long start = 0;
            unsigned long end = 0;
            unsigned long long offset = 0;
            unsigned dev_major = 0;
            unsigned dev_minor = 0;
            unsigned long long inode = 0;
            char perms[8];
            if (std::sscanf(line, "%lx-%lx %7s %llx %x:%x %llu", &start, &end, perms, &offset,
                            &dev_major, &dev_minor, &inode) != 7) {
                continue;
            }
            if (inode != sb.st_ino || offset != 0 || dev_major != major(sb.st_dev) ||
                dev_minor != minor(sb.st_dev)) {
                continue;
            }
            map_ = reinterpret_cast<const char*>(start);
            map_len_ = end - start;
            break;
        }
        std::fclose(maps);
        if (map_ == nullptr) return make_error(kErrStore, "cannot find LMDB's map of " + path_);
        return {};
    }

    MDB_env* env_ = nullptr;
    std::unique_ptr<ReadPool> reads_;
    Dbis dbi_;
    std::string path_;
    std::uint64_t max_size_ = 0;
    std::uint64_t chunk_size_ = 0;
    std::uint64_t page_ = 4096;
    const char* map_ = nullptr;  // LMDB's map of data.mdb, for the file offset of a value
    std::size_t map_len_ = 0;
    int fd_ = -1;  // LMDB's descriptor of data.mdb
};

}  // namespace

Result<std::unique_ptr<BlobStore>> open_lmdb_store(const StoreOptions& options) {
    auto store = std::make_unique<LmdbStore>();
    if (auto st = store->open(options); !st) return st.error();
    return std::unique_ptr<BlobStore>(std::move(store));
}

}  // namespace drayage::cache
