// Pure parts of the S3 client: XML bodies, retry classification, backoff bounds, part sizes.
#include <catch2/catch.hpp>
#include <random>

#include "drayage/s3/retry.hpp"
#include "drayage/s3/xml.hpp"

using namespace drayage::s3;
using std::chrono::milliseconds;

TEST_CASE("S3 error bodies become typed errors", "[s3][xml]") {
    auto e = parse_error(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>"
        "<Message>The request signature we calculated does not match</Message>"
        "<RequestId>tx123</RequestId></Error>",
        403);
    CHECK(e.code == "SignatureDoesNotMatch");
    CHECK(e.status == 403);
    CHECK(e.message == "The request signature we calculated does not match (request id tx123)");

    auto slow = parse_error(
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
        "</Message></Error>",
        503);
    CHECK(slow.code == "SlowDown");
    CHECK(slow.message == "Please reduce your request rate.");

    // HEAD errors have no body; proxies answer HTML.
    CHECK(parse_error("", 404).code == "NotFound");
    CHECK(parse_error("<html>bad gateway</html>", 502).code == "HTTP502");
    CHECK(parse_error("not xml at all <", 503).code == "ServiceUnavailable");
    CHECK(is_error_document("<Error><Code>InternalError</Code></Error>"));
    CHECK_FALSE(is_error_document("<CompleteMultipartUploadResult/>"));
}

TEST_CASE("multipart and listing documents parse", "[s3][xml]") {
    auto id = parse_upload_id(
        "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<Bucket>b</Bucket><Key>k</Key><UploadId>abc-123</UploadId>"
        "</InitiateMultipartUploadResult>");
    REQUIRE(id.ok());
    CHECK(*id == "abc-123");
    CHECK_FALSE(parse_upload_id("<InitiateMultipartUploadResult/>").ok());
    CHECK(parse_upload_id("garbage").error().code == "MalformedResponse");

    auto etag = parse_etag(
        "<CopyPartResult><LastModified>x</LastModified>"
        "<ETag>\"9b2cf535f27731c974343645a3985328\"</ETag></CopyPartResult>");
    REQUIRE(etag.ok());
    CHECK(*etag == "\"9b2cf535f27731c974343645a3985328\"");

    auto parts = parse_list_parts(
        "<ListPartsResult><IsTruncated>true</IsTruncated>"
        "<NextPartNumberMarker>2</NextPartNumberMarker>"
        "<Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag><Size>5242880</Size></Part>"
        "<Part><PartNumber>2</PartNumber><ETag>\"b\"</ETag><Size>7</Size></Part>"
        "</ListPartsResult>");
    REQUIRE(parts.ok());
    REQUIRE(parts->parts.size() == 2);
    CHECK(parts->parts[1].part_number == 2);
    CHECK(parts->parts[1].size == 7);
    CHECK(parts->truncated);
    CHECK(parts->next_part_number_marker == "2");

    auto uploads = parse_list_multipart_uploads(
        "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
        "<Upload><Key>a/b</Key><UploadId>u1</UploadId><Initiated>t</Initiated></Upload>"
        "</ListMultipartUploadsResult>");
    REQUIRE(uploads.ok());
    REQUIRE(uploads->uploads.size() == 1);
    CHECK(uploads->uploads[0].key == "a/b");
    CHECK_FALSE(uploads->truncated);

    auto objects = parse_list_objects_v2(
        "<ListBucketResult><IsTruncated>true</IsTruncated>"
        "<NextContinuationToken>tok</NextContinuationToken>"
        "<Contents><Key>k &amp; v</Key><Size>12</Size><ETag>\"e\"</ETag></Contents>"
        "</ListBucketResult>");
    REQUIRE(objects.ok());
    CHECK(objects->objects[0].key == "k & v");
    CHECK(objects->next_continuation_token == "tok");
}

TEST_CASE("the CompleteMultipartUpload body lists parts in order", "[s3][xml]") {
    std::string body = complete_multipart_body({{1, "\"a\""}, {2, "\"b&c\""}});
    CHECK(body ==
          "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
          "<Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag></Part>"
          "<Part><PartNumber>2</PartNumber><ETag>\"b&amp;c\"</ETag></Part>"
          "</CompleteMultipartUpload>");
}

