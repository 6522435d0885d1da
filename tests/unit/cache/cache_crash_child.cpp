// Crash-test helper: fills (some corrupt, some failing mid-stream), reads and evicts in a loop
// against the LMDB cache in argv[1], forever, until the test kills it with SIGKILL.
#include <cstdio>
#include <cstdlib>
#include <random>

#include "drayage/cache/cache.hpp"
#include "support.hpp"

using namespace drayage::cache;
using namespace cachetest;

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: cache_crash_child DIR SEED\n");
        return 2;
    }
    std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
    std::mt19937_64 rng(seed);
    Base b;
    CacheOptions o;
    o.config.path = argv[1];
    o.config.max_size = 6 * 1024 * 1024;  // small: eviction runs all the time
    o.chunk_size = 64 * 1024;
    o.touch_interval = std::chrono::seconds(0);
    auto opened = Cache::open(b.base, o);
    if (!opened) {
        std::fprintf(stderr, "cache_crash_child: %s\n", opened.error().to_string().c_str());
        return 1;
    }
    Cache& cache = **opened;
    std::vector<std::string> filled;
    for (std::uint64_t n = 0;; ++n) {
        std::string data = random_bytes(rng() % (1536 * 1024), rng());
        std::string digest = sha256_digest(data);
        int kind = static_cast<int>(rng() % 10);
        if (kind == 0 && !data.empty()) data[rng() % data.size()] ^= 0x5a;  // digest mismatch
        auto h = cache.start_or_join_fill(
            digest, rng() % 2 ? std::optional<std::uint64_t>(data.size()) : std::nullopt);
        if (!h) continue;
        Source src{h->fill, data};
        src.slice = 1 + rng() % 200'000;
        if (kind == 1) src.fail_at = data.size() / 2;
        src.attach();
        std::vector<std::unique_ptr<Sink>> sinks;
        for (int i = 0; i < 2; ++i) {
            auto r =
                cache.open_reader(digest, data.empty() ? 0 : rng() % data.size(), std::nullopt);
            if (r) {
                sinks.push_back(std::make_unique<Sink>(std::move(*r)));
                sinks.back()->per_step = 1 + rng() % 300'000;
                sinks.back()->attach();
            }
        }
        pump(
            b.base, [&] { return src.finished && h->fill->done(); },
            [&] {
                src.step();
                for (auto& s : sinks)
                    s->step();
            });
        if (h->fill->succeeded()) filled.push_back(digest);
        sinks.clear();
        if (n % 4 == 3 && !filled.empty()) cache.evict(filled[rng() % filled.size()]);
        // Hit the complete path too.
        if (!filled.empty()) {
            auto r = cache.open_reader(filled[rng() % filled.size()], 0, std::nullopt);
            if (r) {
                Sink s{std::move(*r)};
                s.step();
            }
        }
    }
}
