// Parsing and printing of sizes and durations for the config file.
//
// Both parsers work on whole numbers plus an optional decimal fraction held as an integer
// (digits and count of digits), so "1.5GiB" is exact and no floating-point rounding can make a
// value one byte off from what the operator wrote.
#include "drayage/config/size.hpp"

#include <array>
#include <cctype>
#include <limits>
#include <string>

#include "drayage/util/text.hpp"

namespace drayage::config {
namespace {

__extension__ typedef unsigned __int128 U128;

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
using text::ascii_lower;

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

// A decimal number as written: whole part, and the fraction as digits/10^fraction_digits.
// Fraction digits past 18 are dropped (they are below any unit's resolution).
struct Decimal {
    std::uint64_t whole = 0;
    std::uint64_t fraction = 0;
    std::uint64_t fraction_scale = 1;  // 10^(kept fraction digits)
    bool has_fraction = false;
};

// Reads a decimal number at the front of `s` and advances past it. False on no digits or on a
// whole part past 2^64-1.
bool read_decimal(std::string_view& s, Decimal& out, bool& overflow) {
    overflow = false;
    std::size_t i = 0;
    bool any = false;
    while (i < s.size() && is_digit(s[i])) {
        any = true;
        if (__builtin_mul_overflow(out.whole, 10u, &out.whole) ||
            __builtin_add_overflow(out.whole, static_cast<unsigned>(s[i] - '0'), &out.whole)) {
            overflow = true;
            return false;
        }
        ++i;
    }
    if (i < s.size() && s[i] == '.') {
        ++i;
        out.has_fraction = true;
        int kept = 0;
        bool frac_any = false;
        while (i < s.size() && is_digit(s[i])) {
            frac_any = true;
            if (kept < 18) {
                out.fraction = out.fraction * 10 + static_cast<unsigned>(s[i] - '0');
                out.fraction_scale *= 10;
                ++kept;
            }
            ++i;
        }
        if (!frac_any) {
            return false;
        }
    }
    s.remove_prefix(i);
    return any;
}

// value * unit, the fraction truncated; nullopt-like false on overflow.
bool scale(const Decimal& d, std::uint64_t unit, std::uint64_t& out) {
    U128 total = static_cast<U128>(d.whole) * unit;
    total += static_cast<U128>(d.fraction) * unit / d.fraction_scale;
    if (total > kMax) {
        return false;
    }
    out = static_cast<std::uint64_t>(total);
    return true;
}

struct Unit {
    std::string_view name;  // lower case
    std::uint64_t factor;
};

constexpr std::uint64_t K = 1024;
constexpr std::array<Unit, 21> kSizeUnits{{
    {"b", 1},
    {"k", K},
    {"ki", K},
    {"kib", K},
    {"kb", 1000},
    {"m", K* K},
    {"mi", K* K},
    {"mib", K* K},
    {"mb", 1000'000},
    {"g", K* K* K},
    {"gi", K* K* K},
    {"gib", K* K* K},
    {"gb", 1000'000'000},
    {"t", K* K* K* K},
    {"ti", K* K* K* K},
    {"tib", K* K* K* K},
    {"tb", 1000'000'000'000},
    {"p", K* K* K* K* K},
    {"pi", K* K* K* K* K},
    {"pib", K* K* K* K* K},
    {"pb", 1000'000'000'000'000},
}};

Error size_error(std::string message) {
    return make_error("config.size", std::move(message));
}
Error duration_error(std::string message) {
    return make_error("config.duration", std::move(message));
}

}  // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
    std::string_view s = text::trim_ows(text);
    if (s.empty()) {
        return size_error("empty size");
    }
    if (s.front() == '-') {
        return size_error(quoted(text) + " is negative");
    }
    Decimal number;
    bool overflow = false;
    if (!read_decimal(s, number, overflow)) {
        return size_error(overflow ? quoted(text) + " is larger than 2^64-1 bytes"
                                   : quoted(text) + " does not start with a number");
    }
    s = text::trim_ows(s);
    std::uint64_t factor = 0;
    if (s.empty()) {
        factor = 1;
    } else {
        const std::string unit = ascii_lower(s);
        for (const Unit& u : kSizeUnits) {
            if (u.name == unit) {
                factor = u.factor;
            }
        }
        if (factor == 0) {
            return size_error("unknown unit " + quoted(s) + " in " + quoted(text) +
                              " (use B, KiB, MiB, GiB, TiB, k, m, g, t, KB, MB, GB, TB)");
        }
    }
    if (number.has_fraction && factor == 1) {
        return size_error(quoted(text) + " is a fractional number of bytes");
    }
    std::uint64_t bytes = 0;
    if (!scale(number, factor, bytes)) {
        return size_error(quoted(text) + " is larger than 2^64-1 bytes");
    }
    return bytes;
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
    std::string_view s = text::trim_ows(text);
    if (s.empty()) {
        return duration_error("empty duration");
    }
    if (s.front() == '-') {
        return duration_error(quoted(text) + " is negative");
    }
    constexpr std::uint64_t kLimit = static_cast<std::uint64_t>(std::numeric_limits<long>::max());
    std::uint64_t total_ms = 0;
    bool plain = true;  // a lone number without unit means seconds
    while (!s.empty()) {
        Decimal number;
        bool overflow = false;
        if (!read_decimal(s, number, overflow)) {
            return duration_error(overflow ? quoted(text) + " is too long"
                                           : quoted(text) + " is not a duration");
        }
        std::size_t n = 0;
        while (n < s.size() && std::isalpha(static_cast<unsigned char>(s[n]))) {
            ++n;
        }
        const std::string unit = ascii_lower(s.substr(0, n));
        s.remove_prefix(n);
        std::uint64_t factor = 0;
        if (unit.empty()) {
            if (!plain || !text::trim_ows(s).empty()) {
                return duration_error(quoted(text) + ": every number needs a unit (h, m, s, ms)");
            }
            factor = 1000;
        } else if (unit == "h") {
            factor = 3600'000;
        } else if (unit == "m") {
            factor = 60'000;
        } else if (unit == "s") {
            factor = 1000;
        } else if (unit == "ms") {
            factor = 1;
        } else {
            return duration_error("unknown unit " + quoted(unit) + " in " + quoted(text) +
                                  " (use h, m, s, ms)");
        }
        plain = false;
        // Exactness check before truncating: a sub-millisecond remainder is an error, not noise.
        if (static_cast<U128>(number.fraction) * factor % number.fraction_scale != 0) {
            return duration_error(quoted(text) + " is finer than a millisecond");
        }
        std::uint64_t ms = 0;
        if (!scale(number, factor, ms) || __builtin_add_overflow(total_ms, ms, &total_ms) ||
            total_ms > kLimit) {
            return duration_error(quoted(text) + " is too long");
        }
        s = text::trim_ows(s);
    }
    return std::chrono::milliseconds(static_cast<long>(total_ms));
}

std::string format_size(std::uint64_t bytes) {
    static constexpr std::array<Unit, 5> kBinary{{
        {"PiB", K * K * K * K * K},
        {"TiB", K * K * K * K},
        {"GiB", K * K * K},
        {"MiB", K * K},
        {"KiB", K},
    }};
    if (bytes != 0) {
        for (const Unit& u : kBinary) {
            if (bytes % u.factor == 0) {
                return std::to_string(bytes / u.factor) + std::string(u.name);
            }
        }
    }
    return std::to_string(bytes);
}

std::string format_duration(std::chrono::milliseconds duration) {
    long ms = duration.count();
    if (ms <= 0) {
        return ms == 0 ? "0s" : std::to_string(ms) + "ms";
    }
    std::string out;
    const long h = ms / 3600'000;
    ms %= 3600'000;
    const long m = ms / 60'000;
    ms %= 60'000;
    const long s = ms / 1000;
    ms %= 1000;
    if (h != 0) {
        out += std::to_string(h) + "h";
    }
    if (m != 0) {
        out += std::to_string(m) + "m";
    }
    if (s != 0) {
        out += std::to_string(s) + "s";
    }
    if (ms != 0) {
        out += std::to_string(ms) + "ms";
    }
    return out;
}

}  // namespace drayage::config
