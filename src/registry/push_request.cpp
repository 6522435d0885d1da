// The pure parts of the push path's requests: query parameters, upload ids, Content-Range, the
// Range header, S3 timestamps. Declared in include/drayage/registry/push.hpp.
#include <openssl/rand.h>

#include <array>
#include <cstdio>
#include <ctime>
#include <string>

#include "drayage/registry/push.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string percent_decode(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] == '%' && i + 2 < in.size()) {
            int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        out.push_back(in[i] == '+' ? ' ' : in[i]);
    }
    return out;
}

}  // namespace

std::optional<std::string> query_param(std::string_view query, std::string_view name) {
    while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        auto eq = pair.find('=');
        std::string_view key = pair.substr(0, eq);
        if (key != name) continue;
        return eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1));
    }
    return std::nullopt;
}

std::string new_upload_uuid() {
    std::array<unsigned char, 16> b{};
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) return {};
    b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
    b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
    std::string h =
        digest::hex_encode(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
           "-" + h.substr(20);
}

Result<UploadRange> parse_upload_range(std::string_view header) {
    Error bad = make_error("RANGE_INVALID", "malformed Content-Range", 416);
    if (header.substr(0, 6) == "bytes ") header.remove_prefix(6);
    if (auto slash = header.find('/'); slash != std::string_view::npos)
        header = header.substr(0, slash);
    auto dash = header.find('-');
    if (dash == std::string_view::npos) return bad;
    const auto& num = text::parse_u64;
    UploadRange r;
    if (!num(header.substr(0, dash), r.first) || !num(header.substr(dash + 1), r.last) ||
        r.last < r.first)
        return bad;
    return r;
}

std::string upload_range_header(std::uint64_t offset) {
    return "0-" + std::to_string(offset == 0 ? 0 : offset - 1);
}

std::optional<std::int64_t> parse_s3_time(std::string_view text) {
    std::string s(text);
    std::tm tm{};
    int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0;
    char tail = 0;
    // NOLINTNEXTLINE(cert-err34-c): the count check rejects malformed input
    if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &year, &mon, &day, &hour, &min, &sec,
                    &tail) != 7)
        return std::nullopt;
    if (tail != '.' && tail != 'Z') return std::nullopt;
    if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
        return std::nullopt;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    return static_cast<std::int64_t>(timegm(&tm));
}

}  // namespace drayage::registry
