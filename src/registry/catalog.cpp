#include "drayage/registry/catalog.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "drayage/s3/sigv4.hpp"
#include "drayage/util/query.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {

Result<ListingQuery> parse_listing_query(std::string_view query) {
    ListingQuery q;
    q.last = query::param(query, "last").value_or("");
    std::string n = query::param(query, "n").value_or("");
    if (n.empty()) return q;
    std::uint64_t value = 0;
    if (text::parse_u64(n, value)) {
        q.n = value;
    } else if (n.find_first_not_of("0123456789") == std::string::npos) {
        q.n = UINT64_MAX;  // more digits than a u64 holds
    } else {
        return make_error("PAGINATION_NUMBER_INVALID",
                          "invalid number of results requested: n must be a non-negative "
                          "integer, not '" +
                              n.substr(0, 40) + "'",
                          400);
    }
    return q;
}

namespace {

// SAX events of one listing page. Strings directly inside the top-level object's `member`
// array are names; everything else is counted for depth and skipped. Returning false from an
// event stops the parse (sax_parse then returns false).
class ListingReader {
public:
    using json = nlohmann::json;

    ListingReader(std::string_view member, std::vector<std::string>& names)
        : member_(member), names_(names) {}

    bool too_deep() const { return too_deep_; }
    bool too_long() const { return too_long_; }

    bool start_object(std::size_t) { return enter(); }
    bool end_object() { return leave(); }
    bool start_array(std::size_t) {
        if (depth_ == 0) return false;  // a page is an object
        if (depth_ == 1) in_names_ = key_is_member_;
        return enter();
    }
    bool end_array() {
        if (depth_ == 2) in_names_ = false;
        return leave();
    }
    bool key(json::string_t& k) {
        if (depth_ == 1) key_is_member_ = k == member_;
        return true;
    }
    bool string(json::string_t& s) {
        if (depth_ == 0) return false;
        if (!in_names_ || depth_ != 2) return true;
        if (names_.size() >= kMaxListingNames) {
            too_long_ = true;
            return false;
        }
        names_.push_back(std::move(s));
        return true;
    }
    bool null() { return depth_ > 0; }
    bool boolean(bool) { return depth_ > 0; }
    bool number_integer(json::number_integer_t) { return depth_ > 0; }
    bool number_unsigned(json::number_unsigned_t) { return depth_ > 0; }
    bool number_float(json::number_float_t, const json::string_t&) { return depth_ > 0; }
    bool binary(json::binary_t&) { return false; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
        return false;
    }

private:
    bool enter() {
        if (++depth_ > kMaxCatalogDepth) {
            too_deep_ = true;
            return false;
        }
        return true;
    }
    bool leave() {
        if (depth_ > 0) --depth_;
        return true;
    }

    std::string_view member_;
    std::vector<std::string>& names_;
    std::size_t depth_ = 0;
    bool key_is_member_ = false;
    bool in_names_ = false;  // inside the top-level `member` array
    bool too_deep_ = false;
    bool too_long_ = false;
};

}  // namespace

Status read_listing_page(std::string_view body, std::string_view member,
                         std::vector<std::string>& names) {
    ListingReader reader(member, names);
    if (nlohmann::json::sax_parse(body, &reader)) return {};
    if (reader.too_long()) {
        return make_error("LISTING_TOO_LONG",
                          "listing holds more than " + std::to_string(kMaxListingNames) + " names");
    }
    return make_error("LISTING_INVALID", reader.too_deep()
                                             ? "listing page nests deeper than " +
                                                   std::to_string(kMaxCatalogDepth) + " levels"
                                             : std::string("listing page is not a JSON object"));
}

std::optional<std::string> next_page_query(std::string_view link) {
    // One link-value is enough: the registry sends a single `<...>; rel="next"`.
    const std::size_t open = link.find('<');
    const std::size_t close = link.find('>', open);
    if (open == std::string_view::npos || close == std::string_view::npos) return std::nullopt;
    if (link.find("rel=\"next\"", close) == std::string_view::npos &&
        link.find("rel=next", close) == std::string_view::npos)
        return std::nullopt;
    std::string_view target = link.substr(open + 1, close - open - 1);
    const std::size_t q = target.find('?');
    if (q == std::string_view::npos || q + 1 == target.size()) return std::nullopt;
    return std::string(target.substr(q + 1));
}

ListingPage select_page(const std::vector<std::string>& sorted, const ListingQuery& q,
                        std::uint64_t default_n) {
    ListingPage page;
    auto it =
        q.last.empty() ? sorted.begin() : std::upper_bound(sorted.begin(), sorted.end(), q.last);
    const auto remaining = static_cast<std::uint64_t>(sorted.end() - it);
    const std::uint64_t n = q.n.value_or(default_n == 0 ? remaining : default_n);
    page.n = n;
    const std::uint64_t take = std::min(n, remaining);
    page.names.reserve(take);
    for (std::uint64_t i = 0; i < take; ++i, ++it)
        page.names.emplace_back(*it);
    // n = 0 asks for an empty page, never a Link (the spec's end-8b).
    if (take > 0 && remaining > take) page.next_last = std::string(page.names.back());
    return page;
}

std::string next_page_link(std::string_view path, std::string_view last, std::uint64_t n) {
    return "<" + std::string(path) + "?last=" + s3::uri_encode(last, false) +
           "&n=" + std::to_string(n) + ">; rel=\"next\"";
}

}  // namespace drayage::registry
