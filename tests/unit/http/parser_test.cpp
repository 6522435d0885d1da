// RequestParser: framing, limits, smuggling defences and pausing, fed without a network.
#include "drayage/http/parser.hpp"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

using drayage::config::HttpLimits;
using drayage::http::Request;
using drayage::http::RequestParser;
using namespace std::string_literals;

namespace {

struct Recorder : RequestParser::Callbacks {
    std::vector<Request> heads;
    std::vector<std::string> bodies;
    int complete = 0;
    RequestParser* parser = nullptr;
    bool pause_on_head = false;
    bool pause_on_complete = false;

    void on_request_head(Request&& r) override {
        heads.push_back(std::move(r));
        bodies.emplace_back();
        if (pause_on_head) parser->pause();
    }
    void on_body(std::string_view d) override { bodies.back().append(d); }
    void on_message_complete() override {
        ++complete;
        if (pause_on_complete) parser->pause();
    }
};

struct Fixture {
    explicit Fixture(HttpLimits limits = {}) : parser(limits, rec) { rec.parser = &parser; }
    // Feeds everything, resuming whenever a callback paused; `step` bytes per feed() call.
    void feed(std::string_view data, std::size_t step = 0) {
        while (!data.empty() && !parser.failed()) {
            std::string_view piece = step == 0 ? data : data.substr(0, step);
            std::size_t n = parser.feed(piece);
            data.remove_prefix(n);
            if (parser.paused()) parser.resume();
        }
    }
    Recorder rec;
    RequestParser parser;
};

int status_of(const std::string& input, HttpLimits limits = {}, std::size_t step = 0) {
    Fixture f(limits);
    f.feed(input, step);
    return f.parser.failed() ? f.parser.error()->status : 0;
}

}  // namespace

TEST_CASE("simple GET with query and headers", "[http][parser]") {
    Fixture f;
    f.feed(
        "GET /v2/lib/x/blobs/sha256:ab?ns=docker.io HTTP/1.1\r\nHost: h\r\n"
        "User-Agent:  curl/7  \r\nX-Multi: a\r\nX-Multi: b\r\n\r\n");
    REQUIRE_FALSE(f.parser.failed());
    REQUIRE(f.rec.heads.size() == 1);
    const Request& r = f.rec.heads[0];
    CHECK(r.method == "GET");
    CHECK(r.target == "/v2/lib/x/blobs/sha256:ab?ns=docker.io");
    CHECK(r.path == "/v2/lib/x/blobs/sha256:ab");
    CHECK(r.query == "ns=docker.io");
    CHECK(r.version_minor == 1);
    CHECK(r.keep_alive);
    CHECK_FALSE(r.has_body());
    CHECK(r.header("user-agent") == "curl/7");
    CHECK(r.header("x-multi") == "a");
    CHECK(r.headers.size() == 4);
    CHECK(r.header("absent").empty());
    CHECK(f.rec.complete == 1);
    CHECK_FALSE(f.parser.in_request());
}