TEST_CASE("retry classification", "[s3][retry]") {
    CHECK(is_retryable({503, "SlowDown", 0}, true));
    CHECK(is_retryable({503, "SlowDown", 0}, false));  // the server refused: safe to resend
    CHECK(is_retryable({500, "InternalError", 0}, true));
    CHECK(is_retryable({400, "RequestTimeout", 0}, true));
    CHECK(is_retryable({502, "HTTP502", 0}, true));
    CHECK(is_retryable({504, "", 0}, true));
    CHECK(is_retryable({0, "transport", 56}, true));         // reset
    CHECK(is_retryable({0, "transport", 28}, true));         // timeout / stall
    CHECK(is_retryable({0, "transport", 7}, true));          // refused
    CHECK_FALSE(is_retryable({0, "transport", 56}, false));  // may have taken effect
    CHECK_FALSE(is_retryable({0, "transport", 60}, true));   // TLS verification failed
    CHECK_FALSE(is_retryable({0, "transport", 23}, true));   // our own callback aborted
    CHECK_FALSE(is_retryable({403, "SignatureDoesNotMatch", 0}, true));
    CHECK_FALSE(is_retryable({403, "InvalidAccessKeyId", 0}, true));
    CHECK_FALSE(is_retryable({404, "NoSuchKey", 0}, true));
    CHECK_FALSE(is_retryable({400, "BadDigest", 0}, true));
    CHECK_FALSE(is_retryable({412, "PreconditionFailed", 0}, true));
}

