// Query-string decoding. The contract is in include/drayage/util/query.hpp.
#include "drayage/util/query.hpp"

#include <string>
#include <string_view>

namespace drayage::query {
namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Calls visit(key, value, has_value) with the raw parts of each '&'-separated pair, empty
// pairs included; stops when visit returns false.
template <typename Visit>
void for_each_pair(std::string_view query, Visit visit) {
    while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        auto eq = pair.find('=');
        std::string_view value = eq == std::string_view::npos ? "" : pair.substr(eq + 1);
        if (!visit(pair.substr(0, eq), value, pair)) return;
    }
}

}  // namespace

std::string decode(std::string_view in) {
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

std::optional<std::string> param(std::string_view query, std::string_view name) {
    std::optional<std::string> found;
    for_each_pair(query, [&](std::string_view key, std::string_view value, std::string_view) {
        if (key != name) return true;
        found = decode(value);
        return false;
    });
    return found;
}

std::multimap<std::string, std::string> parse(std::string_view query) {
    std::multimap<std::string, std::string> out;
    for_each_pair(query, [&](std::string_view key, std::string_view value, std::string_view pair) {
        if (!pair.empty()) out.emplace(decode(key), decode(value));
        return true;
    });
    return out;
}

}  // namespace drayage::query
