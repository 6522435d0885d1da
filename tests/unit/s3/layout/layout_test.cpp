// The Distribution 2.8 bucket keys. Expected keys are those the real docker-registry (2.8.2, s3
// driver, rootdirectory /reg) wrote on the test machine (see TESTBED.md in the shared notes).
#include "drayage/s3/layout.hpp"

#include <catch2/catch.hpp>
#include <string>

using drayage::s3::BucketLayout;
using drayage::s3::DigestParts;

namespace {
const std::string kHex = "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";
DigestParts digest() {
    return DigestParts("sha256", kHex);
}
}  // namespace

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
