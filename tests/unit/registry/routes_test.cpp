#include "drayage/registry/routes.hpp"

#include <catch2/catch.hpp>
#include <vector>

#include "drayage/registry/front.hpp"

using namespace drayage::registry;

namespace {
const std::string kDigest = "sha256:" + std::string(64, 'a');
}

TEST_CASE("routes: base, catalog, health and metrics") {
    CHECK(parse_route("/v2/")->endpoint == Endpoint::base);
    CHECK(parse_route("/v2")->endpoint == Endpoint::base);
    CHECK(parse_route("/v2/_catalog")->endpoint == Endpoint::catalog);
    CHECK(parse_route("/healthz")->endpoint == Endpoint::healthz);
    CHECK(parse_route("/metrics")->endpoint == Endpoint::metrics);
    CHECK(parse_route("/v3/").error().status == 404);
    CHECK(parse_route("/").error().status == 404);
}

TEST_CASE("routes: blobs and manifests with nested names") {
    auto b = parse_route("/v2/library/alpine/blobs/" + kDigest);
    REQUIRE(b);
    CHECK(b->endpoint == Endpoint::blob);
    CHECK(b->name == "library/alpine");
    CHECK(b->reference == kDigest);

    auto m = parse_route("/v2/a/b/c/manifests/latest");
    REQUIRE(m);
    CHECK(m->endpoint == Endpoint::manifest);
    CHECK(m->name == "a/b/c");
    CHECK(m->reference == "latest");
    CHECK_FALSE(m->by_digest);

    auto md = parse_route("/v2/x/manifests/" + kDigest);
    REQUIRE(md);
    CHECK(md->by_digest);

    // A name may itself contain a "manifests" component: the endpoint is matched from the right.
    auto nested = parse_route("/v2/foo/manifests/bar/manifests/v1");
    REQUIRE(nested);
    CHECK(nested->name == "foo/manifests/bar");
    CHECK(nested->reference == "v1");

    auto t = parse_route("/v2/library/alpine/tags/list");
    REQUIRE(t);
    CHECK(t->endpoint == Endpoint::tags);
    CHECK(t->name == "library/alpine");
}

TEST_CASE("routes: uploads") {
    auto s = parse_route("/v2/team/app/blobs/uploads/");
    REQUIRE(s);
    CHECK(s->endpoint == Endpoint::upload_start);
    CHECK(s->name == "team/app");
    auto u = parse_route("/v2/team/app/blobs/uploads/0f1e2d3c-aaaa-bbbb");
    REQUIRE(u);
    CHECK(u->endpoint == Endpoint::upload);
    CHECK(u->reference == "0f1e2d3c-aaaa-bbbb");
    CHECK(parse_route("/v2/team/app/blobs/uploads/bad%2Fid").error().code == "BLOB_UPLOAD_UNKNOWN");
    CHECK(parse_route("/v2/team/app/blobs/uploads/bad%2Fid").error().status == 404);
}

TEST_CASE("routes: bad names, digests and tags never reach a lookup") {
    CHECK(parse_route("/v2/../../etc/blobs/" + kDigest).error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/a/%2e%2e/b/blobs/" + kDigest).error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/a%2Fb/blobs/" + kDigest).error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/a//b/blobs/" + kDigest).error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/UPPER/blobs/" + kDigest).error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/" + std::string(256, 'a') + "/blobs/" + kDigest).error().code ==
          "NAME_INVALID");
    CHECK(parse_route("/v2/a/blobs/md5:abcd").error().code == "DIGEST_INVALID");
    CHECK(parse_route("/v2/a/blobs/sha256:ABC").error().code == "DIGEST_INVALID");
    CHECK(parse_route("/v2/a/blobs/sha256:" + std::string(63, 'a')).error().code ==
          "DIGEST_INVALID");
    CHECK(parse_route("/v2/a/blobs/sha256:" + std::string(64, 'a')).ok());
    CHECK(parse_route("/v2/a/manifests/sha256:xyz").error().code == "DIGEST_INVALID");
    CHECK(parse_route("/v2/a/manifests/md5:" + std::string(32, 'a')).error().code ==
          "DIGEST_INVALID");
    for (const auto& e :
         {parse_route("/v2/../../etc/blobs/" + kDigest), parse_route("/v2/a/blobs/md5:abcd")}) {
        CHECK(e.error().status == 400);
    }
}

TEST_CASE("routes: a reference no manifest or blob can have is unknown, not invalid") {
    // docker-registry's router answers 404 for these; the spec wants 404 for a manifest that
    // does not exist, and no tag outside the grammar can.
    for (const std::string& ref :
         std::vector<std::string>{".bad", "-bad", std::string(129, 't'), "bad!", "a%20b"}) {
        auto r = parse_route("/v2/a/b/manifests/" + ref);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "MANIFEST_UNKNOWN");
        CHECK(r.error().status == 404);
    }
    for (std::string ref : std::vector<std::string>{"v1", "latest", "sha256"}) {
        auto r = parse_route("/v2/a/b/blobs/" + ref);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "BLOB_UNKNOWN");
        CHECK(r.error().status == 404);
    }
    // A bad name stays 400 whatever the reference.
    CHECK(parse_route("/v2/A/manifests/.bad").error().code == "NAME_INVALID");
    CHECK(parse_route("/v2/A/blobs/v1").error().code == "NAME_INVALID");
    // Unsupported algorithms and malformed digests stay 400 DIGEST_INVALID.
    CHECK(parse_route("/v2/a/blobs/foo:bar").error().status == 400);
    CHECK(parse_route("/v2/a/manifests/foo:bar").error().status == 400);
    auto sha512 = parse_route("/v2/a/manifests/sha512:" + std::string(128, 'a'));
    REQUIRE(sha512.ok());
    CHECK(sha512->by_digest);
}

TEST_CASE("Range headers") {
    auto r = parse_range("bytes=0-99", 1000);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->first == 0);
    CHECK((*r)->last == 99);

    auto open = parse_range("bytes=900-", 1000);
    CHECK((*open)->first == 900);
    CHECK((*open)->last == 999);

    auto suffix = parse_range("bytes=-10", 1000);
    CHECK((*suffix)->first == 990);
    CHECK((*suffix)->last == 999);

    auto clipped = parse_range("bytes=990-5000", 1000);
    CHECK((*clipped)->last == 999);

    auto big_suffix = parse_range("bytes=-5000", 1000);
    CHECK((*big_suffix)->first == 0);

    CHECK(parse_range("bytes=1000-", 1000).error().status == 416);
    CHECK(parse_range("bytes=-0", 1000).error().status == 416);
    // Ignored (whole blob): absent, another unit, several ranges, nonsense.
    CHECK_FALSE(*parse_range("", 1000));
    CHECK_FALSE(*parse_range("items=0-1", 1000));
    CHECK_FALSE(*parse_range("bytes=0-1,5-6", 1000));
    CHECK_FALSE(*parse_range("bytes=5-1", 1000));
    CHECK_FALSE(*parse_range("bytes=a-b", 1000));
}
