// Cache, CacheFill and BlobReader against both stores, on a real libevent loop and writer thread.
#include "drayage/cache/cache.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "cache_fixtures.hpp"

using namespace drayage::cache;
using namespace cachetest;
using drayage::make_error;
using drayage::Status;
using K = ReadResult::Kind;

TEMPLATE_TEST_CASE("a filled blob is served whole and by range", "[cache]", LmdbCache,
                   MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 256 * 1024 * 1024));
    for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, kChunk - 17, kChunk - 16,
                               kChunk - 15, std::uint64_t{3 * 1024 * 1024 + 5}}) {
        DYNAMIC_SECTION("size " << size) {
            std::string data = random_bytes(size, size + 11);
            std::string digest = sha256_digest(data);
            auto f = fill_blob(*cache, b.base, data, digest, size % 2 == 0);
            REQUIRE(f->succeeded());
            auto l = cache->lookup(digest);
            REQUIRE(l.ok());
            CHECK(l->presence == Presence::complete);
            CHECK(l->size == size);
            CHECK(read_all(*cache, b.base, digest) == data);
            if (size > 10) {
                CHECK(read_all(*cache, b.base, digest, 3, size - 5) == data.substr(3, size - 5));
                CHECK(read_all(*cache, b.base, digest, size / 2, std::nullopt) ==
                      data.substr(size / 2));
            }
            CHECK(cache->open_reader(digest, size + 1, std::nullopt).error().code == kErrRange);
        }
    }
    CHECK(cache->open_reader(sha256_digest("absent"), 0, std::nullopt).error().code ==
          kErrNotFound);
}

// The front answers a Range with one reader: opened on the whole blob to learn its size, then
// narrowed to the range (BlobReader::narrow), on a complete blob and on a running fill.
TEMPLATE_TEST_CASE("a whole-blob reader narrowed to a range serves only that range", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    const std::uint64_t size = 3 * kChunk + 77;
    std::string data = random_bytes(size, 9);
    std::string digest = sha256_digest(data);
    auto drain = [&](std::unique_ptr<BlobReader> reader) {
        Sink s{std::move(reader)};
        s.attach();
        REQUIRE(pump(
            b.base, [&] { return s.done(); }, [&] { s.step(); }));
        REQUIRE(s.ended);
        return s.got;
    };

    auto h = cache->start_or_join_fill(digest, size);
    REQUIRE(h.ok());
    auto joined = cache->open_reader(digest, 0, std::nullopt);
    REQUIRE(joined.ok());
    CHECK((*joined)->blob_size() == size);
    (*joined)->narrow(kChunk - 5, 10);
    CHECK((*joined)->end() == kChunk + 5);
    Sink sink{std::move(*joined)};
    sink.attach();
    Source src{h->fill, data};
    src.slice = 100'000;
    src.attach();
    REQUIRE(pump(
        b.base, [&] { return sink.done() && h->fill->done(); },
        [&] {
            src.step();
            sink.step();
        }));
    REQUIRE(h->fill->succeeded());
    CHECK(sink.ended);
    CHECK(sink.got == data.substr(kChunk - 5, 10));
    CHECK(cache->stats().joins == 1);

    const std::uint64_t hits = cache->stats().hits;
    auto whole = cache->open_reader(digest, 0, std::nullopt);
    REQUIRE(whole.ok());
    (*whole)->narrow(size - 3, 3);
    CHECK(drain(std::move(*whole)) == data.substr(size - 3));
    auto other_thread = cache->open_complete_reader(digest, 0, std::nullopt);
    REQUIRE(other_thread.ok());
    (*other_thread)->narrow(2 * kChunk, kChunk);
    CHECK(drain(std::move(*other_thread)) == data.substr(2 * kChunk, kChunk));
    CHECK(cache->stats().hits - hits == 2);
}

