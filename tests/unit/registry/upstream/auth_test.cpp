#include <catch2/catch.hpp>
#include <ctime>
#include <string>
#include <vector>

#include "drayage/registry/upstream.hpp"
#include "drayage/registry/upstream_auth.hpp"

using namespace drayage::registry;
using namespace std::chrono_literals;
using Clock = TokenCache::Clock;

TEST_CASE("Docker Hub's bearer challenge") {
    auto cs = parse_www_authenticate(
        R"(Bearer realm="https://auth.docker.io/token",service="registry.docker.io",)"
        R"(scope="repository:library/alpine:pull")");
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].scheme == "bearer");
    CHECK(cs[0].param("realm") == "https://auth.docker.io/token");
    CHECK(cs[0].param("service") == "registry.docker.io");
    CHECK(cs[0].param("scope") == "repository:library/alpine:pull");
    CHECK(cs[0].param("missing").empty());
}

TEST_CASE("commas and escaped quotes inside quoted strings") {
    auto cs = parse_www_authenticate(
        R"(Bearer realm="http://h/token?a=1,b=2", scope="repository:a/b:pull,push", )"
        R"(error="say \"no\", twice")");
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].param("realm") == "http://h/token?a=1,b=2");
    CHECK(cs[0].param("scope") == "repository:a/b:pull,push");
    CHECK(cs[0].param("error") == "say \"no\", twice");
}

TEST_CASE("several challenges in one field, any case, spaces around '='") {
    auto cs = parse_www_authenticate(
        R"(Basic realm="Registry Realm" , BEARER Realm = "http://t/token" ,service=reg, )"
        R"(Negotiate abc123==, Basic)");
    REQUIRE(cs.size() == 4);
    CHECK(cs[0].scheme == "basic");
    CHECK(cs[0].param("realm") == "Registry Realm");
    CHECK(cs[1].scheme == "bearer");
    CHECK(cs[1].param("REALM") == "http://t/token");
    CHECK(cs[1].param("service") == "reg");  // unquoted token value
    CHECK(cs[2].scheme == "negotiate");
    CHECK(cs[2].token68 == "abc123==");
    CHECK(cs[2].params.empty());
    CHECK(cs[3].scheme == "basic");
    CHECK(cs[3].params.empty());
}

TEST_CASE("empty list elements and a bare scheme") {
    auto cs = parse_www_authenticate(" , ,Bearer realm=\"r\",, service=\"s\" ,");
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].param("realm") == "r");
    CHECK(cs[0].param("service") == "s");
    CHECK(parse_www_authenticate("").empty());
    CHECK(parse_www_authenticate("   ").empty());
}

TEST_CASE("malformed input keeps what parsed before it") {
    // Unterminated quote: the challenge so far is kept, nothing after it is invented.
    auto cs = parse_www_authenticate(R"(Bearer realm="http://t/token",service="reg)");
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].param("realm") == "http://t/token");
    CHECK(cs[0].param("service").empty());
    // Junk where a scheme should be.
    cs = parse_www_authenticate(R"(Basic realm="x", @@@ Bearer realm="y")");
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].scheme == "basic");
}

TEST_CASE("token realms: plain http(s) URLs only") {
    CHECK(unusable_token_realm("https://auth.docker.io/token").empty());
    CHECK(unusable_token_realm("HTTP://127.0.0.1:5001/token?x=1").empty());
    CHECK(unusable_token_realm("http://h").empty());
    // Other protocols: gopher and dict write raw bytes to any port, file reads local files.
    CHECK_THAT(unusable_token_realm("gopher://127.0.0.1:6379/_SET%20a%201%0D%0A"),
               Catch::Contains("not an http:// or https:// URL"));
    for (const char* r : {"file:///etc/passwd", "dict://127.0.0.1:11211/stats", "ftp://h/x",
                          "//h/token", "/token", "httpx://h/", "http:/h/token"})
        CHECK_FALSE(unusable_token_realm(r).empty());
    // No host.
    for (const char* r : {"http://", "https:///token", "http://?x", "http://@h/", "http://:80/"})
        CHECK_THAT(unusable_token_realm(r), Catch::Contains("no host"));
    // Control characters, spaces and non-ASCII bytes anywhere.
    using namespace std::string_literals;
    for (const std::string& r :
         {"http://h/token\r\nX-Injected: 1"s, "http://h/to ken"s, "http://h/\x7f"s,
          "http://h\0/token"s, "http://h/\xc3\xa9"s, "http://h/\ttoken"s})
        CHECK_THAT(unusable_token_realm(r), Catch::Contains("control character"));
}

