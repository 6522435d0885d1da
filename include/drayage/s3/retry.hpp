// When the S3 client tries again, how long it waits, and how big multipart parts are.
//
// Pure functions (no clock, no randomness source of their own) so the policy is unit-tested
// without a network: the client passes in the HTTP status, the S3 error code, the curl code and
// a random number.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
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

// The part size for a multipart copy (server-side, so no part is held in memory): `chunksize`
// (raised to 5 MiB if lower), grown so that an object of `expected_size` bytes (0: unknown)
// needs at most 10,000 parts, rounded up to a whole MiB; capped at 5 GiB (objects past 48.8 TiB
// cannot be stored in one upload).
std::uint64_t part_size_for(std::uint64_t chunksize, std::uint64_t expected_size);

// A part is never larger than 1/kPartGrowthDivisor of the bytes uploaded before it (see
// UploadPartSizes).
inline constexpr std::uint64_t kPartGrowthDivisor = 64;

// The part sizes of one streamed multipart upload, whose parts are held in memory until S3 took
// them: what an uploader holds is (concurrency + 1) x the part being filled. So the part size
// comes from `chunksize`, not from what a client says it will send:
//   - every part is `chunksize` (raised to 5 MiB, rounded up to a whole MiB) while 10,000 such
//     parts hold the expected size, which is the case for every object up to 10,000 x chunksize
//     (48.8 GiB at the 5 MiB default) and whenever the size is unknown;
//   - a larger expected size grows the parts, but a part is never larger than 1/64 of the bytes
//     uploaded before it (rounded up to a whole MiB), nor than the smallest ceiling (whole MiB,
//     at most 5 GiB) with which the 10,000 parts hold the expected size.
// A client that declares terabytes and sends megabytes therefore makes the uploader hold no more
// than for a small object; a genuine large object reaches its large parts only after it sent
// 64 times their size. The cost: the largest object is a little under 10,000 x 5 GiB
// (max_object_size()).
class UploadPartSizes {
public:
    // nullopt: `expected_size` bytes cannot be uploaded in 10,000 parts (more than
    // max_object_size(chunksize)). `expected_size` 0: unknown.
    static std::optional<UploadPartSizes> plan(std::uint64_t chunksize,
                                               std::uint64_t expected_size);
    // The largest object a plan can hold with this chunksize (about 46.7 TiB at 5 MiB, 47.6 TiB
    // at 100 MiB; 10,000 parts of 5 GiB would be 48.8 TiB).
    static std::uint64_t max_object_size(std::uint64_t chunksize);

    // The size of the part that starts `offset` bytes into the object.
    std::uint64_t at(std::uint64_t offset) const;
    // The largest part this plan uses (chunksize when the parts do not grow).
    std::uint64_t ceiling() const { return ceiling_; }
    // What 10,000 parts of this plan hold.
    std::uint64_t capacity() const;

private:
    UploadPartSizes(std::uint64_t floor, std::uint64_t ceiling)
        : floor_(floor), ceiling_(ceiling) {}

    std::uint64_t floor_;
    std::uint64_t ceiling_;
};

}  // namespace drayage::s3
