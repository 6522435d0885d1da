// The cache directory's two guards: the lock that gives one server the cache, and the shutdown
// marker that decides whether the LMDB file can be trusted after a stop.
//
// The store commits with MDB_NOSYNC (see lmdb_store.cpp): a commit reaches the page cache, not the
// disk. A killed process loses nothing (the kernel still has every page), but an OS crash or
// power cut may leave a torn file. So while a server has the cache open, `drayage.state` says
// `dirty <boot id>`; a clean stop syncs the file and then writes `clean`. At the next open a
// `dirty` marker from another boot means the machine went down under a running server, and the
// cache is discarded and refilled: it is only a cache, and it must never serve torn bytes.
#pragma once

#include <string>

#include "drayage/cache/blob_store.hpp"
#include "drayage/util/result.hpp"

namespace drayage::cache {

inline constexpr const char* kErrBusy = "cache.busy";

// This boot's id (/proc/sys/kernel/random/boot_id); empty when it cannot be read.
std::string current_boot_id();

// The lock on <dir>/drayage.lock (flock, non-blocking). kErrBusy when another process holds it.
class DirLock {
public:
    static Result<DirLock> acquire(const std::string& dir);
    DirLock(DirLock&& other) noexcept;
    DirLock& operator=(DirLock&& other) noexcept;
    DirLock(const DirLock&) = delete;
    DirLock& operator=(const DirLock&) = delete;
    ~DirLock();

private:
    explicit DirLock(int fd) : fd_(fd) {}
    int fd_ = -1;
};

enum class Shutdown {
    clean,        // marker says clean, or no marker and no cache yet
    killed,       // dirty, this boot: the process died, the page cache has everything
    system_down,  // dirty, another (or an unknown) boot: unsynced writes may be lost
};

// Reads <dir>/drayage.state. A cache file without a marker (made by an older drayage, which
// synced every commit) counts as clean.
Shutdown last_shutdown(const std::string& dir);

// Writes the marker durably (temp file, fsync, rename, fsync of the directory).
Status mark_dirty(const std::string& dir);
Status mark_clean(const std::string& dir);

// Removes the LMDB files (data.mdb, lock.mdb) of a cache that cannot be trusted.
Status discard_store_files(const std::string& dir);

}  // namespace drayage::cache
