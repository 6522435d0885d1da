// Cache fixtures for the Catch2 cache tests: both stores, and helpers that fill and read a
// blob on a loop.
#pragma once

#include <catch2/catch.hpp>

#include "support.hpp"

namespace cachetest {

using namespace drayage::cache;

inline constexpr std::uint64_t kChunk = 64 * 1024;  // small chunks: many chunk boundaries per test

struct LmdbCache {
    static CacheOptions options(const TempDir& dir, std::uint64_t max_size) {
        CacheOptions o;
        o.config.path = dir.path.string();
        o.config.max_size = max_size;
        o.chunk_size = kChunk;
        return o;
    }
};
struct MemoryCache {
    static CacheOptions options(const TempDir& dir, std::uint64_t max_size) {
        CacheOptions o;
        o.config.path = dir.path.string();
        o.config.max_size = max_size;
        o.chunk_size = kChunk;
        o.store_factory = [max_size] { return make_memory_store({"", max_size, kChunk}); };
        return o;
    }
};

inline std::unique_ptr<Cache> open_cache(event_base* base, CacheOptions o) {
    auto c = Cache::open(base, std::move(o));
    if (!c) FAIL(c.error().to_string());
    return std::move(*c);
}

// Fills `data` under `digest` and waits for the outcome.
inline std::shared_ptr<CacheFill> fill_blob(Cache& cache, event_base* base, const std::string& data,
                                            const std::string& digest, bool known_size = true) {
    auto h = cache.start_or_join_fill(
        digest, known_size ? std::optional<std::uint64_t>(data.size()) : std::nullopt);
    REQUIRE(h.ok());
    REQUIRE(h->started);
    Source src{h->fill, data};
    src.slice = 100'000;
    src.attach();
    REQUIRE(pump(
        base, [&] { return (src.finished || src.cancelled) && h->fill->done(); },
        [&] { src.step(); }));
    return h->fill;
}

inline std::string read_all(Cache& cache, event_base* base, const std::string& digest,
                            std::uint64_t off = 0,
                            std::optional<std::uint64_t> len = std::nullopt) {
    auto r = cache.open_reader(digest, off, len);
    REQUIRE(r.ok());
    Sink s{std::move(*r)};
    s.attach();
    REQUIRE(pump(
        base, [&] { return s.done(); }, [&] { s.step(); }));
    REQUIRE(s.ended);
    return s.got;
}

inline void wait_idle(Cache& cache, event_base* base) {
    bool idle = false;
    cache.when_idle([&] { idle = true; });
    REQUIRE(pump(base, [&] { return idle; }));
}

}  // namespace cachetest
