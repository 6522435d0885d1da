// The uncached stream with a scripted origin and a recording client: no sockets, no cache. Each
// origin step happens when the test says, and the client records what it was sent.
#include "drayage/registry/uncached_stream.hpp"

#include <catch2/catch.hpp>
#include <limits>
#include <optional>
#include <string>

#include "drayage/cache/cache.hpp"
#include "scripted_origin.hpp"
#include "support.hpp"

using namespace drayage;
using namespace drayage::registry;
using namespace fetchtest;

namespace {

// A client that records its answer. `paused` makes write() report a full output.
struct RecordingClient : BlobSink {
    bool http10 = false;
    bool gone = false;
    bool paused = false;

    int status = 0;  // 200, 206, 416, 503; 0: nothing sent yet
    std::optional<std::uint64_t> length;
    std::optional<ByteSpan> span;
    std::uint64_t blob_size = 0;  // of a 206 or 416
    std::string why;              // of a 503
    std::string body;
    bool finished = false;
    std::optional<Error> cut;
    std::function<void()> resume, on_gone;

    bool delimits_unknown_length() const override { return !http10; }
    bool closed() const override { return gone; }
    std::string_view peer() const override { return "test"; }
    void send_whole(std::optional<std::uint64_t> size) override {
        answer(200);
        length = size;
    }
    void send_span(const ByteSpan& s, std::uint64_t size) override {
        answer(206);
        span = s;
        blob_size = size;
        length = s.last - s.first + 1;
    }
    void send_unsatisfiable(std::uint64_t size) override {
        answer(416);
        blob_size = size;
    }
    void send_unavailable(std::string_view w) override {
        answer(503);
        why = w;
    }
    bool write(std::string_view bytes) override {
        REQUIRE((status == 200 || status == 206));
        REQUIRE_FALSE(ended());
        body.append(bytes);
        return !paused;
    }
    void finish() override {
        REQUIRE_FALSE(ended());
        finished = true;
    }
    void abort(const Error& cause) override {
        REQUIRE_FALSE(ended());
        cut = cause;
    }
    void on_writable(std::function<void()> f) override { resume = std::move(f); }
    void on_closed(std::function<void()> f) override { on_gone = std::move(f); }

    bool ended() const { return finished || cut.has_value(); }
    void answer(int s) {
        REQUIRE(status == 0);  // one head or refusal per answer
        status = s;
    }
};

struct Rig {
    std::string data = cachetest::random_bytes(300 * 1024, 7);
    std::string digest = cachetest::sha256_digest(data);
    std::shared_ptr<ScriptedOrigin> origin = std::make_shared<ScriptedOrigin>("upstream");
    std::shared_ptr<RecordingClient> client = std::make_shared<RecordingClient>();

    ~Rig() { origin->gets.clear(); }  // the sinks hold the stream

    // Starts the stream for `range` and returns the origin's transfer.
    ScriptedOrigin::Get& start(const std::string& range = "") {
        stream_uncached(*origin, "a/b", digest, range, client);
        REQUIRE(origin->gets.size() == 1);
        CHECK(origin->gets[0].digest == digest);
        return origin->gets[0];
    }
    // Starts the stream without a Range; the origin answers with the blob's length.
    ScriptedOrigin::Get& start_with_length() {
        auto& g = start();
        REQUIRE(g.sink.on_head(OriginHead{data.size()}));
        return g;
    }
    // The origin ends cleanly: the client's answer is complete, with `want`.
    void end_verified(ScriptedOrigin::Get& g, const std::string& want) {
        g.sink.on_done(Status{});
        CHECK(client->finished);
        CHECK(client->body == want);
    }
    // Plays the origin's bytes in pieces of `piece`, all of them or up to `upto`.
    void play(ScriptedOrigin::Get& g, const std::string& bytes, std::size_t piece = 50'000,
              std::size_t upto = std::numeric_limits<std::size_t>::max()) {
        for (std::size_t off = 0; off < std::min(upto, bytes.size()); off += piece)
            g.sink.on_data(std::string_view(bytes).substr(off, std::min(piece, upto - off)));
    }
};

}  // namespace

TEST_CASE("uncached: the last byte is held back until the digest matched", "[uncached]") {
    Rig rig;
    auto& g = rig.start_with_length();
    CHECK(rig.client->status == 200);
    CHECK(rig.client->length == rig.data.size());
    rig.play(g, rig.data);
    // Every byte arrived, but the digest is only known at the origin's end.
    CHECK(rig.client->body == rig.data.substr(0, rig.data.size() - 1));
    CHECK_FALSE(rig.client->ended());
    rig.end_verified(g, rig.data);
    CHECK_FALSE(rig.client->on_gone);  // the stream let go of the client
}

TEST_CASE("uncached: a corrupt blob cuts the client and never finishes it", "[uncached]") {
    Rig rig;
    std::string corrupt = rig.data;
    corrupt[rig.data.size() / 2] ^= 1;
    auto& g = rig.start_with_length();
    rig.play(g, corrupt);
    g.sink.on_done(Status{});
    REQUIRE(rig.client->cut.has_value());
    CHECK(rig.client->cut->code == cache::kErrDigestMismatch);
    CHECK_FALSE(rig.client->finished);
    CHECK(rig.client->body.size() == rig.data.size() - 1);  // never the last byte
}

