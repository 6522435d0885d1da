// The cache directory's lock and shutdown marker. See cache_dir.hpp.
#include "cache_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace drayage::cache {

namespace {

constexpr const char* kMarker = "drayage.state";

Error sys_error(const std::string& what) {
    return make_error(kErrStore, what + ": " + std::strerror(errno));
}

std::string read_first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ' || line.back() == '\r'))
        line.pop_back();
    return line;
}

Status write_marker(const std::string& dir, const std::string& text) {
    const std::string tmp = dir + "/" + kMarker + ".tmp";
    const std::string final_path = dir + "/" + kMarker;
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return sys_error("cannot write " + tmp);
    const std::string line = text + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
              ::fsync(fd) == 0;
    int saved = errno;
    ::close(fd);
    errno = saved;
    if (!ok) return sys_error("cannot write " + tmp);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) return sys_error("cannot rename " + tmp);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return sys_error("cannot open " + dir);
    ok = ::fsync(dfd) == 0;
    saved = errno;
    ::close(dfd);
    errno = saved;
    if (!ok) return sys_error("cannot sync " + dir);
    return {};
}

}  // namespace

std::string current_boot_id() {
    return read_first_line("/proc/sys/kernel/random/boot_id");
}

Result<DirLock> DirLock::acquire(const std::string& dir) {
    const std::string path = dir + "/drayage.lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return sys_error("cannot open " + path);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd);
        return make_error(kErrBusy, "cache " + dir + " is in use by another drayage server (" +
                                        path + " is locked); give each server its own cache.path");
    }
    return DirLock(fd);
}

DirLock::DirLock(DirLock&& other) noexcept : fd_(other.fd_) {
    other.fd_ = -1;
}

DirLock& DirLock::operator=(DirLock&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = other.fd_;
        other.fd_ = -1;
    }
    return *this;
}

DirLock::~DirLock() {
    if (fd_ >= 0) ::close(fd_);
}

Shutdown last_shutdown(const std::string& dir) {
    std::error_code ec;
    if (!std::filesystem::exists(dir + "/" + kMarker, ec)) return Shutdown::clean;
    std::istringstream line(read_first_line(dir + "/" + kMarker));
    std::string state;
    std::string boot;
    line >> state >> boot;
    if (state == "clean") return Shutdown::clean;
    const std::string now = current_boot_id();
    if (state == "dirty" && !boot.empty() && boot == now) return Shutdown::killed;
    return Shutdown::system_down;  // another boot, or a marker we cannot read: trust nothing
}

Status mark_dirty(const std::string& dir) {
    const std::string boot = current_boot_id();
    return write_marker(dir, "dirty " + (boot.empty() ? std::string("unknown") : boot));
}

Status mark_clean(const std::string& dir) {
    return write_marker(dir, "clean");
}

Status discard_store_files(const std::string& dir) {
    for (const char* name : {"data.mdb", "lock.mdb"}) {
        const std::string path = dir + "/" + name;
        if (::unlink(path.c_str()) != 0 && errno != ENOENT)
            return sys_error("cannot remove " + path);
    }
    return {};
}

}  // namespace drayage::cache
