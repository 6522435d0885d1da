// Internals shared by the LMDB store's two halves: lmdb_store.cpp (the environment, reads) and
// lmdb_write.cpp (write transactions). See lmdb_store.cpp for the environment's flags and why.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/cache/blob_store.hpp"

namespace drayage::cache::lmdb {

// kErrMapFull for MDB_MAP_FULL, kErrNotFound for MDB_NOTFOUND, kErrStore otherwise; the message
// names `what` and LMDB's text.
Error lmdb_error(int rc, const std::string& what);

inline MDB_val val(std::string_view s) {
    return MDB_val{s.size(), const_cast<char*>(s.data())};
}

inline std::string_view view(const MDB_val& v) {
    return {static_cast<const char*>(v.mv_data), v.mv_size};
}

struct TxnDeleter {
    void operator()(MDB_txn* t) const {
        if (t != nullptr) mdb_txn_abort(t);
    }
};
using TxnPtr = std::unique_ptr<MDB_txn, TxnDeleter>;

struct CursorDeleter {
    void operator()(MDB_cursor* c) const {
        if (c != nullptr) mdb_cursor_close(c);
    }
};
using CursorPtr = std::unique_ptr<MDB_cursor, CursorDeleter>;

// The named databases (blob_store.hpp describes each).
struct Dbis {
    MDB_dbi meta = 0, chunks = 0, lru = 0, links = 0, linked_by = 0, garbage = 0, info = 0,
            tags = 0;
};

// mdb_txn_begin, adopting a map another process grew (MDB_MAP_RESIZED). 0 and `out` set, or the
// LMDB error.
int begin_txn(MDB_env* env, unsigned flags, TxnPtr& out);

// The meta record of `digest`; nullopt when absent. A record that does not decode is kErrStore.
Result<std::optional<BlobMeta>> read_meta(MDB_txn* txn, MDB_dbi dbi, std::string_view digest);

// The counters in the `info` database ("charged", "next_id", "chunk_size").
std::uint64_t read_u64(MDB_txn* txn, MDB_dbi info, const char* name, std::uint64_t dflt);
int write_u64(MDB_txn* txn, MDB_dbi info, const char* name, std::uint64_t value);

// Fills `linked_by` from `links` when it is empty and `links` is not: a store written before
// the index existed. One pass in the opening transaction.
int index_links(MDB_txn* txn, const Dbis& dbis);

// One write transaction over `txn` (lmdb_write.cpp); `page` is the environment's page size, which
// chunk charges are counted in.
std::unique_ptr<StoreWrite> make_write(TxnPtr txn, const Dbis& dbis, std::uint64_t page);

}  // namespace drayage::cache::lmdb
