// SigV4 helpers and the S3-specific rules the generic suite does not cover.
#include "drayage/s3/sigv4.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "drayage/util/digest.hpp"

using namespace drayage::s3;

namespace {

const Credentials kDocCreds{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};

}  // namespace

TEST_CASE("the empty payload hash is sha256 of nothing", "[sigv4][crypto]") {
    CHECK(drayage::digest::sha256_hex("") == kEmptyPayloadSha256);
}

TEST_CASE("uri_encode keeps the RFC 3986 unreserved set and optionally '/'", "[sigv4][uri]") {
    CHECK(uri_encode("AZaz09-._~", false) == "AZaz09-._~");
    CHECK(uri_encode("a b+c:d%e=f&g/h", false) == "a%20b%2Bc%3Ad%25e%3Df%26g%2Fh");
    CHECK(uri_encode("a b+c:d%e=f&g/h", true) == "a%20b%2Bc%3Ad%25e%3Df%26g/h");
    CHECK(uri_encode("!*'()", true) == "%21%2A%27%28%29");
    CHECK(uri_encode("\xE1\x88\xB4", false) == "%E1%88%B4");
    CHECK(uri_encode_path("dir//file~1") == "dir//file~1");
    CHECK(uri_encode(std::string("\0", 1), false) == "%00");
}

TEST_CASE("uri_decode reverses uri_encode and rejects broken escapes", "[sigv4][uri]") {
    const std::string awkward = "k e+y:%/=&\xC3\xA9~!*'()";
    auto round = uri_decode(uri_encode(awkward, false));
    REQUIRE(round.ok());
    CHECK(*round == awkward);
    CHECK(*uri_decode("a+b%2b") == "a+b+");
    CHECK_FALSE(uri_decode("%").ok());
    CHECK_FALSE(uri_decode("%4").ok());
    CHECK_FALSE(uri_decode("%zz").ok());
    CHECK(uri_decode("%4g").error().code == "uri.invalid");
}

TEST_CASE("encode_query keeps order and writes bare parameters without '='", "[sigv4][uri]") {
    const std::vector<QueryParam> q = {
        {"uploads", "", true}, {"prefix", "a b/c", false}, {"delimiter", "/", false}};
    CHECK(encode_query(q) == "uploads&prefix=a%20b%2Fc&delimiter=%2F");
    CHECK(encode_query(std::vector<QueryParam>{{"k", "", false}}) == "k=");
}

TEST_CASE("amz_date formats UTC", "[sigv4][time]") {
    using namespace std::chrono;
    // 2013-05-24T00:00:00Z
    const system_clock::time_point t{seconds{1369353600}};
    CHECK(amz_date(t) == "20130524T000000Z");
    CHECK(amz_date(t + hours(13) + minutes(5) + seconds(9)) == "20130524T130509Z");
}

TEST_CASE("canonical_uri: S3 signs the wire path untouched", "[sigv4][path]") {
    const SigV4Options s3 = kS3SigningOptions;
    CHECK(canonical_uri("/bucket/a//b/./c/../d%20e", s3) == "/bucket/a//b/./c/../d%20e");
    SigV4Options other;
    other.normalize_path = true;
    other.double_encode_path = true;
    CHECK(canonical_uri("/a//b/./c/../d%20e/", other) == "/a/b/d%2520e/");
    CHECK(canonical_uri("/..", other) == "/");
}

