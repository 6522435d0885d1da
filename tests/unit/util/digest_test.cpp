// SHA-256, HMAC and hex (src/util/digest.cpp) against published vectors.
#include "drayage/util/digest.hpp"

#include <catch2/catch.hpp>
#include <string>

using namespace drayage::digest;

namespace {
const std::string kAbc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
}  // namespace

TEST_CASE("sha256_hex matches FIPS 180-2 vectors", "[digest][sha256]") {
    CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex("abc") == kAbc);
}

TEST_CASE("Sha256 over pieces equals the one-shot hash", "[digest][sha256]") {
    auto sha = Sha256::start();
    REQUIRE(sha.has_value());
    sha->update("a");
    sha->update("");
    sha->update("bc");
    CHECK(sha->finish_hex() == kAbc);

    const std::string big(1 << 20, 'x');
    auto pieces = Sha256::start();
    REQUIRE(pieces.has_value());
    for (std::size_t at = 0; at < big.size(); at += 4099)
        pieces->update(std::string_view(big).substr(at, 4099));
    CHECK(pieces->finish_hex() == sha256_hex(big));
}

TEST_CASE("hmac_sha256 matches RFC 4231", "[digest][hmac]") {
    // Test cases 1, 2 and 6 (a key longer than the block is hashed first).
    CHECK(hex_encode(hmac_sha256(std::string(20, '\x0b'), "Hi There")) ==
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    CHECK(hex_encode(hmac_sha256("Jefe", "what do ya want for nothing?")) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK(hex_encode(hmac_sha256(std::string(131, '\xaa'),
                                 "Test Using Larger Than Block-Size Key - Hash Key First")) ==
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST_CASE("hmac_sha1 matches RFC 2202", "[digest][hmac]") {
    CHECK(hex_encode(hmac_sha1("Jefe", "what do ya want for nothing?")) ==
          "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
}

TEST_CASE("hex_encode is lower-case, two digits a byte", "[digest][hex]") {
    CHECK(hex_encode("") == "");
    CHECK(hex_encode(std::string("\x00\xff\x10\xab", 4)) == "00ff10ab");
}