TEST_CASE("absolute-form target and HTTP/1.0 keep-alive rules", "[http][parser]") {
    Fixture f;
    f.feed(
        "GET http://example.com:5000/v2/?x=1 HTTP/1.0\r\n\r\n"
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    REQUIRE(f.rec.heads.size() == 3);
    CHECK(f.rec.heads[0].path == "/v2/");
    CHECK(f.rec.heads[0].query == "x=1");
    CHECK_FALSE(f.rec.heads[0].keep_alive);
    CHECK(f.rec.heads[1].keep_alive);
    CHECK_FALSE(f.rec.heads[2].keep_alive);
}

TEST_CASE("pipelined requests fed one byte at a time", "[http][parser]") {
    const std::string input =
        "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n";
    Fixture f;
    f.feed(input, 1);
    REQUIRE_FALSE(f.parser.failed());
    REQUIRE(f.rec.heads.size() == 3);
    CHECK(f.rec.heads[0].content_length == 5u);
    CHECK(f.rec.bodies[0] == "hello");
    CHECK(f.rec.heads[1].chunked);
    CHECK_FALSE(f.rec.heads[1].content_length);
    CHECK(f.rec.bodies[1] == "abc");
    CHECK(f.rec.heads[2].method == "HEAD");
    CHECK(f.rec.complete == 3);
}

TEST_CASE("chunked body with extensions and trailers", "[http][parser]") {
    Fixture f;
    f.feed(
        "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;name=value\r\nhello\r\n6;a=b;c\r\n world\r\n0;last\r\nX-Checksum: 1\r\n"
        "X-Other: 2\r\n\r\n"
        "GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE_FALSE(f.parser.failed());
    REQUIRE(f.rec.heads.size() == 2);
    CHECK(f.rec.bodies[0] == "hello world");
    CHECK(f.rec.heads[0].headers.size() == 2);  // trailers are not added to the head
    CHECK(f.rec.heads[1].path == "/next");
    CHECK(f.rec.complete == 2);
}

TEST_CASE("limits map to 414, 431 and 413", "[http][parser]") {
    HttpLimits limits;
    limits.max_request_line = 100;
    limits.max_header_bytes = 200;
    limits.max_headers = 5;
    limits.max_body = 1000;

    CHECK(status_of("GET /" + std::string(99, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n", limits) == 0);
    CHECK(status_of("GET /" + std::string(100, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n", limits) ==
          414);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: " + std::string(300, 'v') + "\r\n\r\n",
                    limits) == 431);
    std::string many = "GET / HTTP/1.1\r\nHost: h\r\n";
    for (int i = 0; i < 5; ++i)
        many += "X-" + std::to_string(i) + ": v\r\n";
    CHECK(status_of(many + "\r\n", limits) == 431);
    // Trailers count against the header limits too.
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: " +
                        std::string(300, 't') + "\r\n\r\n",
                    limits) == 431);
    CHECK(status_of("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", limits) == 413);
    CHECK(status_of(
              "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'x'),
              limits) == 0);
    // Chunked: caught when the chunk that crosses the limit arrives, before delivery.
    Fixture f(limits);
    f.feed("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" +
           std::string(1000, 'x') + "\r\n1\r\ny\r\n0\r\n\r\n");
    REQUIRE(f.parser.failed());
    CHECK(f.parser.error()->status == 413);
    CHECK(f.rec.bodies[0].size() == 1000);
    // http-parser's own 80 KiB head limit maps to 431 as well.
    HttpLimits big;
    big.max_header_bytes = 1 << 20;
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: " + std::string(90 * 1024, 'v') + "\r\n\r\n",
                    big) == 431);
}

TEST_CASE("route body limit set after the head", "[http][parser]") {
    SECTION("known Content-Length above the limit fails at once") {
        Fixture f;
        f.rec.pause_on_head = true;
        std::size_t n = f.parser.feed("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n");
        CHECK(n > 0);
        f.parser.set_body_limit(10);
        REQUIRE(f.parser.failed());
        CHECK(f.parser.error()->status == 413);
    }
    SECTION("chunked body crossing the limit") {
        Fixture f;
        f.rec.pause_on_head = true;
        std::string in =
            "PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            "8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n";
        std::size_t n = f.parser.feed(in);
        REQUIRE(f.parser.paused());
        f.parser.set_body_limit(10);
        f.parser.resume();
        f.parser.feed(std::string_view(in).substr(n));
        REQUIRE(f.parser.failed());
        CHECK(f.parser.error()->status == 413);
        CHECK(f.rec.bodies[0] == "12345678");
    }
    SECTION("the limit resets with the next request") {
        Fixture f;
        f.rec.pause_on_head = true;
        std::string in =
            "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd"
            "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\nabcdefgh";
        std::size_t n = f.parser.feed(in);
        f.parser.set_body_limit(4);
        f.parser.resume();
        f.rec.pause_on_head = false;
        f.feed(std::string_view(in).substr(n));
        CHECK_FALSE(f.parser.failed());
        CHECK(f.rec.bodies.size() == 2);
        CHECK(f.rec.bodies[1] == "abcdefgh");
    }
}

TEST_CASE("malformed requests are 400", "[http][parser]") {
    CHECK(status_of(std::string("\x01\x02\x03garbage\r\n\r\n", 15)) == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello") == 400);
    CHECK(status_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\n\r\n") == 400);  // no Host
    CHECK(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
    CHECK(status_of("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n") == 400);
    CHECK(status_of("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n") == 400);
    CHECK(status_of("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n") ==
          400);
    CHECK(status_of("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabcX\r\n") == 400);
    CHECK(
        status_of("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n") ==
        400);
    CHECK(status_of("BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n") == 417);
    CHECK(status_of("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n") == 501);
}

TEST_CASE("request smuggling shapes are refused", "[http][parser]") {
    // CL.TE and TE.CL
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                    "Content-Length: 4\r\n\r\n0\r\n\r\n") == 400);
    // Repeated or list-valued Content-Length, with differing values or agreeing ones.
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                    "Content-Length: 5\r\n\r\nabcde") == 400);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                    "Content-Length: 4\r\n\r\nabcd") == 400);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\nabcd") == 400);
    // Transfer codings: unknown ones are 501, chunked must be there once and last.
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n") == 501);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") ==
          501);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n") == 501);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n") ==
          400);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n") == 400);
    CHECK(status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n") == 400);
    // Case does not matter for the coding name.
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n") ==
          0);
}

