// The fetch layer on the in-memory store, with scripted origins: no sockets. The tests drive an
// origin's callbacks by hand, so each step of a flight happens exactly when the test says.
#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cache_fixtures.hpp"
#include "drayage/registry/fetch.hpp"

using namespace drayage;
using namespace drayage::registry;
using namespace cachetest;
using Kind = FetchOutcome::Kind;

namespace {

struct ScriptedTransfer : OriginTransfer {
    bool cancelled = false;
    int resumes = 0;
    void resume() override { ++resumes; }
    void cancel() override { cancelled = true; }
};

// An origin whose transfers the test plays: gets() records each request and its sink.
class ScriptedOrigin : public BlobOrigin {
public:
    explicit ScriptedOrigin(std::string name) : name_(std::move(name)) {}
    std::string_view name() const override { return name_; }
    void head(std::string_view, std::string_view,
              std::function<void(Result<OriginHead>)> done) override {
        done(make_error("NOT_FOUND", "not scripted"));
    }
    std::shared_ptr<OriginTransfer> get(std::string_view repo, std::string_view digest,
                                        OriginSink sink) override {
        gets.push_back({std::string(repo), std::string(digest), std::move(sink),
                        std::make_shared<ScriptedTransfer>()});
        return gets.back().transfer;
    }

    struct Get {
        std::string repo;
        std::string digest;
        OriginSink sink;
        std::shared_ptr<ScriptedTransfer> transfer;
    };
    std::vector<Get> gets;

private:
    std::string name_;
};

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
    void pump_until(const std::function<bool()>& done) { REQUIRE(pump(b.base, done)); }
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
