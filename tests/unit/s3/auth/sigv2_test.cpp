// SigV2 against the worked examples of the S3 developer guide ("Signing and authenticating REST
// requests"); botocore agreement on awkward inputs is in tests/integration.
#include "drayage/s3/sigv2.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

using namespace drayage::s3;

namespace {
const Credentials kDocCreds{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
}

TEST_CASE("SigV2 documentation example: object GET", "[sigv2]") {
    const std::vector<HeaderField> headers = {
        {"Host", "awsexamplebucket1.us-west-1.s3.amazonaws.com"}};
    const SigV2Request req{"GET",
                           "/awsexamplebucket1/photos/puppy.jpg",
                           {},
                           headers,
                           "Tue, 27 Mar 2007 19:36:42 +0000"};
    auto s = sign_v2(req, kDocCreds);
    REQUIRE(s.ok());
    CHECK(s->string_to_sign ==
          "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg");
    CHECK(s->authorization == "AWS AKIAIOSFODNN7EXAMPLE:qgk2+6Sv9/oM7G3qLEjTH1a1l1g=");
    REQUIRE(s->headers_to_add.size() == 1);
    CHECK(s->headers_to_add[0] == HeaderField{"Date", "Tue, 27 Mar 2007 19:36:42 +0000"});
}

TEST_CASE("SigV2 documentation example: upload with x-amz headers", "[sigv2]") {
    const std::vector<HeaderField> headers = {
        {"Host", "static.johnsmith.net:8080"},
        {"x-amz-acl", "public-read"},
        {"content-type", "application/x-download"},
        {"Content-MD5", "4gJE4saaMU4BqNR0kLY+lw=="},
        {"X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"},
        {"X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"},
        {"X-Amz-Meta-FileChecksum", "0x02661779"},
        {"X-Amz-Meta-ChecksumAlgorithm", "crc32"},
        {"Content-Disposition", "attachment; filename=database.dat"},
        {"Content-Encoding", "gzip"},
        {"Content-Length", "5913339"}};
    const SigV2Request req{"PUT",
                           "/static.johnsmith.net/db-backup.dat.gz",
                           {},
                           headers,
                           "Tue, 27 Mar 2007 21:06:08 +0000"};
    auto s = sign_v2(req, kDocCreds);
    REQUIRE(s.ok());
    CHECK(s->string_to_sign ==
          "PUT\n4gJE4saaMU4BqNR0kLY+lw==\napplication/x-download\nTue, 27 Mar 2007 21:06:08 "
          "+0000\nx-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\n"
          "x-amz-meta-filechecksum:0x02661779\n"
          "x-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n"
          "/static.johnsmith.net/db-backup.dat.gz");
    CHECK(s->signature == "ilyl83RwaSoYIEdixDQcA4OnAnc=");
}

TEST_CASE("SigV2 canonical resource keeps only sub-resources, sorted, decoded", "[sigv2]") {
    const std::vector<HeaderField> headers = {{"host", "h"}};
    const std::vector<QueryParam> query = {{"uploadId", "a/b c", false},
                                           {"prefix", "ignored", false},
                                           {"partNumber", "3", false},
                                           {"uploads", "", true},
                                           {"list-type", "2", false}};
    const SigV2Request req{"PUT", "/b/k%20x", query, headers, "Thu, 01 Jan 2026 00:00:00 GMT"};
    auto s = sign_v2(req, {"ak", "sk", "tok"});
    REQUIRE(s.ok());
    CHECK(s->string_to_sign ==
          "PUT\n\n\nThu, 01 Jan 2026 00:00:00 GMT\nx-amz-security-token:tok\n"
          "/b/k%20x?partNumber=3&uploadId=a/b c&uploads");
    REQUIRE(s->headers_to_add.size() == 2);
    CHECK(s->headers_to_add[1] == HeaderField{"x-amz-security-token", "tok"});
    CHECK(is_sigv2_subresource("uploadId"));
    CHECK_FALSE(is_sigv2_subresource("prefix"));
}

TEST_CASE("SigV2 with x-amz-date instead of Date leaves the Date line empty", "[sigv2]") {
    const std::vector<HeaderField> headers = {{"x-amz-date", "Thu, 01 Jan 2026 00:00:00 GMT"}};
    auto s = sign_v2({"GET", "/b/k", {}, headers, ""}, {"ak", "sk", ""});
    REQUIRE(s.ok());
    CHECK(s->string_to_sign == "GET\n\n\n\nx-amz-date:Thu, 01 Jan 2026 00:00:00 GMT\n/b/k");
    CHECK(s->headers_to_add.empty());
    CHECK(sign_v2({"GET", "/b/k", {}, {}, ""}, {"ak", "sk", ""}).error().code == "sigv2.invalid");
    CHECK_FALSE(sign_v2({"GET", "b/k", {}, {}, "x"}, {"ak", "sk", ""}).ok());
    CHECK_FALSE(sign_v2({"GET", "/b/k", {}, {}, "x"}, {"", "", ""}).ok());
}

TEST_CASE("http_date is the English RFC 7231 form", "[sigv2][time]") {
    using namespace std::chrono;
    CHECK(http_date(system_clock::time_point{seconds{1175024202}}) ==
          "Tue, 27 Mar 2007 19:36:42 GMT");
    CHECK(http_date(system_clock::time_point{seconds{0}}) == "Thu, 01 Jan 1970 00:00:00 GMT");
}