TEST_CASE("what http-parser's lenient build accepts is refused", "[http][parser]") {
    // Each is refused whether it arrives at once or a byte at a time, and nothing of the request
    // reaches the handler (no head delivered).
    const std::vector<std::string> refused = {
        // obs-fold: a continuation line, also one before the first field
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n",
        "GET / HTTP/1.1\r\n Host: h\r\n\r\n",
        // bare LF after the request line, after a field, as the blank line
        "GET / HTTP/1.1\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n\n",
        "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        // CR without LF: inside a line, ending the head
        "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n\rX",
        // NUL in a field value, a field name, the target
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"s,
        "GET / HTTP/1.1\r\nHost: h\r\nX\0A: ab\r\n\r\n"s,
        "GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n"s,
        // anything but HTTP/<d>.<d> at the end of the request line
        "GET / HTTX/1.1\r\nHost: h\r\n\r\n",
        "GET / http/1.1\r\nHost: h\r\n\r\n",
        "GET /\r\n\r\n",
        // chunk data followed by two other bytes than CRLF; a chunk-size line ended by CR only
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\rXhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        // trailers: folded, bare LF, CR without LF at the end
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n z\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rX",
    };
    for (const std::string& in : refused) {
        for (std::size_t step : {std::size_t{0}, std::size_t{1}}) {
            INFO("input: " << in << " step " << step);
            Fixture f;
            f.feed(in, step);
            REQUIRE(f.parser.failed());
            CHECK(f.parser.error()->status == 400);
            if (in.rfind("POST", 0) != 0) CHECK(f.rec.heads.empty());
        }
    }
    // The strict forms of the same requests are fine, and so are empty lines before a request.
    CHECK(status_of("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nX-A: a b\r\n\r\n") == 0);
    CHECK(status_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n0\r\nX: y\r\n\r\n",
                    {}, 1) == 0);
}

