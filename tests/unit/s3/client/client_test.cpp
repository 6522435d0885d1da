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
