// AWS Signature Version 2 for S3 (`storage.s3.v4auth: false`): the older
// `Authorization: AWS <access key>:<base64 HMAC-SHA1>` scheme, still what some S3-compatible
// stores (and the registry's s3 driver with v4auth off) speak. Pure like the SigV4 signer: the
// caller supplies the Date, nothing here reads a clock.
//
// String to sign (AWS "Signing and authenticating REST requests"):
//   METHOD \n Content-MD5 \n Content-Type \n Date \n
//   x-amz-* headers: lower-cased, sorted, "name:value" (value trimmed, duplicates joined by ','),
//     one per line
//   canonical resource: the wire path (with the bucket, path-style) plus the sub-resources from
//     the query that S3 signs (uploadId, partNumber, uploads, acl, versionId, response-*, ...),
//     sorted by name, values decoded, joined with '&' after a '?'.
// Other query parameters (prefix, delimiter, list-type, ...) are not signed under SigV2.
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/s3/credentials.hpp"
#include "drayage/s3/sigv4.hpp"  // QueryParam, HeaderField
#include "drayage/util/result.hpp"

namespace drayage::s3 {

struct SigV2Request {
    std::string_view method;
    std::string_view path;                 // wire path, percent-encoded, "/bucket/key"
    std::span<const QueryParam> query;     // decoded; `bare` ones are signed without '='
    std::span<const HeaderField> headers;  // Content-MD5 / Content-Type / x-amz-* are read
    // RFC 1123 date ("Sat, 28 Nov 2026 08:47:30 GMT", see http_date()), sent as `Date`. Empty:
    // the request carries `x-amz-date` among `headers` instead, and the Date line stays empty.
    // A `Date` passed in `headers` is ignored (this one wins).
    std::string_view date;
};

struct SigV2Signature {
    std::string string_to_sign;
    std::string signature;      // base64
    std::string authorization;  // "AWS <access key>:<signature>"
    // Headers to add besides Authorization: Date (when given), x-amz-security-token (if any).
    std::vector<HeaderField> headers_to_add;
};

// Errors ("sigv2.invalid"): empty method, path not starting with '/', empty access key, no date
// and no x-amz-date header.
Result<SigV2Signature> sign_v2(const SigV2Request& request, const Credentials& credentials);

// "Sat, 28 Nov 2026 08:47:30 GMT" for a point in time (the HTTP `Date` format, RFC 7231).
std::string http_date(std::chrono::system_clock::time_point t);

// True for the query parameters SigV2 includes in the canonical resource.
bool is_sigv2_subresource(std::string_view key);

}  // namespace drayage::s3
