#include "drayage/config/size.hpp"

#include <catch2/catch.hpp>
#include <cstdint>

using drayage::config::format_duration;
using drayage::config::format_size;
using drayage::config::GiB;
using drayage::config::KiB;
using drayage::config::MiB;
using drayage::config::parse_duration;
using drayage::config::parse_size;
using std::chrono::milliseconds;

namespace {
std::uint64_t size_of(std::string_view text) {
    auto r = parse_size(text);
    INFO(text << ": " << (r ? std::string() : r.error().message));
    REQUIRE(r.ok());
    return *r;
}
std::string size_error(std::string_view text) {
    auto r = parse_size(text);
    INFO(text);
    REQUIRE_FALSE(r.ok());
    return r.error().message;
}
long ms_of(std::string_view text) {
    auto r = parse_duration(text);
    INFO(text << ": " << (r ? std::string() : r.error().message));
    REQUIRE(r.ok());
    return r->count();
}
std::string duration_error(std::string_view text) {
    auto r = parse_duration(text);
    INFO(text);
    REQUIRE_FALSE(r.ok());
    return r.error().message;
}
}  // namespace

TEST_CASE("parse_size reads plain bytes and binary and decimal units") {
    CHECK(size_of("0") == 0);
    CHECK(size_of("5242880") == 5 * MiB);
    CHECK(size_of("512MiB") == 512 * MiB);
    CHECK(size_of("50GiB") == 50 * GiB);
    CHECK(size_of("10MB") == 10'000'000);
    CHECK(size_of("1KB") == 1000);
    CHECK(size_of("64k") == 64 * KiB);
    CHECK(size_of("64K") == 64 * KiB);
    CHECK(size_of("2Gi") == 2 * GiB);
    CHECK(size_of("1 TiB") == 1024 * GiB);
    CHECK(size_of("  7B ") == 7);
    CHECK(size_of("1.5GiB") == 3 * GiB / 2);
    CHECK(size_of("0.5k") == 512);
    CHECK(size_of("1.3KiB") == 1331);  // fraction truncated to whole bytes
    CHECK(size_of("18446744073709551615") == UINT64_MAX);
    CHECK(size_of("15PiB") == 15 * 1024 * 1024 * GiB);
}

TEST_CASE("parse_size rejects junk, negatives and overflow") {
    CHECK_THAT(size_error(""), Catch::Contains("empty"));
    CHECK_THAT(size_error("   "), Catch::Contains("empty"));
    CHECK_THAT(size_error("-1"), Catch::Contains("negative"));
    CHECK_THAT(size_error("-5MiB"), Catch::Contains("negative"));
    CHECK_THAT(size_error("lots"), Catch::Contains("does not start with a number"));
    CHECK_THAT(size_error("MiB"), Catch::Contains("does not start with a number"));
    CHECK_THAT(size_error("5XB"), Catch::Contains("unknown unit \"XB\""));
    CHECK_THAT(size_error("5 MiB extra"), Catch::Contains("unknown unit"));
    CHECK_THAT(size_error("1e9"), Catch::Contains("unknown unit"));
    CHECK_THAT(size_error("1.5"), Catch::Contains("fractional number of bytes"));
    CHECK_THAT(size_error("1."), Catch::Contains("does not start with a number"));
    CHECK_THAT(size_error("18446744073709551616"), Catch::Contains("larger than 2^64-1"));
    CHECK_THAT(size_error("16384PiB"), Catch::Contains("larger than 2^64-1"));
    CHECK_THAT(size_error("99999999999999999999999GiB"), Catch::Contains("larger than 2^64-1"));
}

TEST_CASE("parse_duration reads units, compounds and plain seconds") {
    CHECK(ms_of("250ms") == 250);
    CHECK(ms_of("30s") == 30'000);
    CHECK(ms_of("5m") == 300'000);
    CHECK(ms_of("1h") == 3'600'000);
    CHECK(ms_of("2h30m") == 9'000'000);
    CHECK(ms_of("2h 30m") == 9'000'000);
    CHECK(ms_of("1m30s500ms") == 90'500);
    CHECK(ms_of("30") == 30'000);
    CHECK(ms_of("0") == 0);
    CHECK(ms_of("1.5s") == 1500);
    CHECK(ms_of("0.5h") == 1'800'000);
    CHECK(ms_of("1.5") == 1500);
    CHECK(ms_of("10S") == 10'000);
}

TEST_CASE("parse_duration rejects junk, negatives, sub-millisecond and overflow") {
    CHECK_THAT(duration_error(""), Catch::Contains("empty"));
    CHECK_THAT(duration_error("-5s"), Catch::Contains("negative"));
    CHECK_THAT(duration_error("soon"), Catch::Contains("not a duration"));
    CHECK_THAT(duration_error("5d"), Catch::Contains("unknown unit \"d\""));
    CHECK_THAT(duration_error("100us"), Catch::Contains("unknown unit \"us\""));
    CHECK_THAT(duration_error("1h30"), Catch::Contains("every number needs a unit"));
    CHECK_THAT(duration_error("1.0005s"), Catch::Contains("finer than a millisecond"));
    CHECK_THAT(duration_error("99999999999999999999h"), Catch::Contains("too long"));
    CHECK_THAT(duration_error("9999999999999999h"), Catch::Contains("too long"));
}

TEST_CASE("format_size and format_duration read back to the same value") {
    CHECK(format_size(10 * GiB) == "10GiB");
    CHECK(format_size(5 * MiB) == "5MiB");
    CHECK(format_size(1000) == "1000");
    CHECK(format_size(0) == "0");
    CHECK(format_size(1536 * MiB) == "1536MiB");
    CHECK(format_duration(milliseconds(300'000)) == "5m");
    CHECK(format_duration(milliseconds(90'500)) == "1m30s500ms");
    CHECK(format_duration(milliseconds(0)) == "0s");
    const std::uint64_t values[] = {0, 1, 3 * GiB / 2, UINT64_MAX, 5 * MiB + 1};
    for (std::uint64_t v : values) {
        CHECK(size_of(format_size(v)) == v);
    }
    for (long v : {0L, 1L, 999L, 1000L, 86'400'000L, 3'723'004L}) {
        CHECK(ms_of(format_duration(milliseconds(v))) == v);
    }
}
