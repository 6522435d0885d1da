// AWS Signature Version 4: request signing as a pure function of (request, credentials, time).
//
// Nothing here reads a clock, a file or the network, and nothing throws: the S3 client decides
// what time it is and what to send, this module only computes the canonical request, the string
// to sign and the signature, and says which headers (or query parameters) to add. That keeps the
// signer testable against the AWS test suite (tests/data/aws-sigv4-suite) and against botocore.
//
// Conventions of the whole interface:
// - `path` is the URI path exactly as it goes on the wire: already percent-encoded (build it
//   from an object key with `uri_encode_path`), starting with '/'.
// - Query parameters are passed decoded (`QueryParam`); the signer encodes them. Build the wire
//   query with `encode_query` from the same vector, so what is signed is what is sent.
// - Headers are (name, value) pairs in any case and order; duplicates are allowed and are joined
//   with ',' in the order given. `net::HeaderList` can be passed as is. They must include `host`
//   (with the port when it is not the scheme's default, exactly as curl will send it).
// - Inputs are views: they must stay alive for the call only; results own their strings.
// - The signed header set is every header passed in. Pass only headers whose value will not be
//   changed on the way (not `user-agent` or `expect`, which curl may alter or add).
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drayage/s3/credentials.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/result.hpp"

namespace drayage::s3 {

// x-amz-content-sha256 value when the body is not hashed (presigned URLs; streaming over TLS).
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
// sha256 of the empty string: the payload hash of GET, HEAD, DELETE and empty PUTs.
inline constexpr std::string_view kEmptyPayloadSha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// Percent-encodes every byte outside the RFC 3986 unreserved set (A-Z a-z 0-9 - . _ ~) as %XX
// with upper-case hex; '/' is kept when `keep_slash`. UTF-8 is encoded byte by byte.
std::string uri_encode(std::string_view s, bool keep_slash);
// The wire path of an S3 object: "/" + bucket + "/" + uri_encode_path(key) for path-style
// addressing. Keeps '/' (so "a//b" stays "a//b": S3 keys are not paths and are never normalised).
inline std::string uri_encode_path(std::string_view key) {
    return uri_encode(key, true);
}
// Reverses %XX escapes ('+' stays '+'). Error on a truncated or non-hex escape.
Result<std::string> uri_decode(std::string_view s);

// One query parameter, decoded. `bare` records that it is sent without '=' ("?uploads"): SigV4
// signs it as "uploads=" either way, SigV2 signs exactly what is sent.
struct QueryParam {
    std::string key;
    std::string value;
    bool bare = false;
};

using HeaderField = std::pair<std::string, std::string>;

// The wire query string (without '?') for `params`, in the order given: key=value pairs joined
// with '&', each side encoded with uri_encode(keep_slash = false).
std::string encode_query(std::span<const QueryParam> params);

// "YYYYMMDDTHHMMSSZ" (UTC) for a point in time: the x-amz-date value.
std::string amz_date(std::chrono::system_clock::time_point t);

struct SigV4Request {
    std::string_view method;               // "GET", "PUT", ... (sent as given)
    std::string_view path;                 // wire path, percent-encoded, starts with '/'
    std::span<const QueryParam> query;     // decoded; order does not matter
    std::span<const HeaderField> headers;  // must include host
    // Hex sha256 of the body, kEmptyPayloadSha256, or kUnsignedPayload.
    std::string_view payload_hash = kEmptyPayloadSha256;
};

struct SigV4Options {
    // Remove "." and ".." segments and collapse '/' runs before signing. AWS services other
    // than S3 do this; S3 must not (its keys are not paths).
    bool normalize_path = false;
    // Encode the (already encoded) wire path once more for the canonical request: what every
    // AWS service except S3 expects. S3 signs the wire path as is.
    bool double_encode_path = false;
    // Add and sign `x-amz-content-sha256: <payload_hash>` (header signing only). S3 requires it.
    bool add_content_sha256_header = true;
    // false: the session token is added to the request after signing instead of being signed
    // (a few services want that; S3 signs it).
    bool sign_session_token = true;
};

// S3 rules: no normalisation, single encoding, x-amz-content-sha256 sent and signed.
inline constexpr SigV4Options kS3SigningOptions{};

struct SigV4Scope {
    std::string_view region;    // "us-east-1"
    std::string_view service;   // "s3"
    std::string_view amz_date;  // "YYYYMMDDTHHMMSSZ", see amz_date()
};

struct SigV4Signature {
    std::string canonical_request;
    std::string string_to_sign;
    std::string signature;       // lower-case hex
    std::string signed_headers;  // "host;x-amz-content-sha256;x-amz-date"
    // Header signing: the `Authorization` header value.
    std::string authorization;
    // Header signing: headers to add to the request besides Authorization, in this order:
    // x-amz-date, x-amz-content-sha256 (if enabled), x-amz-security-token (if any).
    std::vector<HeaderField> headers_to_add;
    // Query signing: the complete wire query string (without '?'): the request's parameters,
    // then X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Security-Token (if
    // any), -Signature.
    std::string presigned_query;
};

// Signs with an Authorization header. Errors ("sigv4.invalid"): amz_date not
// "YYYYMMDDTHHMMSSZ", empty method, path not starting with '/', no host header, empty
// region/service/access key.
Result<SigV4Signature> sign_v4(const SigV4Request& request, const Credentials& credentials,
                               const SigV4Scope& scope,
                               const SigV4Options& options = kS3SigningOptions);

// Signs in the query string (a presigned URL valid for `expires`, 1 s .. 7 days). The payload
// hash is usually kUnsignedPayload; `add_content_sha256_header` is ignored. The request's own
// query parameters must not include X-Amz-* signing parameters. Same errors as sign_v4, plus an
// out-of-range `expires`.
Result<SigV4Signature> presign_v4(const SigV4Request& request, const Credentials& credentials,
                                  const SigV4Scope& scope, std::chrono::seconds expires,
                                  const SigV4Options& options = kS3SigningOptions);

// The canonical URI component alone (exposed for tests and diagnostics).
std::string canonical_uri(std::string_view path, const SigV4Options& options);

}  // namespace drayage::s3