// The worked examples of the S3 API reference, "Signature Calculations for the Authorization
// Header: Transferring Payload in a Single Chunk" and "Authenticating Requests: Using Query
// Parameters".
TEST_CASE("S3 documentation example: GET object with Range", "[sigv4][s3]") {
    const std::vector<HeaderField> headers = {{"Host", "examplebucket.s3.amazonaws.com"},
                                              {"Range", "bytes=0-9"}};
    const SigV4Request req{"GET", "/test.txt", {}, headers, kEmptyPayloadSha256};
    auto s = sign_v4(req, kDocCreds, {"us-east-1", "s3", "20130524T000000Z"});
    REQUIRE(s.ok());
    CHECK(s->canonical_request ==
          "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
          "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
          "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(s->signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK(s->authorization ==
          "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
          "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
          "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    REQUIRE(s->headers_to_add.size() == 2);
    CHECK(s->headers_to_add[0] == HeaderField{"x-amz-date", "20130524T000000Z"});
    CHECK(s->headers_to_add[1] == HeaderField{"x-amz-content-sha256", kEmptyPayloadSha256});
}

TEST_CASE("S3 documentation example: presigned GET", "[sigv4][s3]") {
    const std::vector<HeaderField> headers = {{"Host", "examplebucket.s3.amazonaws.com"}};
    const SigV4Request req{"GET", "/test.txt", {}, headers, kUnsignedPayload};
    auto s = presign_v4(req, kDocCreds, {"us-east-1", "s3", "20130524T000000Z"},
                        std::chrono::seconds(86400));
    REQUIRE(s.ok());
    CHECK(s->signature == "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    CHECK(s->presigned_query ==
          "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-"
          "east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-"
          "SignedHeaders=host&X-Amz-Signature="
          "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST_CASE("S3 rules: sorted encoded query, trimmed headers, duplicates joined", "[sigv4][s3]") {
    const std::vector<HeaderField> headers = {{"HOST", "127.0.0.1:9000"},
                                              {"X-Amz-Meta-A", "  two   words \t here "},
                                              {"x-amz-meta-a", "second"},
                                              {"Content-Type", "application/octet-stream"}};
    const std::vector<QueryParam> query = {{"uploadId", "x/y+z", false},
                                           {"partNumber", "10", false},
                                           {"partNumber", "2", false},
                                           {"uploads", "", true}};
    const Credentials creds{"test:tester", "testing", "tok en"};
    const SigV4Request req{"PUT", "/bucket/a%20b", query, headers, "UNSIGNED-PAYLOAD"};
    auto s = sign_v4(req, creds, {"us-east-1", "s3", "20260101T000000Z"});
    REQUIRE(s.ok());
    CHECK(s->canonical_request ==
          "PUT\n/bucket/a%20b\npartNumber=10&partNumber=2&uploadId=x%2Fy%2Bz&uploads=\n"
          "content-type:application/octet-stream\nhost:127.0.0.1:9000\n"
          "x-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:20260101T000000Z\n"
          "x-amz-meta-a:two words here,second\nx-amz-security-token:tok en\n\n"
          "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-a;x-amz-security-token\n"
          "UNSIGNED-PAYLOAD");
    REQUIRE(s->headers_to_add.size() == 3);
    CHECK(s->headers_to_add[2] == HeaderField{"x-amz-security-token", "tok en"});
}

TEST_CASE("signing replaces stale signing headers instead of signing them twice", "[sigv4][s3]") {
    const std::vector<HeaderField> fresh = {{"host", "h"}};
    const std::vector<HeaderField> retried = {{"host", "h"},
                                              {"X-Amz-Date", "20000101T000000Z"},
                                              {"Authorization", "AWS4-HMAC-SHA256 old"},
                                              {"x-amz-content-sha256", "old"}};
    const SigV4Scope scope{"us-east-1", "s3", "20260101T000000Z"};
    auto a = sign_v4({"GET", "/b/k", {}, fresh, kEmptyPayloadSha256}, kDocCreds, scope);
    auto b = sign_v4({"GET", "/b/k", {}, retried, kEmptyPayloadSha256}, kDocCreds, scope);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->canonical_request == b->canonical_request);
    CHECK(a->signature == b->signature);
}

TEST_CASE("invalid inputs are errors, not signatures", "[sigv4][errors]") {
    const std::vector<HeaderField> host = {{"host", "h"}};
    const SigV4Scope ok_scope{"us-east-1", "s3", "20260101T000000Z"};
    auto code = [](const auto& r) { return r.ok() ? std::string("ok") : r.error().code; };

    CHECK(code(sign_v4({"GET", "/k", {}, host}, kDocCreds, ok_scope)) == "ok");
    CHECK(code(sign_v4({"GET", "/k", {}, host}, kDocCreds,
                       {"us-east-1", "s3", "2026-01-01T00:00:00Z"})) == "sigv4.invalid");
    CHECK(code(sign_v4({"GET", "k", {}, host}, kDocCreds, ok_scope)) == "sigv4.invalid");
    CHECK(code(sign_v4({"", "/k", {}, host}, kDocCreds, ok_scope)) == "sigv4.invalid");
    CHECK(code(sign_v4({"GET", "/k", {}, {}}, kDocCreds, ok_scope)) == "sigv4.invalid");
    CHECK(code(sign_v4({"GET", "/k", {}, host}, Credentials{}, ok_scope)) == "sigv4.invalid");
    CHECK(code(sign_v4({"GET", "/k", {}, host}, kDocCreds, {"", "s3", "20260101T000000Z"})) ==
          "sigv4.invalid");
    CHECK(code(presign_v4({"GET", "/k", {}, host}, kDocCreds, ok_scope, std::chrono::seconds(0))) ==
          "sigv4.invalid");
    CHECK(code(presign_v4({"GET", "/k", {}, host}, kDocCreds, ok_scope,
                          std::chrono::seconds(7 * 24 * 3600 + 1))) == "sigv4.invalid");
    const std::vector<QueryParam> presigned = {{"X-Amz-Signature", "x", false}};
    CHECK(code(presign_v4({"GET", "/k", presigned, host}, kDocCreds, ok_scope,
                          std::chrono::seconds(60))) == "sigv4.invalid");
}
