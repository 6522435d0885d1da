// The pure parts of the push path's requests: upload ids, Content-Range, the
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

Status check_chunk_range(std::string_view content_range,
                         std::optional<std::uint64_t> content_length, std::uint64_t offset) {
    if (content_range.empty()) return {};
    auto range = parse_upload_range(content_range);
    bool follows = range && range->first == offset;
    bool sized = !range || !content_length || *content_length == range->last - range->first + 1;
    if (follows && sized) return {};
    return make_error("RANGE_INVALID",
                      std::string(follows ? "Content-Range does not cover the Content-Length: "
                                          : "Content-Range does not follow on: ") +
                          "the upload continues at byte " + std::to_string(offset),
                      416);
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
