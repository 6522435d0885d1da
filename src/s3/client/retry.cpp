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

std::uint64_t part_size_for(std::uint64_t chunksize, std::uint64_t expected_size) {
    constexpr std::uint64_t mib = 1024 * 1024;
    std::uint64_t size = std::max(chunksize, kMinPartSize);
    if (expected_size > 0) {
        std::uint64_t needed = (expected_size + kMaxParts - 1) / kMaxParts;
        size = std::max(size, needed);
    }
    size = (size + mib - 1) / mib * mib;
    return std::min(size, kMaxPartSize);
}

}  // namespace drayage::s3
