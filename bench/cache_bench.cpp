// Blob cache throughput against named peers, in one run (numbers vary 25% between runs).
//
//   read: a 1 GiB complete blob streamed out of the LMDB store through a BlobReader into a
//         256 KiB buffer, vs read() of the same bytes from a file in the page cache.
//   fill: the same bytes appended to a CacheFill (sha256 + chunk writes + group commits with
//         MDB_NOMETASYNC fsyncs) until verified complete, vs `sha256sum` of the file.
// For chunk sizes 64 KiB, 256 KiB and 1 MiB (each rounded to whole overflow pages).
//
// usage: cache_bench [DIR] [MiB]    (DIR defaults to /tmp; MiB to 1024)
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "drayage/cache/cache.hpp"

using namespace drayage::cache;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double gbps(std::uint64_t bytes, double secs) {
    return static_cast<double>(bytes) / secs / 1e9;
}

std::uint64_t read_file(const std::string& path, std::string& sink_digest) {
    int fd = ::open(path.c_str(), O_RDONLY);
    std::string buf(256 * 1024, '\0');
    std::uint64_t total = 0;
    unsigned char x = 0;
    for (;;) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n <= 0) break;
        x ^= static_cast<unsigned char>(buf[static_cast<std::size_t>(n) - 1]);
        total += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    sink_digest = std::to_string(x);
    return total;
}

std::string sha256sum(const std::string& path) {
    std::string cmd = "sha256sum " + path;
    FILE* p = ::popen(cmd.c_str(), "r");
    char line[256] = {0};
    if (p == nullptr || std::fgets(line, sizeof line, p) == nullptr) return "";
    ::pclose(p);
    return std::string("sha256:") + std::string(line, 64);
}

void pump_until(event_base* base, const std::function<bool()>& done,
                const std::function<void()>& each) {
    while (!done()) {
        each();
        event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string root = argc > 1 ? argv[1] : "/tmp";
    std::uint64_t mib = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1024;
    const std::uint64_t size = mib * 1024 * 1024;
    fs::path dir = fs::path(root) / ("drayage-cache-bench-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::string file = (dir / "blob").string();
    {
        std::mt19937_64 rng(1);
        std::string buf(1024 * 1024, '\0');
        int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        for (std::uint64_t off = 0; off < size; off += buf.size()) {
            for (std::size_t i = 0; i < buf.size(); i += 8) {
                std::uint64_t v = rng();
                std::memcpy(&buf[i], &v, 8);
            }
            if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) return 1;
        }
        ::close(fd);
    }
    std::string ignore;
    read_file(file, ignore);  // into the page cache

    auto t0 = Clock::now();
    std::string digest = sha256sum(file);
    double sha_secs = seconds_since(t0);
    std::printf("blob: %llu MiB %s\n", static_cast<unsigned long long>(mib), digest.c_str());
    std::printf("%-10s %12s %12s %12s %12s %8s %8s %10s\n", "chunk", "read GB/s", "file GB/s",
                "fill GB/s", "sha256sum", "read/f", "fill/sha", "overhead");

    for (std::uint64_t chunk :
         {std::uint64_t{64 * 1024}, std::uint64_t{256 * 1024}, std::uint64_t{1024 * 1024}}) {
        fs::path cdir = dir / ("cache-" + std::to_string(chunk));
        event_base* base = event_base_new();
        CacheOptions o;
        o.config.path = cdir.string();
        o.config.max_size = size + size / 4;
        o.chunk_size = chunk;
        auto cache = Cache::open(base, o);
        if (!cache) {
            std::fprintf(stderr, "%s\n", cache.error().to_string().c_str());
            return 1;
        }
        // Fill from the file.
        int fd = ::open(file.c_str(), O_RDONLY);
        std::string buf(1024 * 1024, '\0');
        auto h = (*cache)->start_or_join_fill(digest, size);
        if (!h) return 1;
        bool paused = false;
        h->fill->set_resume_callback([&] { paused = false; });
        bool eof = false;
        t0 = Clock::now();
        pump_until(
            base, [&] { return h->fill->done(); },
            [&] {
                while (!paused && !eof) {
                    ssize_t n = ::read(fd, buf.data(), buf.size());
                    if (n <= 0) {
                        eof = true;
                        h->fill->finish();
                        break;
                    }
                    paused =
                        !h->fill->append(std::string_view(buf.data(), static_cast<std::size_t>(n)));
                }
            });
        double fill_secs = seconds_since(t0);
        ::close(fd);
        if (!h->fill->succeeded()) {
            std::fprintf(stderr, "fill failed: %s\n", h->fill->error().to_string().c_str());
            return 1;
        }
        // Read it back through a BlobReader into a 256 KiB buffer.
        std::string out(256 * 1024, '\0');
        t0 = Clock::now();
        auto r = (*cache)->open_reader(digest, 0, std::nullopt);
        std::uint64_t got = 0;
        for (;;) {
            ReadResult rr = (*r)->read(out.size());
            if (rr.kind != ReadResult::Kind::data) break;
            std::memcpy(out.data(), rr.bytes.data(), rr.bytes.size());
            got += rr.bytes.size();
        }
        double read_secs = seconds_since(t0);
        r->reset();
        // The peer, interleaved: read() of the file.
        t0 = Clock::now();
        std::uint64_t fgot = read_file(file, ignore);
        double file_secs = seconds_since(t0);
        auto u = (*cache)->store().usage();
        double overhead = (static_cast<double>(u->used_bytes) - static_cast<double>(size)) /
                          static_cast<double>(size);
        std::printf("%-10llu %12.2f %12.2f %12.2f %12.2f %8.2f %8.2f %9.3f%%\n",
                    static_cast<unsigned long long>((*cache)->store().chunk_size()),
                    gbps(got, read_secs), gbps(fgot, file_secs), gbps(size, fill_secs),
                    gbps(size, sha_secs), file_secs / read_secs, sha_secs / fill_secs,
                    overhead * 100);
        cache->reset();
        event_base_free(base);
        fs::remove_all(cdir);
    }
    fs::remove_all(dir);
    return 0;
}
