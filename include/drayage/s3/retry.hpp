// When the S3 client tries again, how long it waits, and how big multipart parts are.
//
// Pure functions (no clock, no randomness source of their own) so the policy is unit-tested
// without a network: the client passes in the HTTP status, the S3 error code, the curl code and
// a random number.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

namespace drayage::s3 {

// What went wrong with one attempt of a request.
struct AttemptFailure {
    int http_status = 0;       // 0: no response (transport failure)
    std::string_view s3_code;  // "SlowDown", "InternalError", ... or "transport"; may be empty
    int curl_code = 0;         // CURLcode of a transport failure, else 0
};

// True when the failure is transient and another attempt may succeed: 500/502/503/504,
// SlowDown, RequestTimeout, InternalError, and transport failures (connection refused/reset,
// timeouts, partial transfers). `idempotent` false (CreateMultipartUpload) retries only when the
// server answered with an error, never after a transport failure, because the request may have
// taken effect. Never retried: other 4xx (wrong credentials, NoSuchKey, ...), TLS verification
// failures, malformed URLs, and aborts by our own callbacks.
bool is_retryable(const AttemptFailure& failure, bool idempotent);

// Full-jitter exponential backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"):
// a delay drawn uniformly from [0, min(max_delay, base_delay * 2^(attempt-1))], where `attempt`
// is the 1-based number of the attempt that just failed and `random` a uniformly distributed
// 64-bit number. Never negative, never above max_delay.
std::chrono::milliseconds backoff_delay(int attempt, std::chrono::milliseconds base_delay,
                                        std::chrono::milliseconds max_delay, std::uint64_t random);

inline constexpr std::uint64_t kMinPartSize = 5ull * 1024 * 1024;
inline constexpr std::uint64_t kMaxPartSize = 5ull * 1024 * 1024 * 1024;
inline constexpr int kMaxParts = 10'000;

// The part size for a multipart upload or copy: `chunksize` (raised to 5 MiB if lower), grown so
// that an object of `expected_size` bytes (0: unknown) needs at most 10,000 parts, rounded up to
// a whole MiB; capped at 5 GiB (objects past 48.8 TiB cannot be stored in one upload).
std::uint64_t part_size_for(std::uint64_t chunksize, std::uint64_t expected_size);

}  // namespace drayage::s3
