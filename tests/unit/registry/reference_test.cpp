// The digest, repository-name and tag grammar of Docker Distribution 2.8 and the OCI
// distribution spec (src/registry/reference.cpp).
#include "drayage/registry/reference.hpp"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "drayage/s3/layout.hpp"

using drayage::registry::BlobDigest;
using drayage::registry::DigestAlgorithm;
using drayage::registry::is_valid_repository_name;
using drayage::registry::is_valid_tag;

namespace {
const std::string kHex = "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";
}  // namespace

TEST_CASE("BlobDigest parses sha256/384/512 and rejects everything else", "[reference][digest]") {
    auto d = BlobDigest::parse("sha256:" + kHex);
    REQUIRE(d.ok());
    CHECK(d->algorithm() == DigestAlgorithm::sha256);
    CHECK(d->algorithm_name() == "sha256");
    CHECK(d->hex() == kHex);
    CHECK(d->str() == "sha256:" + kHex);
    CHECK(BlobDigest::from_sha256_hex(kHex)->str() == d->str());

    CHECK(BlobDigest::parse("sha384:" + std::string(96, 'a'))->algorithm() ==
          DigestAlgorithm::sha384);
    CHECK(BlobDigest::parse("sha512:" + std::string(128, '0'))->algorithm() ==
          DigestAlgorithm::sha512);

    for (const std::string& bad : std::vector<std::string>{
             std::string(""), std::string("sha256"), "sha256:" + kHex.substr(1),
             "sha256:" + kHex + "0", "SHA256:" + kHex,
             "sha256:" + std::string(63, 'a') + "A",  // upper-case hex
             "sha256:" + std::string(63, 'a') + "g", "sha512:" + kHex,
             "sha384:" + std::string(128, 'a'), "md5:d41d8cd98f00b204e9800998ecf8427e",
             "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",  // valid OCI
             ":" + kHex, "sha256+:" + kHex, "sha256:", " sha256:" + kHex}) {
        INFO(bad);
        auto r = BlobDigest::parse(bad);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "DIGEST_INVALID");
        CHECK(r.error().status == 400);
    }
}

TEST_CASE("repository names follow the distribution grammar", "[reference][name]") {
    for (const char* good : {"a", "library/ubuntu", "a/b/c", "my-app", "my--app", "my_app",
                             "my__app", "my.app", "0", "a1/b2.c3_d4-e5", "docker.io/library/x"}) {
        INFO(good);
        CHECK(is_valid_repository_name(good));
    }
    for (const char* bad : {"", "A", "a/", "/a", "a//b", "-a", "a-", "a.", "a..b", "a___b", "a._b",
                            "a_-b", "a b", "a:b", "Library/ubuntu", "a/.b", "a/b/"}) {
        INFO(bad);
        CHECK_FALSE(is_valid_repository_name(bad));
    }
    const std::string at_limit = std::string(127, 'a') + "/" + std::string(127, 'b');
    CHECK(at_limit.size() == 255);
    CHECK(is_valid_repository_name(at_limit));
    CHECK_FALSE(is_valid_repository_name(at_limit + "c"));
    CHECK(drayage::registry::validate_repository_name("A").error().code == "NAME_INVALID");
}

TEST_CASE("tags follow [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "[reference][tag]") {
    CHECK(is_valid_tag("latest"));
    CHECK(is_valid_tag("v1.2.3-rc_1"));
    CHECK(is_valid_tag("_x"));
    CHECK(is_valid_tag(std::string(128, 'a')));
    CHECK_FALSE(is_valid_tag(std::string(129, 'a')));
    CHECK_FALSE(is_valid_tag(""));
    CHECK_FALSE(is_valid_tag(".x"));
    CHECK_FALSE(is_valid_tag("-x"));
    CHECK_FALSE(is_valid_tag("a/b"));
    CHECK_FALSE(is_valid_tag("a:b"));
    CHECK(drayage::registry::validate_tag("a b").error().code == "TAG_INVALID");
}

TEST_CASE("a validated digest gives the bucket layout its parts", "[reference][layout]") {
    const auto d = BlobDigest::parse("sha512:" + std::string(128, '0'));
    REQUIRE(d.ok());
    CHECK(drayage::s3::BucketLayout("/reg").blob_data_key(*d) ==
          "reg/docker/registry/v2/blobs/sha512/00/" + std::string(128, '0') + "/data");
    CHECK(drayage::s3::link_content(*d) == d->str());
}
