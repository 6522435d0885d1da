// The fetch layer on the in-memory store, with scripted origins: no sockets. The tests drive an
// origin's callbacks by hand, so each step of a flight happens exactly when the test says.
#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cache_fixtures.hpp"
#include "drayage/registry/fetch.hpp"
#include "scripted_origin.hpp"

using namespace drayage;
using namespace drayage::registry;
using namespace cachetest;
using namespace fetchtest;
using Kind = FetchOutcome::Kind;

namespace {

// What one party was told.
struct Told {
    std::optional<FetchOutcome> outcome;
    std::function<void(const FetchOutcome&)> callback() {
        return [this](const FetchOutcome& o) {
            REQUIRE_FALSE(outcome.has_value());  // told once
            outcome = o;
        };
    }
};

struct Rig {
    TempDir dir;
    Base b;
    std::unique_ptr<cache::Cache> cache;
    std::shared_ptr<Fetcher> fetcher;
    std::shared_ptr<ScriptedOrigin> bucket = std::make_shared<ScriptedOrigin>("s3");
    std::shared_ptr<ScriptedOrigin> upstream = std::make_shared<ScriptedOrigin>("upstream");
    OriginSet both;

    explicit Rig(std::uint64_t max_size = 64 * 1024 * 1024) {
        cache = open_cache(b.base, MemoryCache::options(dir, max_size));
        fetcher = std::make_shared<Fetcher>(*cache, nullptr, "");
        both.sources = {{bucket, false}, {upstream, false}};
    }
    // A real origin lets go of its sink when its transfer ends; these keep every sink (and the
    // flight it holds, which holds the origins) until the test is over.
    ~Rig() {
        bucket->gets.clear();
        upstream->gets.clear();
    }
    void pump_until(const std::function<bool()>& done, const std::function<void()>& each = {}) {
        REQUIRE(pump(b.base, done, each));
    }
};

std::string bytes_of(std::size_t n, unsigned seed) {
    return random_bytes(n, seed);
}

}  // namespace

