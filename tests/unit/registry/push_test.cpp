// Pure parts of the push path: query parameters, upload ids, Content-Range, the Range header, S3
// timestamps, and which headers the forwarder drops.
#include "drayage/registry/push.hpp"

#include <catch2/catch.hpp>
#include <optional>
#include <set>
#include <string>

#include "drayage/registry/forwarder.hpp"

using namespace drayage::registry;

TEST_CASE("upload ids are version-4 UUIDs that do not repeat") {
    std::set<std::string> seen;
    for (int i = 0; i < 1000; ++i) {
        std::string id = new_upload_uuid();
        REQUIRE(id.size() == 36);
        for (std::size_t p : {8u, 13u, 18u, 23u})
            REQUIRE(id[p] == '-');
        REQUIRE(id[14] == '4');
        REQUIRE(std::string("89ab").find(id[19]) != std::string::npos);
        for (char c : id)
            REQUIRE(std::string("0123456789abcdef-").find(c) != std::string::npos);
        seen.insert(id);
    }
    REQUIRE(seen.size() == 1000);
}

TEST_CASE("Content-Range of a PATCH") {
    auto r = parse_upload_range("0-1023");
    REQUIRE(r);
    CHECK(r->first == 0);
    CHECK(r->last == 1023);
    r = parse_upload_range("bytes 1024-2047/4096");
    REQUIRE(r);
    CHECK(r->first == 1024);
    CHECK(r->last == 2047);
    r = parse_upload_range("5-5");
    REQUIRE(r);
    CHECK(r->first == 5);

    for (const char* bad :
         {"", "-", "5-", "-5", "7-3", "a-b", "1 - 2", "0-99999999999999999999", "bytes=0-1"}) {
        INFO(bad);
        auto e = parse_upload_range(bad);
        REQUIRE_FALSE(e);
        CHECK(e.error().status == 416);
    }
}

TEST_CASE("a chunk's Content-Range must follow on and cover its length") {
    // No Content-Range: any chunk follows on.
    CHECK(check_chunk_range("", 10, 0));
    CHECK(check_chunk_range("", std::nullopt, 5000));
    // At the offset, as long as the body's declared length.
    CHECK(check_chunk_range("0-999", 1000, 0));
    CHECK(check_chunk_range("1000-1000", 1, 1000));
    CHECK(check_chunk_range("bytes 1000-1999/3000", 1000, 1000));
    // A chunked body has no declared length: only the start is checked.
    CHECK(check_chunk_range("1000-1099", std::nullopt, 1000));

    struct Bad {
        const char* range;
        std::optional<std::uint64_t> length;
        std::uint64_t offset;
    };
    for (const Bad& b : {Bad{"1500-2499", 1000, 1000},  // a gap
                         Bad{"500-1499", 1000, 1000},   // an overlap
                         Bad{"1-1000", 1000, 0},        // the first chunk starts at 0
                         Bad{"1000-1099", 1000, 1000},  // shorter than the body
                         Bad{"1000-2999", 1000, 1000},  // longer than the body
                         Bad{"1000-1000", 0, 1000},     // an empty body covers no byte
                         Bad{"garbage", 10, 0},         // outside ^[0-9]+-[0-9]+$
                         Bad{"9-3", std::nullopt, 9}}) {
        INFO(b.range);
        auto st = check_chunk_range(b.range, b.length, b.offset);
        REQUIRE_FALSE(st);
        CHECK(st.error().status == 416);
        CHECK(st.error().code == "RANGE_INVALID");
        CHECK(st.error().message.find("continues at byte " + std::to_string(b.offset)) !=
              std::string::npos);
    }
}

TEST_CASE("Range header of an upload") {
    CHECK(upload_range_header(0) == "0-0");
    CHECK(upload_range_header(1) == "0-0");
    CHECK(upload_range_header(1024) == "0-1023");
    CHECK(upload_range_header(5ull << 30) == "0-5368709119");
}

TEST_CASE("S3 timestamps") {
    auto t = parse_s3_time("2026-11-28T09:00:00.000Z");
    REQUIRE(t);
    CHECK(*t == 1795856400);
    auto t2 = parse_s3_time("1970-01-01T00:00:10Z");
    REQUIRE(t2);
    CHECK(*t2 == 10);
    CHECK_FALSE(parse_s3_time(""));
    CHECK_FALSE(parse_s3_time("2026-13-01T00:00:00Z"));
    CHECK_FALSE(parse_s3_time("Sat, 28 Nov 2026 09:00:00 GMT"));
    CHECK_FALSE(parse_s3_time("2026-11-28T09:00:00+01"));
}

TEST_CASE("hop-by-hop headers are not forwarded") {
    for (const char* h :
         {"Connection", "keep-alive", "Transfer-Encoding", "TE", "Trailer", "Upgrade",
          "Proxy-Authorization", "Proxy-Connection", "Host", "Content-Length", "Expect"}) {
        INFO(h);
        CHECK(is_hop_by_hop(h, ""));
    }
    for (const char* h : {"Authorization", "Content-Type", "Accept", "Docker-Content-Digest",
                          "Location", "WWW-Authenticate", "Content-Range"}) {
        INFO(h);
        CHECK_FALSE(is_hop_by_hop(h, ""));
    }
    // Fields named by Connection are hop-by-hop for that message only.
    CHECK(is_hop_by_hop("X-Secret", "keep-alive, X-Secret"));
    CHECK(is_hop_by_hop("x-secret", " X-Secret ,close"));
    CHECK_FALSE(is_hop_by_hop("X-Secret-2", "X-Secret"));
}