TEST_CASE("uncached: Range spans are cut from the verified stream", "[uncached]") {
    const std::uint64_t n = 300 * 1024;
    struct Case {
        std::string range;
        ByteSpan span;
    };
    auto c = GENERATE_COPY(Case{"bytes=0-0", {0, 0}}, Case{"bytes=-1", {n - 1, n - 1}},
                           Case{"bytes=100000-149999", {100'000, 149'999}},
                           Case{"bytes=299000-999999", {299'000, n - 1}});
    CAPTURE(c.range);
    Rig rig;
    REQUIRE(rig.data.size() == n);
    auto& g = rig.start(c.range);
    REQUIRE(g.sink.on_head(OriginHead{n}));
    REQUIRE(rig.client->status == 206);
    CHECK(rig.client->span->first == c.span.first);
    CHECK(rig.client->span->last == c.span.last);
    CHECK(rig.client->blob_size == n);
    rig.play(g, rig.data, 30'000);
    const std::string want = rig.data.substr(c.span.first, c.span.last - c.span.first + 1);
    // The whole blob is read (to verify it), the span's last byte waits for the digest.
    CHECK(rig.client->body == want.substr(0, want.size() - 1));
    rig.end_verified(g, want);
}

TEST_CASE("uncached: a corrupt blob cuts a Range client too", "[uncached]") {
    Rig rig;
    std::string corrupt = rig.data;
    corrupt.back() ^= 1;  // outside the span: the span's bytes are right, the blob is not
    auto& g = rig.start("bytes=10-19");
    REQUIRE(g.sink.on_head(OriginHead{rig.data.size()}));
    rig.play(g, corrupt);
    g.sink.on_done(Status{});
    REQUIRE(rig.client->cut.has_value());
    CHECK(rig.client->body == rig.data.substr(10, 9));
}

TEST_CASE("uncached: a Range past the end is a 416 and stops the origin", "[uncached]") {
    Rig rig;
    auto& g = rig.start("bytes=" + std::to_string(rig.data.size()) + "-");
    CHECK_FALSE(g.sink.on_head(OriginHead{rig.data.size()}));
    CHECK(rig.client->status == 416);
    CHECK(rig.client->blob_size == rig.data.size());
    CHECK(g.transfer->cancelled);
    CHECK(rig.client->body.empty());
}

TEST_CASE("uncached: an origin without a length gets the Range ignored: 200, no length",
          "[uncached]") {
    Rig rig;
    auto& g = rig.start("bytes=100-199");
    REQUIRE(g.sink.on_head(OriginHead{std::nullopt}));
    CHECK(rig.client->status == 200);
    CHECK_FALSE(rig.client->length.has_value());
    rig.play(g, rig.data);
    CHECK(rig.client->body.size() == rig.data.size() - 1);  // the last byte received so far
    rig.end_verified(g, rig.data);
}

TEST_CASE("uncached: an HTTP/1.0 client of a blob without a length gets 503 before any body",
          "[uncached]") {
    Rig rig;
    rig.client->http10 = true;
    auto& g = rig.start();
    CHECK_FALSE(g.sink.on_head(OriginHead{std::nullopt}));
    CHECK(rig.client->status == 503);
    CHECK(rig.client->why.find("HTTP/1.1") != std::string::npos);
    CHECK(g.transfer->cancelled);
    CHECK(rig.client->body.empty());
}

TEST_CASE("uncached: an HTTP/1.0 client of a blob with a length is served", "[uncached]") {
    Rig rig;
    rig.client->http10 = true;
    auto& g = rig.start_with_length();
    rig.play(g, rig.data);
    rig.end_verified(g, rig.data);
}

TEST_CASE("uncached: an origin failing mid-stream cuts the client", "[uncached]") {
    Rig rig;
    auto& g = rig.start_with_length();
    rig.play(g, rig.data, 50'000, 100'000);
    g.sink.on_done(make_error("TIMEOUT", "upstream stalled"));
    REQUIRE(rig.client->cut.has_value());
    CHECK(rig.client->cut->code == "TIMEOUT");
    CHECK_FALSE(rig.client->finished);
    CHECK(rig.client->body.size() == 100'000 - 1);
}

TEST_CASE("uncached: an origin ending short of its length cuts the client", "[uncached]") {
    Rig rig;
    auto& g = rig.start_with_length();
    rig.play(g, rig.data, 50'000, 100'000);
    g.sink.on_done(Status{});  // a clean end, but short
    REQUIRE(rig.client->cut.has_value());
    CHECK(rig.client->cut->message.find("100000 of") != std::string::npos);
}

TEST_CASE("uncached: a paused client pauses the origin, and its resume continues it",
          "[uncached]") {
    Rig rig;
    auto& g = rig.start_with_length();
    CHECK(g.sink.on_data(std::string_view(rig.data).substr(0, 100'000)));
    rig.client->paused = true;
    CHECK_FALSE(g.sink.on_data(std::string_view(rig.data).substr(100'000, 100'000)));
    CHECK(g.transfer->resumes == 0);
    rig.client->paused = false;
    REQUIRE(rig.client->resume);
    rig.client->resume();  // the client's output drained
    CHECK(g.transfer->resumes == 1);
    CHECK(g.sink.on_data(std::string_view(rig.data).substr(200'000)));
    rig.end_verified(g, rig.data);
}

TEST_CASE("uncached: a client going away cancels the origin's transfer", "[uncached]") {
    Rig rig;
    auto& g = rig.start_with_length();
    rig.play(g, rig.data, 50'000, 100'000);
    rig.client->gone = true;
    REQUIRE(rig.client->on_gone);
    rig.client->on_gone();
    CHECK(g.transfer->cancelled);
    CHECK_FALSE(rig.client->ended());
}