TEST_CASE("one flight per digest: later parties join it, the origins are asked once", "[fetch]") {
    Rig rig;
    std::string data = bytes_of(700 * 1024, 1);
    std::string digest = sha256_digest(data);
    Told first, second, push;
    rig.fetcher->fetch("a/b", digest, rig.both, first.callback());
    CHECK(rig.fetcher->in_flight(digest));
    rig.fetcher->fetch("a/b", digest, rig.both, second.callback());
    // A push's read-back names other origins; it joins all the same.
    OriginSet bucket_only;
    bucket_only.sources = {{rig.bucket, false}};
    rig.fetcher->fetch("c/d", digest, bucket_only, push.callback());
    REQUIRE(rig.bucket->gets.size() == 1);
    CHECK(rig.bucket->gets[0].repo == "a/b");

    // The bucket does not have it: the upstream is asked next, once.
    rig.bucket->gets[0].sink.on_done(make_error("NOT_FOUND", "no such key"));
    REQUIRE(rig.upstream->gets.size() == 1);
    CHECK_FALSE(first.outcome.has_value());

    auto& up = rig.upstream->gets[0];
    REQUIRE(up.sink.on_head(OriginHead{data.size()}));
    CHECK_FALSE(rig.fetcher->in_flight(digest));  // the cache's fill is the flight now
    for (Told* t : {&first, &second, &push}) {
        REQUIRE(t->outcome.has_value());
        CHECK(t->outcome->kind == Kind::filling);
        CHECK(t->outcome->source->name() == "upstream");
        CHECK(t->outcome->fill == first.outcome->fill);
        CHECK(t->outcome->started);  // this flight drives the fill, whoever asked
    }
    // Everyone reads from the cache while the bytes arrive, at any offset.
    auto mid = rig.cache->open_reader(digest, 300'000, std::nullopt);
    REQUIRE(mid.ok());
    std::optional<Status> ended;
    first.outcome->fill->on_end([&](const Status& st) { ended = st; });
    for (std::size_t off = 0; off < data.size(); off += 100'000)
        up.sink.on_data(std::string_view(data).substr(off, 100'000));
    up.sink.on_done(Status{});
    rig.pump_until([&] { return ended.has_value(); });
    CHECK(ended->ok());
    CHECK(read_all(*rig.cache, rig.b.base, digest, 300'000) == data.substr(300'000));
    CHECK(read_all(*rig.cache, rig.b.base, digest) == data);

    CHECK(rig.cache->lookup(digest)->presence == cache::Presence::complete);
}

TEST_CASE("a flight whose digest another party fills meanwhile joins that fill", "[fetch]") {
    Rig rig;
    std::string data = bytes_of(200 * 1024, 5);
    std::string digest = sha256_digest(data);
    Told a;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    // While the bucket is being asked, someone fills the digest directly in the cache.
    auto other = rig.cache->start_or_join_fill(digest, data.size());
    REQUIRE(other.ok());
    REQUIRE(other->started);
    // The flight's origin answers: its bytes are not needed, its transfer is dropped.
    CHECK_FALSE(rig.bucket->gets[0].sink.on_head(OriginHead{data.size()}));
    REQUIRE(a.outcome.has_value());
    CHECK(a.outcome->kind == Kind::filling);
    CHECK_FALSE(a.outcome->started);
    CHECK(a.outcome->fill == other->fill);
}

TEST_CASE("a flight that finds no origin with the blob tells every party not_found", "[fetch]") {
    Rig rig;
    std::string digest = sha256_digest("absent");
    Told a, b;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    rig.fetcher->fetch("a/b", digest, rig.both, b.callback());
    rig.bucket->gets[0].sink.on_done(make_error("NOT_FOUND", "no"));
    rig.upstream->gets[0].sink.on_done(make_error("NOT_FOUND", "no"));
    for (Told* t : {&a, &b}) {
        REQUIRE(t->outcome.has_value());
        CHECK(t->outcome->kind == Kind::not_found);
    }
    CHECK_FALSE(rig.fetcher->in_flight(digest));
    // No origins at all: told at once.
    Told none;
    rig.fetcher->fetch("a/b", digest, OriginSet{}, none.callback());
    REQUIRE(none.outcome.has_value());
    CHECK(none.outcome->kind == Kind::not_found);
}

TEST_CASE("an origin that fails before its head fails the flight; the next fetch starts anew",
          "[fetch]") {
    Rig rig;
    std::string digest = sha256_digest("x");
    Told a, b;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    rig.fetcher->fetch("a/b", digest, rig.both, b.callback());
    rig.bucket->gets[0].sink.on_done(make_error("TIMEOUT", "bucket stalled"));
    for (Told* t : {&a, &b}) {
        REQUIRE(t->outcome.has_value());
        CHECK(t->outcome->kind == Kind::failed);
        CHECK(t->outcome->error.code == "TIMEOUT");
    }
    CHECK(rig.upstream->gets.empty());  // a failure is not "not here": no fallback
    Told again;
    rig.fetcher->fetch("a/b", digest, rig.both, again.callback());
    CHECK(rig.bucket->gets.size() == 2);
}

TEST_CASE("an origin failing mid-stream fails the fill and cuts its readers", "[fetch]") {
    Rig rig;
    std::string data = bytes_of(500 * 1024, 2);
    std::string digest = sha256_digest(data);
    Told a;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    auto& g = rig.bucket->gets[0];
    REQUIRE(g.sink.on_head(OriginHead{data.size()}));
    REQUIRE(a.outcome.has_value());
    std::optional<Status> ended;
    a.outcome->fill->on_end([&](const Status& st) { ended = st; });
    g.sink.on_data(std::string_view(data).substr(0, 200'000));
    g.sink.on_done(make_error("UNKNOWN", "connection reset"));
    rig.pump_until([&] { return ended.has_value(); });
    REQUIRE_FALSE(ended->ok());
    CHECK(ended->error().code == "UNKNOWN");
    CHECK(rig.cache->lookup(digest)->presence == cache::Presence::absent);
}

TEST_CASE("bytes that fail their digest end the fill with a mismatch", "[fetch]") {
    Rig rig;
    std::string data = bytes_of(300 * 1024, 3);
    std::string digest = sha256_digest(data);
    data[1234] ^= 1;
    Told a;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    auto& g = rig.bucket->gets[0];
    REQUIRE(g.sink.on_head(OriginHead{std::nullopt}));
    std::optional<Status> ended;
    a.outcome->fill->on_end([&](const Status& st) { ended = st; });
    g.sink.on_data(data);
    g.sink.on_done(Status{});
    rig.pump_until([&] { return ended.has_value(); });
    REQUIRE_FALSE(ended->ok());
    CHECK(ended->error().code == cache::kErrDigestMismatch);
}

TEST_CASE("a blob larger than the cache is handed back to stream uncached, on a later turn",
          "[fetch]") {
    Rig rig(1024 * 1024);
    std::string digest = sha256_digest("big");
    Told a, b;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    rig.fetcher->fetch("a/b", digest, rig.both, b.callback());
    rig.bucket->gets[0].sink.on_done(make_error("NOT_FOUND", "no"));
    // The origin's own transfer is dropped (false), and nobody is told inside its callback.
    CHECK_FALSE(rig.upstream->gets[0].sink.on_head(OriginHead{64u * 1024 * 1024}));
    CHECK_FALSE(a.outcome.has_value());
    rig.pump_until([&] { return a.outcome.has_value() && b.outcome.has_value(); });
    for (Told* t : {&a, &b}) {
        CHECK(t->outcome->kind == Kind::uncached);
        CHECK(t->outcome->source == rig.upstream);
    }
}

TEST_CASE("the fill's backpressure pauses the origin, which is resumed as the writer drains",
          "[fetch]") {
    Rig rig;
    std::string data = bytes_of(40 * 1024 * 1024, 4);
    std::string digest = sha256_digest(data);
    Told a;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    auto& g = rig.bucket->gets[0];
    REQUIRE(g.sink.on_head(OriginHead{data.size()}));
    std::size_t off = 0;
    bool paused = false;
    while (off < data.size() && !paused) {
        paused = !g.sink.on_data(std::string_view(data).substr(off, 1024 * 1024));
        off += 1024 * 1024;
    }
    REQUIRE(paused);  // over the writer queue's high watermark (16 MiB)
    rig.pump_until([&] { return g.transfer->resumes > 0; });
    while (off < data.size()) {
        g.sink.on_data(std::string_view(data).substr(off, 1024 * 1024));
        off += 1024 * 1024;
        rig.pump_until([] { return true; });
    }
    std::optional<Status> ended;
    a.outcome->fill->on_end([&](const Status& st) { ended = st; });
    g.sink.on_done(Status{});
    rig.pump_until([&] { return ended.has_value(); });
    CHECK(ended->ok());
}

namespace {

// A client reading the blob from the cache at `offset`, as the front does once told `filling`.
struct Reader {
    std::uint64_t offset;
    std::unique_ptr<Sink> sink;
    void open(cache::Cache& cache, const std::string& digest) {
        auto r = cache.open_reader(digest, offset, std::nullopt);
        REQUIRE(r.ok());
        sink = std::make_unique<Sink>(std::move(*r));
        sink->attach();
    }
};

std::vector<Reader> readers_at(std::initializer_list<std::uint64_t> offsets) {
    std::vector<Reader> readers;
    for (auto off : offsets)
        readers.push_back({off, {}});
    return readers;
}

void read_until_done(Rig& rig, std::vector<Reader>& readers) {
    rig.pump_until(
        [&] {
            for (auto& r : readers)
                if (!r.sink->done()) return false;
            return true;
        },
        [&] {
            for (auto& r : readers)
                r.sink->step();
        });
}

}  // namespace

TEST_CASE("parties joining a flight read from any offset while the blob fills", "[fetch]") {
    Rig rig;
    std::string data = bytes_of(700 * 1024, 6);
    std::string digest = sha256_digest(data);
    const std::uint64_t last = data.size() - 1;
    // Three requests wait on the flight while the origins are asked, each with its own Range.
    auto readers = readers_at({0, 350'000, last});
    std::vector<Told> told(readers.size());
    for (auto& t : told)
        rig.fetcher->fetch("a/b", digest, rig.both, t.callback());
    rig.bucket->gets[0].sink.on_done(make_error("NOT_FOUND", "no such key"));
    auto& up = rig.upstream->gets[0];
    REQUIRE(up.sink.on_head(OriginHead{data.size()}));
    for (std::size_t i = 0; i < readers.size(); ++i) {
        REQUIRE(told[i].outcome->kind == Kind::filling);
        readers[i].open(*rig.cache, digest);
    }
    // The first part arrives and is read while the rest is still on its way.
    up.sink.on_data(std::string_view(data).substr(0, 300'000));
    Sink& from_start = *readers[0].sink;
    rig.pump_until([&] { return from_start.got.size() >= 200'000; }, [&] { from_start.step(); });
    CHECK_FALSE(readers[1].sink->done());
    CHECK(readers[2].sink->got.empty());
    // A request arriving now, after the head, finds the fill in the cache and joins it there.
    CHECK_FALSE(rig.fetcher->in_flight(digest));
    CHECK(rig.cache->lookup(digest)->presence == cache::Presence::filling);
    readers.push_back({123'456, {}});
    readers.back().open(*rig.cache, digest);

    up.sink.on_data(std::string_view(data).substr(300'000));
    up.sink.on_done(Status{});
    read_until_done(rig, readers);
    for (auto& r : readers) {
        CAPTURE(r.offset);
        CHECK(r.sink->ended);
        CHECK(r.sink->got == data.substr(r.offset));
    }
    CHECK(rig.upstream->gets.size() == 1);
}

TEST_CASE("a push's read-back and a pull of one digest at once: one origin transfer", "[fetch]") {
    const bool push_first = GENERATE(true, false);
    CAPTURE(push_first);
    Rig rig;
    std::string data = bytes_of(400 * 1024, 8);
    std::string digest = sha256_digest(data);
    // The push path reads a pushed blob back from the bucket only (push.cpp fill_cache).
    OriginSet from_bucket;
    from_bucket.sources = {{rig.bucket, false}};
    Told push, pull;
    if (push_first) {
        rig.fetcher->fetch("c/d", digest, from_bucket, push.callback());
        rig.fetcher->fetch("a/b", digest, rig.both, pull.callback());
    } else {
        rig.fetcher->fetch("a/b", digest, rig.both, pull.callback());
        rig.fetcher->fetch("c/d", digest, from_bucket, push.callback());
    }
    REQUIRE(rig.bucket->gets.size() == 1);
    auto& g = rig.bucket->gets[0];
    REQUIRE(g.sink.on_head(OriginHead{data.size()}));
    for (Told* t : {&push, &pull}) {
        REQUIRE(t->outcome.has_value());
        CHECK(t->outcome->kind == Kind::filling);
        CHECK(t->outcome->fill == push.outcome->fill);
    }
    auto readers = readers_at({0});
    readers[0].open(*rig.cache, digest);
    std::optional<Status> verified;
    push.outcome->fill->on_end([&](const Status& st) { verified = st; });
    g.sink.on_data(data);
    g.sink.on_done(Status{});
    read_until_done(rig, readers);
    CHECK(readers[0].sink->got == data);
    rig.pump_until([&] { return verified.has_value(); });
    CHECK(verified->ok());
    CHECK(rig.bucket->gets.size() == 1);
    CHECK(rig.upstream->gets.empty());
    CHECK(rig.cache->lookup(digest)->presence == cache::Presence::complete);
}

TEST_CASE("an origin failing mid-stream: every joined reader sees the error, nothing is cached",
          "[fetch]") {
    Rig rig;
    std::string data = bytes_of(600 * 1024, 9);
    std::string digest = sha256_digest(data);
    Told a, b;
    rig.fetcher->fetch("a/b", digest, rig.both, a.callback());
    rig.fetcher->fetch("a/b", digest, rig.both, b.callback());
    auto& g = rig.bucket->gets[0];
    REQUIRE(g.sink.on_head(OriginHead{data.size()}));
    // Readers at the start, inside what arrives, and past it.
    auto readers = readers_at({0, 100'000, 500'000});
    for (auto& r : readers)
        r.open(*rig.cache, digest);
    g.sink.on_data(std::string_view(data).substr(0, 250'000));
    g.sink.on_done(make_error("UNKNOWN", "connection reset"));
    read_until_done(rig, readers);
    for (auto& r : readers) {
        CAPTURE(r.offset);
        CHECK(r.sink->failed);
        CHECK(r.sink->error.code == "UNKNOWN");  // the origin's error, as it reported it
        CHECK_FALSE(r.sink->ended);
        // What a reader got before the error is the blob's bytes, short of the whole.
        CHECK(r.sink->got == data.substr(r.offset, r.sink->got.size()));
        CHECK(r.offset + r.sink->got.size() < data.size());
    }
    CHECK(rig.cache->lookup(digest)->presence == cache::Presence::absent);
    // The next request starts a new flight.
    Told again;
    rig.fetcher->fetch("a/b", digest, rig.both, again.callback());
    CHECK(rig.bucket->gets.size() == 2);
}
