// The LMDB store's write transactions (StoreWrite), and the helpers both halves of the store use
// (lmdb_common.hpp). See blob_store.hpp for the data model and the charge accounting.
#include <lmdb.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "lmdb_common.hpp"
#include "store_common.hpp"

namespace drayage::cache::lmdb {

using detail::chunk_key;
using detail::link_key;
using detail::lru_key;

Error lmdb_error(int rc, const std::string& what) {
    const char* code = rc == MDB_MAP_FULL   ? kErrMapFull
                       : rc == MDB_NOTFOUND ? kErrNotFound
                                            : kErrStore;
    return make_error(code, what + ": " + mdb_strerror(rc));
}

int begin_txn(MDB_env* env, unsigned flags, TxnPtr& out) {
    MDB_txn* t = nullptr;
    int rc = mdb_txn_begin(env, nullptr, flags, &t);
    if (rc == MDB_MAP_RESIZED) {
        // Another process grew the map: adopt its size and retry.
        mdb_env_set_mapsize(env, 0);
        rc = mdb_txn_begin(env, nullptr, flags, &t);
    }
    if (rc == 0) out.reset(t);
    return rc;
}

Result<std::optional<BlobMeta>> read_meta(MDB_txn* txn, MDB_dbi dbi, std::string_view digest) {
    MDB_val k = val(digest);
    MDB_val v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return std::optional<BlobMeta>{};
    if (rc != 0) return lmdb_error(rc, "reading blob meta");
    BlobMeta m;
    if (!detail::decode_meta(digest, view(v), m)) {
        return make_error(kErrStore, "corrupt meta record for " + std::string(digest));
    }
    return std::optional<BlobMeta>{std::move(m)};
}

std::uint64_t read_u64(MDB_txn* txn, MDB_dbi info, const char* name, std::uint64_t dflt) {
    MDB_val k = val(name);
    MDB_val v;
    if (mdb_get(txn, info, &k, &v) != 0 || v.mv_size != 8) return dflt;
    std::uint64_t out = 0;
    std::memcpy(&out, v.mv_data, 8);
    return out;
}

int write_u64(MDB_txn* txn, MDB_dbi info, const char* name, std::uint64_t value) {
    MDB_val k = val(name);
    MDB_val v{8, &value};
    return mdb_put(txn, info, &k, &v, 0);
}

namespace {

class LmdbWrite final : public StoreWrite {
public:
    LmdbWrite(TxnPtr txn, const Dbis& dbis, std::uint64_t page)
        : txn_(std::move(txn)), dbi_(dbis), page_(page) {
        charged_ = read_u64(txn_.get(), dbi_.info, "charged", 0);
        next_id_ = read_u64(txn_.get(), dbi_.info, "next_id", 1);
    }

    Result<std::optional<BlobMeta>> get_meta(std::string_view digest) override {
        return read_meta(txn_.get(), dbi_.meta, digest);
    }

    Status put_meta(const BlobMeta& meta) override {
        auto old = get_meta(meta.digest);
        if (!old) return old.error();
        if (*old) {
            std::string ok = lru_key((*old)->last_access, meta.digest);
            MDB_val k = val(ok);
            int rc = mdb_del(txn_.get(), dbi_.lru, &k, nullptr);
            if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "updating LRU index");
        } else {
            charged_ += kMetaCharge;
        }
        std::string enc = detail::encode_meta(meta);
        MDB_val k = val(meta.digest);
        MDB_val v = val(enc);
        if (int rc = mdb_put(txn_.get(), dbi_.meta, &k, &v, 0); rc != 0) {
            return lmdb_error(rc, "writing blob meta");
        }
        std::string lk = lru_key(meta.last_access, meta.digest);
        MDB_val lkv = val(lk);
        MDB_val empty{0, nullptr};
        if (int rc = mdb_put(txn_.get(), dbi_.lru, &lkv, &empty, 0); rc != 0) {
            return lmdb_error(rc, "writing LRU index");
        }
        return {};
    }

    Result<std::uint64_t> new_blob_id() override { return next_id_++; }

    Status put_chunk(std::uint64_t blob_id, std::uint32_t index, std::string_view bytes) override {
        std::string key = chunk_key(blob_id, index);
        MDB_val k = val(key);
        MDB_val v = val(bytes);
        if (int rc = mdb_put(txn_.get(), dbi_.chunks, &k, &v, 0); rc != 0) {
            return lmdb_error(rc, "writing chunk");
        }
        charged_ += detail::chunk_charge(bytes.size(), page_);
        return {};
    }

    Result<bool> drop_blob(std::string_view digest) override {
        auto old = get_meta(digest);
        if (!old) return old.error();
        if (!*old) return false;
        MDB_val k = val(digest);
        if (int rc = mdb_del(txn_.get(), dbi_.meta, &k, nullptr); rc != 0) {
            return lmdb_error(rc, "dropping blob meta");
        }
        std::string lk = lru_key((*old)->last_access, digest);
        MDB_val lkv = val(lk);
        int rc = mdb_del(txn_.get(), dbi_.lru, &lkv, nullptr);
        if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "dropping LRU entry");
        std::string gk;
        detail::put_be64(gk, (*old)->blob_id);
        MDB_val gkv = val(gk);
        MDB_val empty{0, nullptr};
        if (rc = mdb_put(txn_.get(), dbi_.garbage, &gkv, &empty, 0); rc != 0) {
            return lmdb_error(rc, "queueing chunks for deletion");
        }
        charged_ = charged_ >= kMetaCharge ? charged_ - kMetaCharge : 0;
        return true;
    }

