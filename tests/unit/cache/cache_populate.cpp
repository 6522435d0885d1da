// Test helper for tests/integration/test_cache_cli.py: fills blobs of the given sizes into the
// LMDB cache at DIR and prints one line per blob: "<digest> <size> <hex of bytes 0..31>".
// With --hold it then keeps the Cache open (as a running server would) until killed.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "drayage/cache/cache.hpp"
#include "support.hpp"

using namespace drayage::cache;
using namespace cachetest;

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: cache_populate DIR MAX_SIZE [--hold] SIZE...\n");
        return 2;
    }
    Base b;
    CacheOptions o;
    o.config.path = argv[1];
    o.config.max_size = std::strtoull(argv[2], nullptr, 10);
    auto cache = Cache::open(b.base, o);
    if (!cache) {
        std::fprintf(stderr, "cache_populate: %s\n", cache.error().to_string().c_str());
        return 1;
    }
    bool hold = false;
    for (int i = 3; i < argc; ++i) {
        if (std::strcmp(argv[i], "--hold") == 0) {
            hold = true;
            continue;
        }
        std::string data =
            random_bytes(std::strtoull(argv[i], nullptr, 10), static_cast<std::uint64_t>(i) * 7919);
        std::string digest = sha256_digest(data);
        auto h = (*cache)->start_or_join_fill(digest, data.size());
        if (!h) return 1;
        Source src(h->fill, data);
        src.attach();
        if (!pump(
                b.base, [&] { return src.finished && h->fill->done(); }, [&] { src.step(); }) ||
            !h->fill->succeeded()) {
            std::fprintf(stderr, "cache_populate: fill failed\n");
            return 1;
        }
        std::string head;
        for (std::size_t j = 0; j < std::min<std::size_t>(32, data.size()); ++j) {
            char hex[3];
            std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned char>(data[j]));
            head += hex;
        }
        std::printf("%s %zu %s\n", digest.c_str(), data.size(), head.c_str());
    }
    bool idle = false;
    (*cache)->when_idle([&] { idle = true; });
    pump(b.base, [&] { return idle; });
    std::printf("ready\n");
    std::fflush(stdout);
    while (hold)
        std::this_thread::sleep_for(std::chrono::seconds(1));
    return 0;
}