TEMPLATE_TEST_CASE("many readers at their own offsets and speeds share one fill", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 256 * 1024 * 1024));
    const std::size_t size = 4 * 1024 * 1024 + 333;
    std::string data = random_bytes(size, 42);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, std::nullopt);
    REQUIRE(h.ok());
    REQUIRE(h->started);
    auto joined = cache->start_or_join_fill(digest, std::nullopt);
    REQUIRE(joined.ok());
    CHECK_FALSE(joined->started);
    CHECK(joined->fill == h->fill);
    CHECK(cache->lookup(digest)->presence == Presence::filling);

    Source src{h->fill, data};
    src.slice = 50'000;
    src.attach();
    struct Want {
        std::uint64_t off;
        std::optional<std::uint64_t> len;
        std::size_t pace;
        std::size_t join_after;  // bytes the source has sent before this reader joins
    };
    std::vector<Want> wants = {
        {0, std::nullopt, 1 << 20, 0},                // fast, from the start
        {0, std::nullopt, 1000, 0},                   // slow, from the start
        {12345, std::nullopt, 70'000, 0},             // mid-chunk offset
        {size - 10, std::nullopt, 3, 0},              // range far ahead of the fill
        {3 * 1024 * 1024, 100'000, 8192, 0},          // bounded range ahead of the fill
        {0, std::nullopt, 300'000, 2 * 1024 * 1024},  // late joiner: catches up from the store
        {kChunk, kChunk, 1, 1024 * 1024},  // exactly one chunk, one byte at a time... at first
    };
    std::vector<std::unique_ptr<Sink>> sinks(wants.size());
    REQUIRE(pump(
        b.base,
        [&] {
            for (auto& s : sinks) {
                if (!s || !s->done()) return false;
            }
            return true;
        },
        [&] {
            src.step();
            for (std::size_t i = 0; i < wants.size(); ++i) {
                if (!sinks[i] && src.sent >= wants[i].join_after) {
                    auto r = cache->open_reader(digest, wants[i].off, wants[i].len);
                    REQUIRE(r.ok());
                    sinks[i] = std::make_unique<Sink>(std::move(*r));
                    sinks[i]->per_step = wants[i].pace;
                    sinks[i]->attach();
                }
                if (sinks[i]) {
                    sinks[i]->step();
                    if (wants[i].pace == 1 && sinks[i]->got.size() > 100) sinks[i]->per_step = 4096;
                }
            }
        }));
    REQUIRE(h->fill->succeeded());
    for (std::size_t i = 0; i < wants.size(); ++i) {
        INFO("reader " << i);
        REQUIRE(sinks[i]->ended);
        std::uint64_t len = wants[i].len ? *wants[i].len : size - wants[i].off;
        CHECK(sinks[i]->got == data.substr(wants[i].off, len));
    }
    CHECK(cache->stats().joins == wants.size());
    CHECK(cache->stats().fills_completed == 1);
}

TEMPLATE_TEST_CASE("a joined reader gets its last byte only after the digest verified", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string data = random_bytes(200'000, 5);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, data.size());
    REQUIRE(h.ok());
    auto r = cache->open_reader(digest, 0, std::nullopt);
    REQUIRE(r.ok());
    Sink s{std::move(*r)};
    s.attach();
    REQUIRE(h->fill->append(data));
    s.step();
    CHECK(s.got == data.substr(0, data.size() - 1));  // everything but the last byte
    CHECK_FALSE(s.done());
    CHECK((*s.reader).read(10).kind == K::would_block);
    h->fill->finish();
    REQUIRE(pump(
        b.base, [&] { return s.done(); }, [&] { s.step(); }));
    CHECK(s.ended);
    CHECK(s.got == data);
}

TEMPLATE_TEST_CASE("a digest mismatch cuts every reader and the next request starts afresh",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string data = random_bytes(1024 * 1024, 9);
    std::string digest = sha256_digest(data);
    std::string wrong = data;
    wrong[777'777] ^= 1;
    auto h = cache->start_or_join_fill(digest, std::nullopt);
    REQUIRE(h.ok());
    std::optional<Status> ended;
    h->fill->on_end([&](const Status& st) { ended = st; });
    Source src{h->fill, wrong};
    src.attach();
    std::vector<std::unique_ptr<Sink>> sinks;
    for (std::uint64_t off :
         {std::uint64_t{0}, std::uint64_t{500'000}, std::uint64_t{1024 * 1024 - 1}}) {
        auto r = cache->open_reader(digest, off, std::nullopt);
        REQUIRE(r.ok());
        sinks.push_back(std::make_unique<Sink>(std::move(*r)));
        sinks.back()->attach();
    }
    REQUIRE(pump(
        b.base,
        [&] {
            for (auto& s : sinks) {
                if (!s->done()) return false;
            }
            return h->fill->done();
        },
        [&] {
            src.step();
            for (auto& s : sinks)
                s->step();
        }));
    CHECK_FALSE(h->fill->succeeded());
    CHECK(h->fill->error().code == kErrDigestMismatch);
    for (auto& s : sinks) {
        CHECK(s->failed);
        CHECK_FALSE(s->ended);
        CHECK(s->error.code == kErrDigestMismatch);
    }
    CHECK(cache->stats().digest_mismatches == 1);
    REQUIRE(pump(
        b.base, [&] { return ended.has_value(); }, [] {}));
    REQUIRE_FALSE(ended->ok());
    CHECK(ended->error().code == kErrDigestMismatch);
    sinks.clear();
    wait_idle(*cache, b.base);
    CHECK(cache->lookup(digest)->presence == Presence::absent);
    CHECK(cache->open_reader(digest, 0, std::nullopt).error().code == kErrNotFound);
    // A fresh fill with the right bytes succeeds.
    auto f = fill_blob(*cache, b.base, data, digest);
    CHECK(f->succeeded());
    CHECK(read_all(*cache, b.base, digest) == data);
}

TEMPLATE_TEST_CASE("a source failure mid-stream cuts readers and leaves nothing behind", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string data = random_bytes(2 * 1024 * 1024, 3);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, data.size());
    REQUIRE(h.ok());
    Source src{h->fill, data};
    src.fail_at = 1'300'000;
    src.attach();
    auto r = cache->open_reader(digest, 0, std::nullopt);
    REQUIRE(r.ok());
    Sink s{std::move(*r)};
    s.per_step = 10'000;
    s.attach();
    REQUIRE(pump(
        b.base, [&] { return s.done() && src.finished; },
        [&] {
            src.step();
            s.step();
        }));
    CHECK(s.failed);
    CHECK(s.error.code == "test.source");
    CHECK(s.got == data.substr(0, s.got.size()));
    CHECK(cache->stats().fills_failed == 1);
    wait_idle(*cache, b.base);
    CHECK(cache->lookup(digest)->presence == Presence::absent);
    auto usage = cache->store().usage();
    REQUIRE(usage.ok());
    CHECK(usage->blobs == 0);
    auto again = cache->start_or_join_fill(digest, data.size());
    REQUIRE(again.ok());
    CHECK(again->started);
    CHECK(again->fill != h->fill);
}

TEMPLATE_TEST_CASE("an orphaned fill completes or is abandoned per complete_orphan_fills",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    bool complete_orphans = GENERATE(true, false);
    auto o = TestType::options(dir, 64 * 1024 * 1024);
    o.config.complete_orphan_fills = complete_orphans;
    auto cache = open_cache(b.base, std::move(o));
    std::string data = random_bytes(1024 * 1024, 77);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, data.size());
    REQUIRE(h.ok());
    Source src{h->fill, data};
    src.attach();
    {
        auto r = cache->open_reader(digest, 0, std::nullopt);
        REQUIRE(r.ok());
        src.step();
        auto first = (*r)->read(1000);
        CHECK(first.kind == K::data);
    }  // the only reader leaves
    REQUIRE(pump(
        b.base, [&] { return src.finished || src.cancelled; }, [&] { src.step(); }));
    REQUIRE(pump(b.base, [&] { return h->fill->done(); }));
    wait_idle(*cache, b.base);
    if (complete_orphans) {
        CHECK(src.finished);
        CHECK(h->fill->succeeded());
        CHECK(read_all(*cache, b.base, digest) == data);
    } else {
        CHECK(src.cancelled);
        CHECK(h->fill->error().code == kErrAbandoned);
        CHECK(cache->lookup(digest)->presence == Presence::absent);
    }
}

TEMPLATE_TEST_CASE("the source is paused above the writer queue's high watermark", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto o = TestType::options(dir, 256 * 1024 * 1024);
    o.queue_high_watermark = 2 * kChunk;
    o.queue_low_watermark = kChunk;
    auto cache = open_cache(b.base, std::move(o));
    std::string data = random_bytes(8 * 1024 * 1024, 1);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, std::nullopt);
    REQUIRE(h.ok());
    Source src{h->fill, data};
    src.slice = 256 * 1024;
    src.attach();
    REQUIRE(pump(
        b.base, [&] { return src.finished && h->fill->done(); }, [&] { src.step(); }));
    CHECK(src.pauses > 0);
    CHECK(h->fill->succeeded());
    CHECK(read_all(*cache, b.base, digest) == data);
}

TEMPLATE_TEST_CASE("eviction keeps the cache under max_size and never takes a pinned blob",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    const std::uint64_t max = 4 * 1024 * 1024;
    auto cache = open_cache(b.base, TestType::options(dir, max));
    std::vector<std::pair<std::string, std::string>> blobs;
    for (int i = 0; i < 3; ++i) {
        std::string data = random_bytes(1024 * 1024, 100 + static_cast<std::uint64_t>(i));
        blobs.emplace_back(sha256_digest(data), data);
        REQUIRE(fill_blob(*cache, b.base, data, blobs.back().first)->succeeded());
    }
    // A slow client holds the oldest blob open mid-transfer.
    auto r = cache->open_reader(blobs[0].first, 0, std::nullopt);
    REQUIRE(r.ok());
    Sink pinned{std::move(*r)};
    pinned.per_step = 100'000;
    pinned.step();
    for (int i = 3; i < 12; ++i) {
        std::string data = random_bytes(1024 * 1024, 100 + static_cast<std::uint64_t>(i));
        blobs.emplace_back(sha256_digest(data), data);
        REQUIRE(fill_blob(*cache, b.base, data, blobs.back().first)->succeeded());
        auto u = cache->store().usage();
        REQUIRE(u.ok());
        CHECK(u->charged_bytes <= max);
        pinned.step();
    }
    pinned.per_step = 1 << 30;
    pinned.step();
    CHECK(pinned.ended);
    CHECK(pinned.got == blobs[0].second);
    CHECK(cache->stats().evicted_blobs >= 8);
    CHECK(cache->stats().over_limit == 0);
    CHECK(cache->lookup(blobs[0].first)->presence == Presence::complete);
    CHECK(cache->lookup(blobs[1].first)->presence == Presence::absent);  // LRU went first
    CHECK(cache->lookup(blobs.back().first)->presence == Presence::complete);
    CHECK(read_all(*cache, b.base, blobs.back().first) == blobs.back().second);
    // Operator-style eviction of one blob; a pinned one refuses.
    auto held = cache->open_reader(blobs.back().first, 0, std::nullopt);
    REQUIRE(held.ok());
    CHECK_FALSE(cache->evict(blobs.back().first));
    held->reset();
    CHECK(cache->evict(blobs.back().first));
    wait_idle(*cache, b.base);
    CHECK(cache->lookup(blobs.back().first)->presence == Presence::absent);
}

TEST_CASE("MDB_MAP_FULL is answered by evicting and retrying, never by failing the fill",
          "[cache]") {
    TempDir dir;
    Base b;
    const std::uint64_t max = 8 * 1024 * 1024;
    auto o = MemoryCache::options(dir, max);
    // A map smaller than max_size: the writer hits kErrMapFull before its size bound.
    o.store_factory = [max] { return make_memory_store({"", max, kChunk, 3 * 1024 * 1024}); };
    auto cache = open_cache(b.base, std::move(o));
    std::vector<std::pair<std::string, std::string>> blobs;
    for (int i = 0; i < 8; ++i) {
        std::string data = random_bytes(1024 * 1024, 500 + static_cast<std::uint64_t>(i));
        blobs.emplace_back(sha256_digest(data), data);
        auto f = fill_blob(*cache, b.base, data, blobs.back().first);
        CHECK(f->succeeded());
    }
    CHECK(cache->stats().map_full_retries > 0);
    CHECK(cache->stats().fills_failed == 0);
    CHECK(read_all(*cache, b.base, blobs.back().first) == blobs.back().second);
}

TEMPLATE_TEST_CASE("documents share the store and keep their media type", "[cache]", LmdbCache,
                   MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string manifest =
        R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"})";
    std::string digest = sha256_digest(manifest);
    bool stored = false;
    REQUIRE(cache
                ->put_document(digest, "application/vnd.oci.image.manifest.v1+json", manifest,
                               [&](drayage::Status st) { stored = st.ok(); })
                .ok());
    auto pending = cache->get_document(digest);  // visible before the commit
    REQUIRE(pending.ok());
    REQUIRE(pending->has_value());
    CHECK((*pending)->bytes == manifest);
    REQUIRE(pump(b.base, [&] { return stored; }));
    auto doc = cache->get_document(digest);
    REQUIRE(doc.ok());
    REQUIRE(doc->has_value());
    CHECK((*doc)->bytes == manifest);
    CHECK((*doc)->media_type == "application/vnd.oci.image.manifest.v1+json");

    // A document whose bytes do not match its digest is refused.
    std::optional<drayage::Status> refused;
    std::string other = sha256_digest("other");
    REQUIRE(cache
                ->put_document(other, "application/json", "tampered",
                               [&](drayage::Status st) { refused = st; })
                .ok());
    REQUIRE(pump(b.base, [&] { return refused.has_value(); }));
    CHECK_FALSE(refused->ok());
    CHECK(refused->error().code == kErrDigestMismatch);
    CHECK_FALSE(cache->get_document(other)->has_value());
    CHECK_FALSE(cache->get_document(sha256_digest("never"))->has_value());
}

TEMPLATE_TEST_CASE("the repository/digest relation", "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string d = sha256_digest("layer");
    CHECK_FALSE(*cache->is_linked("library/alpine", d));
    cache->link("library/alpine", d);
    CHECK(*cache->is_linked("library/alpine", d));  // before the commit too
    wait_idle(*cache, b.base);
    CHECK(*cache->is_linked("library/alpine", d));
    CHECK(*cache->store().is_linked("library/alpine", d));
    CHECK_FALSE(*cache->is_linked("library/busybox", d));
}

TEMPLATE_TEST_CASE("read_small proves the repository as is_linked does, queued links included",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    const std::string data = random_bytes(16 * 1024, 12);
    const std::string d = sha256_digest(data);
    fill_blob(*cache, b.base, data, d);
    std::string buf;
    auto read = [&](std::string_view repo, bool queued) {
        buf.clear();
        const Cache::LinkProof proof{repo, queued};
        return cache->read_small(
            d, kChunk,
            [&](std::size_t n) {
                buf.assign(n, 'x');
                return buf.data();
            },
            &proof);
    };
    auto not_linked = [](const auto& r) { return !r && r.error().code == kErrNotLinked; };
    CHECK(not_linked(read("team/a", true)));
    CHECK(buf.empty());

    // Queued links count on the loop at once (whether the writer has committed them yet or not,
    // which a test cannot hold back); other threads see them once committed.
    cache->link("team/a", d);
    auto r = read("team/a", true);
    REQUIRE(r.ok());
    CHECK(**r == data.size());
    CHECK(buf == data);
    CHECK(not_linked(read("team/b", true)));
    wait_idle(*cache, b.base);
    CHECK(read("team/a", false).ok());

    bool done = false;
    cache->link("team/b", d);
    wait_idle(*cache, b.base);
    cache->unlink("team/a", d, [&] { done = true; });  // queued: gone at once on the loop
    CHECK(not_linked(read("team/a", true)));
    REQUIRE(pump(b.base, [&] { return done; }));
    CHECK(not_linked(read("team/a", false)));
    CHECK(read("team/b", true).ok());

    // Complete but larger than asked, and linked: nullopt, for a reader to stream.
    const Cache::LinkProof proof{"team/b", true};
    auto larger = cache->read_small(
        d, 1024, [](std::size_t) -> char* { return nullptr; }, &proof);
    REQUIRE(larger.ok());
    CHECK_FALSE(larger->has_value());
}

TEMPLATE_TEST_CASE("unlink ends a repository's records and drops the blob with its last link",
                   "[cache]", LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    const std::string data = random_bytes(300'000, 7);
    const std::string d = sha256_digest(data);
    fill_blob(*cache, b.base, data, d);
    cache->link("team/a", d);
    cache->link("team/b", d);
    cache->put_tag("team/a:v1", TagRecord{d, "application/json", 1});
    cache->put_tag("team/b:v1", TagRecord{d, "application/json", 1});
    wait_idle(*cache, b.base);

    bool done = false;
    cache->unlink("team/a", d, [&] { done = true; });
    CHECK_FALSE(*cache->is_linked("team/a", d));  // at once, before the commit
    REQUIRE(pump(b.base, [&] { return done; }));
    CHECK_FALSE(*cache->store().is_linked("team/a", d));  // committed when `done` ran
    CHECK(*cache->is_linked("team/b", d));
    CHECK_FALSE(cache->get_tag("team/a:v1")->has_value());
    CHECK(cache->get_tag("team/b:v1")->has_value());
    CHECK(cache->lookup(d)->presence == Presence::complete);  // team/b still links it

    done = false;
    cache->unlink("team/b", d, [&] { done = true; });
    REQUIRE(pump(b.base, [&] { return done; }));
    CHECK(cache->lookup(d)->presence == Presence::absent);
    CHECK_FALSE(cache->get_tag("team/b:v1")->has_value());

    // Linked again later (a new push): served again, the relation starts afresh.
    cache->link("team/a", d);
    CHECK(*cache->is_linked("team/a", d));
}

TEMPLATE_TEST_CASE("unlink keeps a blob a reader holds, linked nowhere", "[cache]", LmdbCache,
                   MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    const std::string data = random_bytes(300'000, 8);
    const std::string d = sha256_digest(data);
    fill_blob(*cache, b.base, data, d);
    cache->link("team/a", d);
    auto reader = cache->open_reader(d, 0, std::nullopt);
    REQUIRE(reader.ok());
    bool done = false;
    cache->unlink("team/a", d, [&] { done = true; });
    REQUIRE(pump(b.base, [&] { return done; }));
    CHECK(cache->lookup(d)->presence == Presence::complete);
    CHECK_FALSE(*cache->is_linked("team/a", d));
    reader->reset();
}

TEMPLATE_TEST_CASE("unlink of a manifest drops the document with its last link", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    const std::string manifest = R"({"schemaVersion":2})";
    const std::string d = sha256_digest(manifest);
    REQUIRE(cache->put_document(d, "application/json", manifest).ok());
    cache->link("team/a", d);
    wait_idle(*cache, b.base);
    REQUIRE(cache->get_document(d)->has_value());
    bool done = false;
    cache->unlink("team/a", d, [&] { done = true; });
    REQUIRE(pump(b.base, [&] { return done; }));
    CHECK_FALSE(cache->get_document(d)->has_value());
}

TEST_CASE("a restart discards partial fills and serves complete blobs", "[cache]") {
    TempDir dir;
    std::string data = random_bytes(1024 * 1024, 8);
    std::string digest = sha256_digest(data);
    std::string partial = random_bytes(1024 * 1024, 9);
    std::string partial_digest = sha256_digest(partial);
    {
        Base b;
        auto cache = open_cache(b.base, LmdbCache::options(dir, 64 * 1024 * 1024));
        REQUIRE(fill_blob(*cache, b.base, data, digest)->succeeded());
        // A second server on the same path is refused.
        Base b2;
        auto second = Cache::open(b2.base, LmdbCache::options(dir, 64 * 1024 * 1024));
        CHECK_FALSE(second.ok());
    }
    {
        // Simulate a crash mid-fill: a `filling` record with chunks, written straight to the store.
        auto store = open_lmdb_store({dir.path.string(), 64 * 1024 * 1024, kChunk});
        REQUIRE(store.ok());
        auto w = (*store)->begin_write();
        BlobMeta m;
        m.digest = partial_digest;
        m.blob_id = *(*w)->new_blob_id();
        m.state = BlobState::filling;
        REQUIRE((*w)->put_meta(m).ok());
        REQUIRE((*w)->put_chunk(m.blob_id, 0, partial.substr(0, (*store)->chunk_size())).ok());
        REQUIRE((*w)->commit().ok());
    }
    Base b;
    auto cache = open_cache(b.base, LmdbCache::options(dir, 64 * 1024 * 1024));
    CHECK(cache->lookup(partial_digest)->presence == Presence::absent);
    CHECK(read_all(*cache, b.base, digest) == data);
    wait_idle(*cache, b.base);
    wait_idle(*cache, b.base);
    auto u = cache->store().usage();
    REQUIRE(u.ok());
    CHECK(u->blobs == 1);
}

TEST_CASE("start_or_join_fill refuses bad digests and blobs larger than the cache", "[cache]") {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, MemoryCache::options(dir, 1024 * 1024));
    CHECK_FALSE(cache->start_or_join_fill("sha256:xyz", std::nullopt).ok());
    CHECK(cache->start_or_join_fill(sha256_digest("a"), 2 * 1024 * 1024).error().code ==
          "cache.too_large");
}

TEST_CASE("complete readers opened on other threads while the loop fills and evicts",
          "[cache][threads]") {
    // What the hit workers do: open_complete_reader() and read() on their own threads, beside
    // fills, hit-count touches and evictions driven from the loop. Under ThreadSanitizer in CI.
    TempDir dir;
    Base b;
    const std::uint64_t max_size = 8 * 1024 * 1024;
    auto cache = open_cache(b.base, LmdbCache::options(dir, max_size));
    std::string hot = random_bytes(1024 * 1024 + 3, 40);
    std::string hot_digest = sha256_digest(hot);
    REQUIRE(fill_blob(*cache, b.base, hot, hot_digest)->succeeded());
    // Held throughout: a pinned blob is never evicted, so every reader below must find it.
    auto pin = cache->open_complete_reader(hot_digest, 0, std::nullopt);
    REQUIRE(pin.ok());

    std::atomic<bool> stop{false};
    std::atomic<int> whole_reads{0};
    std::atomic<int> bad{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&, t] {
            while (!stop.load()) {
                const std::uint64_t off = static_cast<std::uint64_t>(t) * 1000;
                auto r = cache->open_complete_reader(hot_digest, off, std::nullopt);
                if (!r) {
                    ++bad;
                    continue;
                }
                std::string got;
                for (;;) {
                    auto rr = (*r)->read(256 * 1024);
                    if (rr.kind == K::data) {
                        got.append(rr.bytes);
                    } else {
                        if (rr.kind != K::end) ++bad;
                        break;
                    }
                }
                if (got != hot.substr(off)) ++bad;
                ++whole_reads;
            }
        });
    }
    // Meanwhile the loop fills blobs that push older ones (never the pinned hot one) out.
    for (int i = 0; i < 12; ++i) {
        std::string other = random_bytes(1024 * 1024, 100 + static_cast<std::uint64_t>(i));
        REQUIRE(fill_blob(*cache, b.base, other, sha256_digest(other))->succeeded());
        CHECK(cache->open_complete_reader(sha256_digest(other), 0, std::nullopt).ok());
    }
    const bool read_enough = wait_for([&] { return whole_reads.load() >= 30; });
    stop = true;
    for (auto& th : readers)
        th.join();
    REQUIRE(read_enough);
    CHECK(bad.load() == 0);
    // A digest being filled is not "complete": open_complete_reader leaves it to the loop.
    std::string filling = random_bytes(300 * 1024, 7);
    auto h = cache->start_or_join_fill(sha256_digest(filling), filling.size());
    REQUIRE(h.ok());
    CHECK(cache->open_complete_reader(sha256_digest(filling), 0, std::nullopt).error().code ==
          kErrNotFound);
    h->fill->fail(drayage::make_error("test", "done"));
    wait_idle(*cache, b.base);
}

TEST_CASE("small blobs read whole on other threads while the loop fills and evicts them",
          "[cache][threads]") {
    // What a hit on a small blob does (read_small, no pin): the read transaction's snapshot
    // alone must keep what is copied whole and right while the writer evicts. Under
    // ThreadSanitizer in CI.
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, LmdbCache::options(dir, 1024 * 1024));
    struct Blob {
        std::string data;
        std::string digest;
    };
    std::vector<Blob> blobs;
    for (int i = 0; i < 60; ++i) {
        std::string data = random_bytes(40 * 1024 + static_cast<std::uint64_t>(i), 500 + i);
        std::string digest = sha256_digest(data);
        blobs.push_back({std::move(data), std::move(digest)});
    }
    REQUIRE(fill_blob(*cache, b.base, blobs[0].data, blobs[0].digest)->succeeded());

    std::atomic<bool> stop{false};
    std::atomic<int> copies{0};
    std::atomic<int> bad{0};
    std::atomic<std::size_t> filled{1};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&, t] {
            std::string buf;
            for (std::size_t n = static_cast<std::size_t>(t); !stop.load(); ++n) {
                const Blob& blob = blobs[n % filled.load()];
                auto r = cache->read_small(blob.digest, kChunk, [&](std::size_t size) {
                    buf.assign(size, 'x');
                    return buf.data();
                });
                if (!r) {
                    if (r.error().code != kErrNotFound) ++bad;  // evicted: fine
                    continue;
                }
                if (!*r || **r != blob.data.size() || buf != blob.data) {
                    ++bad;
                    continue;
                }
                ++copies;
            }
        });
    }
    // 60 blobs of 40 KiB through a 1 MiB cache: most are evicted while the readers read them.
    for (std::size_t i = 1; i < blobs.size(); ++i) {
        REQUIRE(fill_blob(*cache, b.base, blobs[i].data, blobs[i].digest)->succeeded());
        filled = i + 1;
    }
    const bool copied_enough = wait_for([&] { return copies.load() >= 200; });
    stop = true;
    for (auto& th : readers)
        th.join();
    REQUIRE(copied_enough);
    CHECK(bad.load() == 0);
    CHECK(cache->stats().evicted_blobs > 0);
    CHECK(cache->stats().hits >= static_cast<std::uint64_t>(copies.load()));

    // Larger than asked: the caller opens a reader instead. Being filled: not complete.
    const Blob& last = blobs.back();
    auto larger = cache->read_small(last.digest, 1024, [](std::size_t) -> char* {
        FAIL("placed a blob larger than asked");
        return nullptr;
    });
    REQUIRE(larger.ok());
    CHECK_FALSE(larger->has_value());
    std::string filling = random_bytes(1000, 9);
    auto h = cache->start_or_join_fill(sha256_digest(filling), filling.size());
    REQUIRE(h.ok());
    CHECK(cache
              ->read_small(sha256_digest(filling), kChunk,
                           [](std::size_t) -> char* { return nullptr; })
              .error()
              .code == kErrNotFound);
    h->fill->fail(drayage::make_error("test", "done"));
    wait_idle(*cache, b.base);
}