TEST_CASE("full-jitter backoff stays within its bounds", "[s3][retry]") {
    std::mt19937_64 gen(42);
    for (int attempt = 1; attempt <= 70; ++attempt) {
        auto ceiling =
            std::min<std::int64_t>(10'000, attempt > 20 ? 10'000 : 100LL << (attempt - 1));
        std::int64_t seen_max = 0;
        for (int i = 0; i < 2000; ++i) {
            auto d = backoff_delay(attempt, milliseconds(100), milliseconds(10'000), gen());
            REQUIRE(d.count() >= 0);
            REQUIRE(d.count() <= ceiling);
            seen_max = std::max<std::int64_t>(seen_max, d.count());
        }
        // Jitter spreads over the whole window, not just its bottom.
        CHECK(seen_max > ceiling / 2);
    }
    CHECK(backoff_delay(1, milliseconds(100), milliseconds(10'000), ~0ull).count() <= 100);
    CHECK(backoff_delay(0, milliseconds(100), milliseconds(10'000), 7).count() == 0);
    CHECK(backoff_delay(3, milliseconds(0), milliseconds(10'000), 7).count() == 0);
}

TEST_CASE("part size grows so that objects fit in 10,000 parts", "[s3][multipart]") {
    constexpr std::uint64_t MiB = 1024 * 1024;
    CHECK(part_size_for(10 * MiB, 0) == 10 * MiB);
    CHECK(part_size_for(1 * MiB, 0) == 5 * MiB);  // raised to the S3 minimum
    CHECK(part_size_for(10 * MiB, 300 * MiB) == 10 * MiB);
    CHECK(part_size_for(5 * MiB, 10'000 * 5 * MiB) == 5 * MiB);  // exactly fits
    std::uint64_t big = 10'000 * 5 * MiB + 1;
    std::uint64_t grown = part_size_for(5 * MiB, big);
    CHECK(grown == 6 * MiB);
    CHECK((big + grown - 1) / grown <= 10'000);
    std::uint64_t tb = 1024ull * 1024 * MiB;  // 1 TiB
    std::uint64_t p = part_size_for(10 * MiB, tb);
    CHECK(p % MiB == 0);
    CHECK((tb + p - 1) / p <= 10'000);
    CHECK(part_size_for(10 * MiB, 100'000ull * 1024 * 1024 * MiB) == kMaxPartSize);
}

TEST_CASE("upload parts are chunksize until the declared size needs more", "[s3][multipart]") {
    constexpr std::uint64_t MiB = 1024 * 1024;
    for (std::uint64_t declared :
         {std::uint64_t{0}, std::uint64_t{1}, 300 * MiB, 10'000 * 5 * MiB}) {
        INFO(declared);
        auto p = UploadPartSizes::plan(5 * MiB, declared);
        REQUIRE(p);
        CHECK(p->ceiling() == 5 * MiB);
        CHECK(p->at(0) == 5 * MiB);
        CHECK(p->at(40'000 * MiB) == 5 * MiB);
    }
    CHECK(UploadPartSizes::plan(1 * MiB, 0)->at(0) == 5 * MiB);          // the S3 minimum
    CHECK(UploadPartSizes::plan(5 * MiB + 1, 0)->at(0) == 6 * MiB);      // whole MiB
    CHECK(UploadPartSizes::plan(8ull << 30, 0)->at(0) == kMaxPartSize);  // the S3 maximum
}

TEST_CASE("upload parts grow with the bytes sent, not with the size declared", "[s3][multipart]") {
    constexpr std::uint64_t MiB = 1024 * 1024;
    constexpr std::uint64_t TB = 1000ull * 1000 * 1000 * 1000;
    auto p = UploadPartSizes::plan(5 * MiB, 50 * TB);
    REQUIRE(p);
    CHECK(p->ceiling() > 4096 * MiB);
    CHECK(p->ceiling() <= kMaxPartSize);
    // The first 320 MiB go in chunksize parts, then a part is at most 1/64 of what came before.
    CHECK(p->at(0) == 5 * MiB);
    CHECK(p->at(300 * MiB) == 5 * MiB);
    CHECK(p->at(320 * MiB) == 5 * MiB);
    CHECK(p->at(640 * MiB) == 10 * MiB);
    CHECK(p->at(64 * 1024 * MiB) == 1024 * MiB);
    CHECK(p->at(10 * TB) == p->ceiling());
    for (std::uint64_t offset = 0; offset < 50 * TB; offset += p->at(offset)) {
        REQUIRE(p->at(offset) % MiB == 0);
        REQUIRE(p->at(offset) <= std::max(5 * MiB, offset / kPartGrowthDivisor + MiB));
    }
    CHECK(p->capacity() >= 50 * TB);
    // Just past 10,000 x chunksize: the parts grow only a little.
    std::uint64_t just_past = 10'000 * 5 * MiB + 1;
    auto q = UploadPartSizes::plan(5 * MiB, just_past);
    REQUIRE(q);
    CHECK(q->ceiling() == 6 * MiB);
    CHECK(q->capacity() >= just_past);
    CHECK(UploadPartSizes::plan(5 * MiB, q->capacity())->ceiling() == 6 * MiB);
    CHECK(UploadPartSizes::plan(5 * MiB, q->capacity() + 1)->ceiling() == 7 * MiB);
    // The smallest ceiling: one MiB less would not hold a TiB.
    std::uint64_t tib = 1024ull * 1024 * MiB;
    auto r = UploadPartSizes::plan(5 * MiB, tib);
    REQUIRE(r);
    CHECK(r->capacity() >= tib);
    CHECK(r->ceiling() > 5 * MiB);
    CHECK(UploadPartSizes::plan(r->ceiling() - MiB, 0)->at(0) == r->ceiling() - MiB);
}

TEST_CASE("a declared size no plan holds is refused", "[s3][multipart]") {
    constexpr std::uint64_t MiB = 1024 * 1024;
    constexpr std::uint64_t TB = 1000ull * 1000 * 1000 * 1000;
    std::uint64_t most = UploadPartSizes::max_object_size(5 * MiB);
    CHECK(most > 51 * TB);                   // about 46.7 TiB
    CHECK(most < kMaxParts * kMaxPartSize);  // 10,000 x 5 GiB, about 53.7 TB
    REQUIRE(UploadPartSizes::plan(5 * MiB, most));
    CHECK_FALSE(UploadPartSizes::plan(5 * MiB, most + 1));
    CHECK_FALSE(UploadPartSizes::plan(5 * MiB, 60 * TB));
    CHECK_FALSE(UploadPartSizes::plan(5 * MiB, ~0ull));
    CHECK(UploadPartSizes::max_object_size(100 * MiB) > most);
    CHECK(UploadPartSizes::max_object_size(8ull << 30) == kMaxParts * kMaxPartSize);
}
