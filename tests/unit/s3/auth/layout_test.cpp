// Digest/name/tag grammar and the Distribution 2.8 bucket keys. Expected keys are those the
// real docker-registry (2.8.2, s3 driver, rootdirectory /reg) wrote on the test machine
// (see TESTBED.md in the shared notes).
#include "drayage/s3/layout.hpp"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "drayage/registry/reference.hpp"

using drayage::registry::BlobDigest;
using drayage::registry::DigestAlgorithm;
using drayage::registry::is_valid_repository_name;
using drayage::registry::is_valid_tag;
using drayage::s3::BucketLayout;

namespace {
const std::string kHex = "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";
BlobDigest digest() {
    return *BlobDigest::parse("sha256:" + kHex);
}
}  // namespace

TEST_CASE("BlobDigest parses sha256/384/512 and rejects everything else", "[layout][digest]") {
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

TEST_CASE("repository names follow the distribution grammar", "[layout][name]") {
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

TEST_CASE("tags follow [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "[layout][tag]") {
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

TEST_CASE("rootdirectory is trimmed like the s3 driver's s3Path()", "[layout][root]") {
    CHECK(BucketLayout("").root_prefix().empty());
    CHECK(BucketLayout("/").root_prefix().empty());
    CHECK(BucketLayout("///").root_prefix().empty());
    CHECK(BucketLayout("/reg").root_prefix() == "reg/");
    CHECK(BucketLayout("reg").root_prefix() == "reg/");
    CHECK(BucketLayout("/reg/").root_prefix() == "reg/");
    CHECK(BucketLayout("/a/b//").root_prefix() == "a/b/");
    CHECK(BucketLayout("").blob_data_key(digest()) ==
          "docker/registry/v2/blobs/sha256/4b/" + kHex + "/data");
}

TEST_CASE("keys match what docker-registry 2.8 writes", "[layout][keys]") {
    const BucketLayout layout("/reg");
    const std::string repo = "reg/docker/registry/v2/repositories/library/alpine/";
    CHECK(layout.blob_data_key(digest()) ==
          "reg/docker/registry/v2/blobs/sha256/4b/" + kHex + "/data");
    CHECK(layout.layer_link_key("library/alpine", digest()) ==
          repo + "_layers/sha256/" + kHex + "/link");
    CHECK(layout.manifest_revision_link_key("library/alpine", digest()) ==
          repo + "_manifests/revisions/sha256/" + kHex + "/link");
    CHECK(layout.tag_current_link_key("library/alpine", "3.18") ==
          repo + "_manifests/tags/3.18/current/link");
    CHECK(layout.tag_index_link_key("library/alpine", "3.18", digest()) ==
          repo + "_manifests/tags/3.18/index/sha256/" + kHex + "/link");
    CHECK(layout.upload_data_key("library/alpine", "0f3c1a2e-6b1d-4b8e-9f00-1c2d3e4f5a6b") ==
          repo + "_uploads/0f3c1a2e-6b1d-4b8e-9f00-1c2d3e4f5a6b/data");
}

TEST_CASE("a link object holds the digest: 71 bytes for sha256, no newline", "[layout][link]") {
    const std::string body = drayage::s3::link_content(digest());
    CHECK(body == "sha256:" + kHex);
    CHECK(body.size() == 71);
}
