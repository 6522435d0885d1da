// Small text helpers shared by the HTTP-facing modules.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

namespace drayage::text {

// A non-negative decimal of 1 to 19 digits (so it cannot overflow), nothing else: no sign, no
// spaces. Used for Range, Content-Range and similar header fields.
inline bool parse_u64(std::string_view s, std::uint64_t& out) {
    if (s.empty() || s.size() > 19) return false;
    out = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        out = out * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return true;
}

// Unix seconds as RFC 3339 UTC, "2026-11-28T10:15:37Z".
inline std::string rfc3339_utc(std::int64_t unix_seconds) {
    std::time_t tt = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace drayage::text