TEST_CASE("RFC 3339 timestamps") {
    using namespace std::chrono;
    auto t = parse_rfc3339("2024-01-02T03:04:05Z");
    REQUIRE(t);
    CHECK(duration_cast<seconds>(t->time_since_epoch()).count() == 1704164645);
    auto frac = parse_rfc3339("2024-01-02T03:04:05.250Z");
    REQUIRE(frac);
    CHECK(duration_cast<milliseconds>(*frac - *t).count() == 250);
    auto off = parse_rfc3339("2024-01-02T05:04:05+02:00");
    REQUIRE(off);
    CHECK(*off == *t);
    CHECK(!parse_rfc3339("2024-01-02 03:04:05"));  // no zone
    CHECK(!parse_rfc3339("2024-13-02T03:04:05Z"));
    CHECK(!parse_rfc3339("2024-02-30T03:04:05Z"));
    CHECK(!parse_rfc3339("yesterday"));
    CHECK(!parse_rfc3339("2999-01-01T00:00:00Z"));  // past what system_clock can hold
}

TEST_CASE("token responses") {
    auto now = std::chrono::system_clock::now();
    SECTION("token with expires_in") {
        auto g = parse_token_response(R"({"token":"abc","expires_in":300})", now);
        REQUIRE(g);
        CHECK(g->token == "abc");
        CHECK(g->lifetime == 300s);
    }
    SECTION("OAuth2 access_token, no expires_in: 60 s per spec") {
        auto g = parse_token_response(R"({"access_token":"xyz"})", now);
        REQUIRE(g);
        CHECK(g->token == "xyz");
        CHECK(g->lifetime == 60s);
    }
    SECTION("token wins over access_token; nonsense expires_in falls back to 60 s") {
        auto g = parse_token_response(R"({"token":"t","access_token":"a","expires_in":-5})", now);
        REQUIRE(g);
        CHECK(g->token == "t");
        CHECK(g->lifetime == 60s);
    }
    SECTION("issued_at counts the lifetime from the issue time, clamped") {
        auto issued = std::chrono::floor<std::chrono::seconds>(now) - 100s;
        std::time_t tt = std::chrono::system_clock::to_time_t(issued);
        char buf[32];
        std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&tt));
        auto g = parse_token_response(
            std::string(R"({"token":"t","expires_in":300,"issued_at":")") + buf + "\"}", now);
        REQUIRE(g);
        CHECK(g->lifetime >= 199s);
        CHECK(g->lifetime <= 200s);
        // Issued "in the future" (registry clock ahead): never longer than expires_in.
        g = parse_token_response(
            R"({"token":"t","expires_in":300,"issued_at":"2199-01-01T00:00:00Z"})", now);
        REQUIRE(g);
        CHECK(g->lifetime == 300s);
        // Long expired by our clock: usable once, not cached.
        g = parse_token_response(
            R"({"token":"t","expires_in":300,"issued_at":"2001-01-01T00:00:00Z"})", now);
        REQUIRE(g);
        CHECK(g->lifetime == 0s);
    }
    SECTION("errors") {
        CHECK(parse_token_response("not json", now).error().code == "TOKEN_INVALID");
        CHECK(parse_token_response("[1,2]", now).error().code == "TOKEN_INVALID");
        CHECK(!parse_token_response(R"({"token":""})", now));
        CHECK(!parse_token_response(R"({"token":42})", now));
    }
}

TEST_CASE("token cache: one fetch per scope, waiters served in order") {
    TokenCache cache;
    Clock::time_point t0{};
    std::vector<std::string> got;
    auto waiter = [&](const char* who) {
        return [&got, who](drayage::Result<std::string> r) {
            got.push_back(std::string(who) + "=" + (r ? *r : r.error().code));
        };
    };
    std::string token;
    CHECK(cache.acquire("k", t0, waiter("a"), &token) == TokenCache::Lookup::kFetch);
    CHECK(cache.acquire("k", t0, waiter("b"), &token) == TokenCache::Lookup::kWait);
    // Another scope has its own fetch.
    CHECK(cache.acquire("other", t0, waiter("c"), &token) == TokenCache::Lookup::kFetch);
    CHECK(got.empty());
    cache.complete("k", TokenGrant{"tok1", 60s}, t0);
    CHECK(got == std::vector<std::string>{"a=tok1", "b=tok1"});
    CHECK(!cache.fetching("k"));
    CHECK(cache.fetching("other"));

    // Cached now: a hit, the waiter is not kept.
    bool called = false;
    CHECK(cache.acquire(
              "k", t0 + 10s, [&](auto) { called = true; }, &token) == TokenCache::Lookup::kHit);
    CHECK(token == "tok1");
    CHECK(!called);

    // A failed fetch reaches every waiter and caches nothing.
    cache.complete("other", drayage::make_error("UNAUTHORIZED", "no"), t0);
    CHECK(got.back() == "c=UNAUTHORIZED");
    CHECK(cache.acquire("other", t0, waiter("d"), &token) == TokenCache::Lookup::kFetch);
}

