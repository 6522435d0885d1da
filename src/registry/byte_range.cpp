// The Range grammar of a blob GET (include/drayage/registry/byte_range.hpp).
#include "drayage/registry/byte_range.hpp"

#include "drayage/util/text.hpp"

namespace drayage::registry {

Result<std::optional<ByteSpan>> parse_range(std::string_view header, std::uint64_t size) {
    if (header.empty()) return std::optional<ByteSpan>{};
    constexpr std::string_view kBytes = "bytes=";
    if (header.substr(0, kBytes.size()) != kBytes) return std::optional<ByteSpan>{};
    std::string_view spec = header.substr(kBytes.size());
    if (spec.find(',') != std::string_view::npos) return std::optional<ByteSpan>{};
    auto dash = spec.find('-');
    if (dash == std::string_view::npos) return std::optional<ByteSpan>{};
    const auto& parse_num = text::parse_u64;
    std::string_view a = spec.substr(0, dash), b = spec.substr(dash + 1);
    std::uint64_t first = 0, last = 0;
    Error unsatisfiable = make_error("RANGE_INVALID", "range not satisfiable", 416);
    if (a.empty()) {  // suffix: the last N bytes
        std::uint64_t n = 0;
        if (!parse_num(b, n)) return std::optional<ByteSpan>{};
        if (n == 0 || size == 0) return unsatisfiable;
        first = n >= size ? 0 : size - n;
        return std::optional<ByteSpan>{ByteSpan{first, size - 1}};
    }
    if (!parse_num(a, first)) return std::optional<ByteSpan>{};
    if (b.empty()) {
        last = size == 0 ? 0 : size - 1;
    } else if (!parse_num(b, last) || last < first) {
        return std::optional<ByteSpan>{};  // syntactically invalid: ignore, per RFC 9110
    }
    if (first >= size) return unsatisfiable;
    if (last >= size) last = size - 1;
    return std::optional<ByteSpan>{ByteSpan{first, last}};
}

}  // namespace drayage::registry
