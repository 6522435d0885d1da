// kill -9 at random moments, many times; after each, the cache must be consistent.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "drayage/cache/cache.hpp"
#include "drayage/cache/cli.hpp"
#include "support.hpp"

using namespace drayage::cache;
using namespace cachetest;

namespace {

std::string child_path() {
    if (const char* p = std::getenv("DRAYAGE_CACHE_CRASH_CHILD")) return p;
    return (fs::read_symlink("/proc/self/exe").parent_path() / "cache_crash_child").string();
}

std::string hash_blob(BlobStore& store, const BlobMeta& m) {
    std::string all;
    ChunkBuffer buf;
    const std::uint64_t cs = store.chunk_size();
    for (std::uint64_t i = 0; i * cs < m.size; ++i) {
        if (!store.read_chunk(m.blob_id, static_cast<std::uint32_t>(i), buf).ok())
            return "missing chunk";
        all += buf.view();
    }
    if (all.size() != m.size) return "wrong size";
    return sha256_digest(all);
}

}  // namespace

TEST_CASE("after kill -9 at any moment the cache is consistent", "[cache][crash]") {
    std::string child = child_path();
    REQUIRE(fs::exists(child));
    TempDir dir;
    std::uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937_64 rng(seed);
    std::uint64_t complete_seen = 0;
    std::uint64_t filling_seen = 0;
    for (int round = 0; round < 30; ++round) {
        INFO("round " << round);
        pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            std::string s = std::to_string(rng());
            ::execl(child.c_str(), child.c_str(), dir.path.c_str(), s.c_str(),
                    static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::usleep(static_cast<useconds_t>(50'000 + rng() % 400'000));
        ::kill(pid, SIGKILL);
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        REQUIRE(WIFSIGNALED(status));  // it was still running: it did not fail on its own

        {
            // As the crash left it: every complete blob hashes to its digest.
            auto store = open_lmdb_store({dir.path.string(), 6 * 1024 * 1024, 64 * 1024});
            REQUIRE(store.ok());
            auto all = (*store)->list();
            REQUIRE(all.ok());
            for (const BlobMeta& m : *all) {
                if (m.state == BlobState::filling) {
                    ++filling_seen;
                    continue;
                }
                ++complete_seen;
                CHECK(hash_blob(**store, m) == m.digest);
            }
        }
        {
            // A restart sweeps partial fills.
            Base b;
            CacheOptions o;
            o.config.path = dir.path.string();
            o.config.max_size = 6 * 1024 * 1024;
            auto cache = Cache::open(b.base, o);
            REQUIRE(cache.ok());
            auto all = (*cache)->store().list();
            REQUIRE(all.ok());
            for (const BlobMeta& m : *all)
                CHECK(m.state == BlobState::complete);
        }
    }
    CHECK(complete_seen > 0);
    std::printf("crash test: 30 kills, %llu complete blobs rehashed, %llu partial fills swept\n",
                static_cast<unsigned long long>(complete_seen),
                static_cast<unsigned long long>(filling_seen));
    drayage::config::CacheConfig cfg;
    cfg.path = dir.path.string();
    cfg.max_size = 6 * 1024 * 1024;
    CHECK(run_cache_command({"verify"}, cfg) == 0);
}