TEMPLATE_TEST_CASE("on_end reports a fill's outcome once its bytes are verified", "[cache]",
                   LmdbCache, MemoryCache) {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, TestType::options(dir, 64 * 1024 * 1024));
    std::string data = random_bytes(3 * 1024 * 1024 + 7, 21);
    std::string digest = sha256_digest(data);
    auto h = cache->start_or_join_fill(digest, data.size());
    REQUIRE(h.ok());
    std::vector<Status> ends;
    bool complete_when_told = false;
    h->fill->on_end([&](const Status& st) {
        ends.push_back(st);
        // Told only once the blob is complete in the cache: a tee may then publish its copy.
        auto l = cache->lookup(digest);
        complete_when_told = l.ok() && l->presence == Presence::complete;
    });
    Source src{h->fill, data};
    src.slice = 100'000;
    src.attach();
    REQUIRE(pump(
        b.base, [&] { return src.finished && !ends.empty(); }, [&] { src.step(); }));
    CHECK(h->fill->succeeded());
    REQUIRE(ends.size() == 1);
    CHECK(ends[0].ok());
    CHECK(complete_when_told);
    // Set after the end: the outcome on the next loop turn.
    std::optional<Status> late;
    h->fill->on_end([&](const Status& st) { late = st; });
    CHECK_FALSE(late.has_value());
    REQUIRE(pump(
        b.base, [&] { return late.has_value(); }, [] {}));
    CHECK(late->ok());
    wait_idle(*cache, b.base);
    CHECK(ends.size() == 1);

    // A source failure ends it with the source's error.
    std::string other = random_bytes(1024 * 1024, 22);
    auto g = cache->start_or_join_fill(sha256_digest(other), other.size());
    REQUIRE(g.ok());
    std::optional<Status> failed;
    g->fill->on_end([&](const Status& st) { failed = st; });
    g->fill->append(std::string_view(other).substr(0, 1000));
    g->fill->fail(make_error("test.source", "cut"));
    REQUIRE(pump(
        b.base, [&] { return failed.has_value(); }, [] {}));
    REQUIRE_FALSE(failed->ok());
    CHECK(failed->error().code == "test.source");
}

TEST_CASE("on_end is told of a fill the closing cache abandons", "[cache]") {
    TempDir dir;
    Base b;
    auto cache = open_cache(b.base, LmdbCache::options(dir, 64 * 1024 * 1024));
    std::string data = random_bytes(1024 * 1024, 23);
    auto h = cache->start_or_join_fill(sha256_digest(data), data.size());
    REQUIRE(h.ok());
    std::optional<Status> ended;
    h->fill->on_end([&](const Status& st) { ended = st; });
    h->fill->append(std::string_view(data).substr(0, 1000));
    cache.reset();
    REQUIRE(ended.has_value());
    REQUIRE_FALSE(ended->ok());
    CHECK(ended->error().code == kErrAbandoned);
}