TEST_CASE("the framing check follows pipelined requests and paused bodies", "[http][parser]") {
    // Body bytes that look like a bad head are body bytes; the request after them is checked.
    const std::string good =
        "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n\n \r\0X\r\n\r\n"s
        "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\n \r\0\r\n0\r\n\r\n"s
        "GET /c HTTP/1.1\r\nHost: h\r\n\r\n"s;
    for (std::size_t step : {std::size_t{0}, std::size_t{1}, std::size_t{7}}) {
        Fixture f;
        f.feed(good, step);
        REQUIRE_FALSE(f.parser.failed());
        REQUIRE(f.rec.heads.size() == 3);
        CHECK(f.rec.bodies[0] == "\n \r\0X\r\n\r\n"s);
        CHECK(f.rec.bodies[1] == "\n \r\0"s);
    }
    Fixture f;
    f.feed("GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n");
    CHECK(f.rec.heads.size() == 1);
    REQUIRE(f.parser.failed());
    CHECK(f.parser.error()->status == 400);
    CHECK(f.parser.target_so_far() == "/bad");  // the error response can still tell /v2/ paths

    // Paused inside on_body, then fed again in smaller pieces than before (as a connection
    // does when its buffer is split): bytes already checked are not checked twice.
    struct Pauser : RequestParser::Callbacks {
        RequestParser* parser = nullptr;
        std::string body;
        int heads = 0;
        void on_request_head(Request&&) override { ++heads; }
        void on_body(std::string_view d) override {
            body.append(d);
            parser->pause();
        }
        void on_message_complete() override {}
    } rec;
    RequestParser parser(HttpLimits{}, rec);
    rec.parser = &parser;
    const std::string in =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n"
        "0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    std::size_t at = parser.feed(in);
    for (int rounds = 0; at < in.size() && !parser.failed() && rounds < 100; ++rounds) {
        parser.resume();
        at += parser.feed(std::string_view(in).substr(at, 3));
    }
    CHECK_FALSE(parser.failed());
    CHECK(rec.body == "abcd");
    CHECK(rec.heads == 2);
}

TEST_CASE("pause and resume", "[http][parser]") {
    Fixture f;
    f.rec.pause_on_head = true;
    f.rec.pause_on_complete = true;
    std::string in =
        "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
        "Expect: 100-continue\r\n\r\nxyz"
        "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    std::size_t n = f.parser.feed(in);
    REQUIRE(f.parser.paused());
    REQUIRE(f.rec.heads.size() == 1);
    CHECK(f.rec.heads[0].expect_continue);
    CHECK(f.rec.bodies[0].empty());
    CHECK(f.parser.in_body());
    // Paused: consumes nothing.
    CHECK(f.parser.feed(std::string_view(in).substr(n)) == 0);
    f.parser.resume();
    std::size_t m = f.parser.feed(std::string_view(in).substr(n));
    CHECK(f.rec.bodies[0] == "xyz");
    CHECK(f.rec.complete == 1);
    REQUIRE(f.parser.paused());
    CHECK(f.rec.heads.size() == 1);  // the pipelined request waits
    f.parser.resume();
    f.rec.pause_on_head = false;
    f.rec.pause_on_complete = false;
    f.parser.feed(std::string_view(in).substr(n + m));
    REQUIRE(f.rec.heads.size() == 2);
    CHECK(f.rec.heads[1].path == "/b");
    CHECK(f.rec.complete == 2);
}

TEST_CASE("pausing inside on_body holds the rest of the body", "[http][parser]") {
    struct Pauser : RequestParser::Callbacks {
        RequestParser* parser = nullptr;
        std::string body;
        int completes = 0;
        void on_request_head(Request&&) override {}
        void on_body(std::string_view d) override {
            body.append(d);
            parser->pause();
        }
        void on_message_complete() override { ++completes; }
    } rec;
    RequestParser parser(HttpLimits{}, rec);
    rec.parser = &parser;
    std::string head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::string in = head + "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
    std::size_t n = parser.feed(in);
    CHECK(rec.body == "ab");
    CHECK(parser.paused());
    parser.resume();
    n += parser.feed(std::string_view(in).substr(n));
    CHECK(rec.body == "abcd");
    parser.resume();
    n += parser.feed(std::string_view(in).substr(n));
    CHECK(n == in.size());
    CHECK(rec.completes == 1);
}

TEST_CASE("end of stream mid-request", "[http][parser]") {
    Fixture f;
    f.feed("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(f.parser.finish());
    Fixture g;
    g.feed("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc");
    CHECK_FALSE(g.parser.finish());
    CHECK(g.parser.error()->status == 400);
}