    Result<std::uint64_t> collect_garbage(std::uint64_t max_chunks) override {
        std::uint64_t deleted = 0;
        while (deleted < max_chunks) {
            MDB_cursor* gc = nullptr;
            if (int rc = mdb_cursor_open(txn_.get(), dbi_.garbage, &gc); rc != 0) {
                return lmdb_error(rc, "opening garbage cursor");
            }
            CursorPtr gcur(gc);
            MDB_val gk;
            MDB_val gv;
            int rc = mdb_cursor_get(gc, &gk, &gv, MDB_FIRST);
            if (rc == MDB_NOTFOUND) break;
            if (rc != 0) return lmdb_error(rc, "reading garbage");
            std::string garbage_key(view(gk));
            std::uint64_t blob_id =
                detail::get_be64(reinterpret_cast<const unsigned char*>(garbage_key.data()));
            MDB_cursor* cc = nullptr;
            if (rc = mdb_cursor_open(txn_.get(), dbi_.chunks, &cc); rc != 0) {
                return lmdb_error(rc, "opening chunk cursor");
            }
            CursorPtr ccur(cc);
            std::string start = chunk_key(blob_id, 0);
            bool exhausted = true;
            while (deleted < max_chunks) {
                MDB_val k = val(start);
                MDB_val v;
                rc = mdb_cursor_get(cc, &k, &v, MDB_SET_RANGE);
                if (rc == MDB_NOTFOUND) break;
                if (rc != 0) return lmdb_error(rc, "reading chunk");
                if (k.mv_size != 12 ||
                    detail::get_be64(static_cast<const unsigned char*>(k.mv_data)) != blob_id) {
                    break;
                }
                std::uint64_t len = v.mv_size;
                if (rc = mdb_cursor_del(cc, 0); rc != 0) return lmdb_error(rc, "deleting chunk");
                std::uint64_t c = detail::chunk_charge(len, page_);
                charged_ = charged_ >= c ? charged_ - c : 0;
                ++deleted;
                if (deleted == max_chunks) exhausted = false;
            }
            if (!exhausted) break;
            MDB_val dk = val(garbage_key);
            if (rc = mdb_del(txn_.get(), dbi_.garbage, &dk, nullptr); rc != 0) {
                return lmdb_error(rc, "clearing garbage entry");
            }
        }
        return deleted;
    }

    Result<bool> has_garbage() override {
        MDB_stat st;
        if (int rc = mdb_stat(txn_.get(), dbi_.garbage, &st); rc != 0) {
            return lmdb_error(rc, "stat garbage");
        }
        return st.ms_entries > 0;
    }

    Result<std::vector<BlobMeta>> oldest(std::size_t skip, std::size_t n) override {
        std::vector<BlobMeta> out;
        MDB_cursor* c = nullptr;
        if (int rc = mdb_cursor_open(txn_.get(), dbi_.lru, &c); rc != 0) {
            return lmdb_error(rc, "opening LRU cursor");
        }
        CursorPtr cur(c);
        MDB_val k;
        MDB_val v;
        int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        std::size_t seen = 0;
        while (rc == 0 && out.size() < n) {
            if (seen++ >= skip && k.mv_size > 8) {
                std::string digest(view(k).substr(8));
                auto m = get_meta(digest);
                if (!m) return m.error();
                if (*m) out.push_back(std::move(**m));
            }
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "walking LRU index");
        return out;
    }

    // Both directions in this transaction, so `linked_by` never disagrees with `links`.
    Status link(std::string_view repo, std::string_view digest) override {
        std::string key = link_key(repo, digest);
        std::string by_digest = link_key(digest, repo);
        MDB_val k = val(key);
        MDB_val b = val(by_digest);
        MDB_val empty{0, nullptr};
        if (int rc = mdb_put(txn_.get(), dbi_.links, &k, &empty, 0); rc != 0) {
            return lmdb_error(rc, "writing repository link");
        }
        if (int rc = mdb_put(txn_.get(), dbi_.linked_by, &b, &empty, 0); rc != 0) {
            return lmdb_error(rc, "writing repository link index");
        }
        return {};
    }

