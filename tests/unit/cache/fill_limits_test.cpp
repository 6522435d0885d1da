// A fill whose size the source did not announce, against max_size.
#include <catch2/catch.hpp>
#include <memory>
#include <vector>

#include "cache_fixtures.hpp"

using namespace drayage::cache;
using namespace cachetest;

TEMPLATE_TEST_CASE("a fill without a length stops before it takes the cache over max_size",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    const std::uint64_t max = 4 * 1024 * 1024;
    auto cache = open_cache(b.base, TestType::options(dir, max));
    for (int i = 0; i < 3; ++i) {
        std::string other = random_bytes(1024 * 1024, 40 + static_cast<std::uint64_t>(i));
        REQUIRE(fill_blob(*cache, b.base, other, sha256_digest(other))->succeeded());
    }
    std::string data = random_bytes(6 * 1024 * 1024, 41);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, std::nullopt);
    REQUIRE(h.ok());
    Source src{h->fill, data};
    src.slice = 100'000;
    src.attach();
    std::vector<std::unique_ptr<Sink>> sinks;
    for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{3 * 1024 * 1024}}) {
        auto r = cache->open_reader(digest, off, std::nullopt);
        REQUIRE(r.ok());
        sinks.push_back(std::make_unique<Sink>(std::move(*r)));
        sinks.back()->attach();
    }
    std::uint64_t most = 0;
    REQUIRE(pump(
        b.base,
        [&] {
            for (auto& s : sinks) {
                if (!s->done()) return false;
            }
            return (src.cancelled || src.finished) && h->fill->done();
        },
        [&] {
            src.step();
            for (auto& s : sinks)
                s->step();
            auto u = cache->store().usage();
            REQUIRE(u.ok());
            most = std::max(most, u->charged_bytes);
        }));
    CHECK(h->fill->error().code == kErrTooLarge);
    CHECK(src.sent < data.size());
    CHECK(most <= max);
    // Cut, never ended: a reader never gets a whole-looking blob.
    for (auto& s : sinks) {
        CHECK(s->failed);
        CHECK_FALSE(s->ended);
        CHECK(s->error.code == kErrTooLarge);
    }
    CHECK(data.compare(0, sinks[0]->got.size(), sinks[0]->got) == 0);
    CHECK(sinks[0]->got.size() < data.size());
    sinks.clear();
    wait_idle(*cache, b.base);
    wait_idle(*cache, b.base);
    CHECK(cache->lookup(digest)->presence == Presence::absent);
    auto u = cache->store().usage();
    REQUIRE(u.ok());
    CHECK(u->charged_bytes <= max);
    CHECK(cache->stats().over_limit == 0);

    // Remembered: the next miss is streamed uncached at once, with or without a length, instead
    // of filling (and evicting) up to max_size again.
    CHECK(cache->start_or_join_fill(digest, std::nullopt).error().code == kErrTooLarge);
    CHECK(cache->start_or_join_fill(digest, 1000).error().code == kErrTooLarge);
    // Blobs that fit are still cached without a length.
    std::string fits = random_bytes(2 * 1024 * 1024, 42);
    REQUIRE(fill_blob(*cache, b.base, fits, sha256_digest(fits), false)->succeeded());
    CHECK(read_all(*cache, b.base, sha256_digest(fits)) == fits);
}
