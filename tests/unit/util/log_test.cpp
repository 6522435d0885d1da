#include "drayage/util/log.hpp"

#include <catch2/catch.hpp>

using drayage::log::json_escape;

TEST_CASE("json_escape keeps JSON valid for any input") {
    CHECK(json_escape("plain") == "plain");
    CHECK(json_escape("a\"b") == "a\\\"b");
    CHECK(json_escape("back\\slash") == "back\\\\slash");
    CHECK(json_escape("line\nbreak\ttab") == "line\\nbreak\\ttab");
    CHECK(json_escape(std::string_view("\x01\x1f", 2)) == "\\u0001\\u001f");
    CHECK(json_escape("caf\xc3\xa9") == "caf\xc3\xa9");  // UTF-8 passes through
}

TEST_CASE("log levels parse by name") {
    spdlog::level::level_enum l{};
    CHECK(drayage::log::parse_level("debug", l));
    CHECK(l == spdlog::level::debug);
    CHECK(drayage::log::parse_level("error", l));
    CHECK(l == spdlog::level::err);
    CHECK_FALSE(drayage::log::parse_level("loud", l));
}