    Result<bool> unlink(std::string_view repo, std::string_view digest) override {
        std::string key = link_key(repo, digest);
        std::string by_digest = link_key(digest, repo);
        MDB_val k = val(key);
        MDB_val b = val(by_digest);
        int rc = mdb_del(txn_.get(), dbi_.links, &k, nullptr);
        if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "dropping repository link");
        int rb = mdb_del(txn_.get(), dbi_.linked_by, &b, nullptr);
        if (rb != 0 && rb != MDB_NOTFOUND) return lmdb_error(rb, "dropping repository link index");
        return rc == 0;
    }

    Result<bool> has_links(std::string_view digest) override {
        std::string prefix(digest);
        prefix.push_back('\0');
        MDB_cursor* c = nullptr;
        if (int rc = mdb_cursor_open(txn_.get(), dbi_.linked_by, &c); rc != 0) {
            return lmdb_error(rc, "opening link index cursor");
        }
        CursorPtr cur(c);
        MDB_val k = val(prefix);
        MDB_val v;
        int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) return false;
        if (rc != 0) return lmdb_error(rc, "reading link index");
        return view(k).substr(0, prefix.size()) == prefix;
    }

    Result<std::uint64_t> drop_tags_naming(std::string_view repo,
                                           std::string_view digest) override {
        std::string prefix(repo);
        prefix.push_back(':');  // not in a repository name: only this repository's tags
        MDB_cursor* c = nullptr;
        if (int rc = mdb_cursor_open(txn_.get(), dbi_.tags, &c); rc != 0) {
            return lmdb_error(rc, "walking tag records");
        }
        CursorPtr cur(c);
        std::uint64_t dropped = 0;
        MDB_val k = val(prefix);
        MDB_val v;
        int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && view(k).substr(0, prefix.size()) == prefix) {
            TagRecord r;
            if (detail::decode_tag(view(v), r) && r.digest == digest) {
                if (int d = mdb_cursor_del(c, 0); d != 0) return lmdb_error(d, "dropping tag");
                ++dropped;
            }
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "walking tag records");
        return dropped;
    }

    Status put_tag(std::string_view key, const TagRecord& record) override {
        std::string value = detail::encode_tag(record);
        MDB_val k = val(key);
        MDB_val v = val(value);
        if (int rc = mdb_put(txn_.get(), dbi_.tags, &k, &v, 0); rc != 0) {
            return lmdb_error(rc, "writing tag record");
        }
        return {};
    }

    Status drop_tag(std::string_view key) override {
        MDB_val k = val(key);
        int rc = mdb_del(txn_.get(), dbi_.tags, &k, nullptr);
        if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(rc, "dropping tag record");
        return {};
    }

    Result<std::uint64_t> drop_tags_checked_before(std::int64_t before) override {
        MDB_cursor* c = nullptr;
        if (int rc = mdb_cursor_open(txn_.get(), dbi_.tags, &c); rc != 0) {
            return lmdb_error(rc, "walking tag records");
        }
        CursorPtr cur(c);
        std::uint64_t dropped = 0;
        MDB_val k, v;
        int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        while (rc == 0) {
            TagRecord r;
            if (!detail::decode_tag(view(v), r) || r.checked < before) {
                if (int d = mdb_cursor_del(c, 0); d != 0) return lmdb_error(d, "dropping tag");
                ++dropped;
            }
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        if (rc != MDB_NOTFOUND) return lmdb_error(rc, "walking tag records");
        return dropped;
    }

    std::uint64_t charged_bytes() const override { return charged_; }

    Status commit() override {
        if (int rc = write_u64(txn_.get(), dbi_.info, "charged", charged_); rc != 0) {
            return lmdb_error(rc, "writing cache size");
        }
        if (int rc = write_u64(txn_.get(), dbi_.info, "next_id", next_id_); rc != 0) {
            return lmdb_error(rc, "writing blob id counter");
        }
        int rc = mdb_txn_commit(txn_.release());  // frees the handle on failure too
        if (rc != 0) return lmdb_error(rc, "committing");
        return {};
    }

private:
    TxnPtr txn_;
    Dbis dbi_;
    std::uint64_t page_;
    std::uint64_t charged_ = 0;
    std::uint64_t next_id_ = 1;
};

}  // namespace

int index_links(MDB_txn* txn, const Dbis& dbis) {
    MDB_stat by;
    MDB_stat links;
    if (int rc = mdb_stat(txn, dbis.linked_by, &by); rc != 0) return rc;
    if (int rc = mdb_stat(txn, dbis.links, &links); rc != 0) return rc;
    if (by.ms_entries > 0 || links.ms_entries == 0) return 0;
    MDB_cursor* c = nullptr;
    if (int rc = mdb_cursor_open(txn, dbis.links, &c); rc != 0) return rc;
    CursorPtr cur(c);
    MDB_val k;
    MDB_val v;
    MDB_val empty{0, nullptr};
    int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        std::string_view key = view(k);
        std::size_t z = key.find('\0');
        if (z == std::string_view::npos) continue;
        std::string by_digest = link_key(key.substr(z + 1), key.substr(0, z));
        MDB_val b = val(by_digest);
        if (int p = mdb_put(txn, dbis.linked_by, &b, &empty, 0); p != 0) return p;
    }
    return rc == MDB_NOTFOUND ? 0 : rc;
}

std::unique_ptr<StoreWrite> make_write(TxnPtr txn, const Dbis& dbis, std::uint64_t page) {
    return std::make_unique<LmdbWrite>(std::move(txn), dbis, page);
}

}  // namespace drayage::cache::lmdb