TEST_CASE("token cache: refresh shortly before expiry") {
    TokenCache cache;
    Clock::time_point t0{};
    std::string token;
    CHECK(TokenCache::refresh_margin(60s) == 6s);
    CHECK(TokenCache::refresh_margin(3600s) == 30s);
    REQUIRE(cache.acquire(
                "k", t0, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
    cache.complete("k", TokenGrant{"tok", 60s}, t0);
    CHECK(cache.acquire(
              "k", t0 + 53s, [](auto) {}, &token) == TokenCache::Lookup::kHit);
    // 54 s = 60 s minus the 6 s margin: fetch a fresh one.
    CHECK(cache.acquire(
              "k", t0 + 54s, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
}

TEST_CASE("token cache: a zero-lifetime token serves the waiters but is not kept") {
    TokenCache cache;
    Clock::time_point t0{};
    std::string token, seen;
    REQUIRE(cache.acquire(
                "k", t0, [&](auto r) { seen = *r; }, &token) == TokenCache::Lookup::kFetch);
    cache.complete("k", TokenGrant{"once", 0s}, t0);
    CHECK(seen == "once");
    CHECK(cache.size() == 0);
    CHECK(cache.acquire(
              "k", t0, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
}

TEST_CASE("token cache: invalidate drops only the token that failed") {
    TokenCache cache;
    Clock::time_point t0{};
    std::string token;
    REQUIRE(cache.acquire(
                "k", t0, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
    cache.complete("k", TokenGrant{"new", 300s}, t0);
    cache.invalidate("k", "old");  // a request that used an older token got a 401
    CHECK(cache.acquire(
              "k", t0, [](auto) {}, &token) == TokenCache::Lookup::kHit);
    CHECK(token == "new");
    cache.invalidate("k", "new");
    CHECK(cache.acquire(
              "k", t0, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
}

TEST_CASE("token cache: a waiter may acquire again from inside its callback") {
    TokenCache cache;
    Clock::time_point t0{};
    std::string token, inner;
    TokenCache::Lookup again{};
    REQUIRE(cache.acquire(
                "k", t0,
                [&](auto) {
                    again = cache.acquire(
                        "k", t0, [](auto) {}, &inner);
                },
                &token) == TokenCache::Lookup::kFetch);
    cache.complete("k", TokenGrant{"tok", 60s}, t0);
    CHECK(again == TokenCache::Lookup::kHit);
    CHECK(inner == "tok");
}

TEST_CASE("token cache prunes expired tokens when it grows") {
    TokenCache cache;
    Clock::time_point t0{};
    std::string token;
    for (std::size_t i = 0; i < TokenCache::kPruneAbove; ++i) {
        std::string key = "k" + std::to_string(i);
        REQUIRE(cache.acquire(
                    key, t0, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
        cache.complete(key, TokenGrant{"t", 60s}, t0);
    }
    CHECK(cache.size() == TokenCache::kPruneAbove);
    REQUIRE(cache.acquire(
                "late", t0 + 3600s, [](auto) {}, &token) == TokenCache::Lookup::kFetch);
    cache.complete("late", TokenGrant{"t", 60s}, t0 + 3600s);
    CHECK(cache.size() == 1);
}

TEST_CASE("upstream status errors") {
    auto e = upstream_status_error(
        404, R"({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]})",
        "GET /v2/a/manifests/b");
    CHECK(e.code == "NOT_FOUND");
    CHECK(e.status == 404);
    CHECK(e.message.find("MANIFEST_UNKNOWN (manifest unknown)") != std::string::npos);
    CHECK(upstream_status_error(401, "", "x").code == "UNAUTHORIZED");
    CHECK(upstream_status_error(429, "", "x").code == "TOOMANYREQUESTS");
    auto other = upstream_status_error(503, "busy\n", "x");
    CHECK(other.code == "UPSTREAM_503");
    CHECK(other.status == 503);
    CHECK(other.message == "x answered 503: busy ");
}
