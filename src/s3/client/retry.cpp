#include "drayage/s3/retry.hpp"

#include <algorithm>

namespace drayage::s3 {

namespace {

// CURLcode values (curl/curl.h) that mean "the peer or the path failed, try again". Listed by
// number so this pure module needs no curl header.
bool transient_curl_code(int code) {
    switch (code) {
        case 6:   // CURLE_COULDNT_RESOLVE_HOST (DNS hiccup)
        case 7:   // CURLE_COULDNT_CONNECT
        case 18:  // CURLE_PARTIAL_FILE (connection closed before Content-Length)
        case 28:  // CURLE_OPERATION_TIMEDOUT (connect, total or stall timeout)
        case 52:  // CURLE_GOT_NOTHING
        case 55:  // CURLE_SEND_ERROR (reset while sending)
        case 56:  // CURLE_RECV_ERROR (reset while receiving)
        case 92:  // CURLE_HTTP2_STREAM
            return true;
        default: return false;
    }
}

}  // namespace

bool is_retryable(const AttemptFailure& failure, bool idempotent) {
    if (failure.http_status == 0) {
        return idempotent && transient_curl_code(failure.curl_code);
    }
    if (failure.s3_code == "SlowDown" || failure.s3_code == "RequestTimeout" ||
        failure.s3_code == "InternalError" || failure.s3_code == "ServiceUnavailable") {
        return true;
    }
    switch (failure.http_status) {
        case 500:
        case 502:
        case 503:
        case 504: return true;
        default: return false;
    }
}

std::chrono::milliseconds backoff_delay(int attempt, std::chrono::milliseconds base_delay,
                                        std::chrono::milliseconds max_delay, std::uint64_t random) {
    if (attempt < 1 || base_delay.count() <= 0 || max_delay.count() <= 0) {
        return std::chrono::milliseconds(0);
    }
    // Cap the exponent before shifting: 2^40 ms is far past any sane max_delay.
    int shift = std::min(attempt - 1, 40);
    auto base = static_cast<std::uint64_t>(base_delay.count());
    auto cap = static_cast<std::uint64_t>(max_delay.count());
    std::uint64_t ceiling = base > (cap >> shift) ? cap : std::min(cap, base << shift);
    return std::chrono::milliseconds(static_cast<std::int64_t>(random % (ceiling + 1)));
}

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

std::uint64_t round_up_mib(std::uint64_t n) {
    return (n + kMiB - 1) / kMiB * kMiB;
}

// chunksize as a part size: at least 5 MiB, whole MiB, at most 5 GiB.
std::uint64_t floor_part_size(std::uint64_t chunksize) {
    return std::min(round_up_mib(std::max(chunksize, kMinPartSize)), kMaxPartSize);
}

}  // namespace

std::uint64_t part_size_for(std::uint64_t chunksize, std::uint64_t expected_size) {
    std::uint64_t size = std::max(chunksize, kMinPartSize);
    if (expected_size > 0) {
        std::uint64_t needed = (expected_size + kMaxParts - 1) / kMaxParts;
        size = std::max(size, needed);
    }
    return std::min(round_up_mib(size), kMaxPartSize);
}

std::uint64_t UploadPartSizes::at(std::uint64_t offset) const {
    std::uint64_t grown = round_up_mib((offset + kPartGrowthDivisor - 1) / kPartGrowthDivisor);
    return std::min(ceiling_, std::max(floor_, grown));
}

std::uint64_t UploadPartSizes::capacity() const {
    std::uint64_t total = 0;
    for (int part = 0; part < kMaxParts; ++part) {
        total += at(total);
    }
    return total;
}

std::optional<UploadPartSizes> UploadPartSizes::plan(std::uint64_t chunksize,
                                                     std::uint64_t expected_size) {
    std::uint64_t floor = floor_part_size(chunksize);
    if (expected_size <= kMaxParts * floor) return UploadPartSizes(floor, floor);
    if (UploadPartSizes(floor, kMaxPartSize).capacity() < expected_size) return std::nullopt;
    // The smallest ceiling (in whole MiB) whose 10,000 parts hold the object: capacity grows
    // with the ceiling, so a binary search over [floor, 5 GiB] finds it.
    std::uint64_t low = floor / kMiB, high = kMaxPartSize / kMiB;
    while (low < high) {
        std::uint64_t mid = low + (high - low) / 2;
        if (UploadPartSizes(floor, mid * kMiB).capacity() >= expected_size) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    return UploadPartSizes(floor, low * kMiB);
}

std::uint64_t UploadPartSizes::max_object_size(std::uint64_t chunksize) {
    return UploadPartSizes(floor_part_size(chunksize), kMaxPartSize).capacity();
}

}  // namespace drayage::s3
