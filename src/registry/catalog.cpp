#include "drayage/registry/catalog.hpp"

#include <nlohmann/json.hpp>

#include "drayage/util/text.hpp"

namespace drayage::registry {

std::optional<std::uint64_t> catalog_page_size(std::string_view query) {
    while (!query.empty()) {
        std::string_view pair = query.substr(0, query.find('&'));
        query.remove_prefix(std::min(query.size(), pair.size() + 1));
        if (pair.substr(0, 2) != "n=") continue;
        std::string_view value = pair.substr(2);
        std::uint64_t n = 0;
        if (text::parse_u64(value, n)) return n;
        bool digits = !value.empty() && value.find_first_not_of("0123456789") == value.npos;
        if (digits) return UINT64_MAX;  // more digits than a u64 holds
        return std::nullopt;
    }
    return std::nullopt;
}

namespace {

// SAX events of one catalog page. Strings directly inside the top-level object's
// "repositories" array are names; everything else is counted for depth and skipped. Returning
// false from an event stops the parse (sax_parse then returns false).
class CatalogFilter {
public:
    using json = nlohmann::json;

    CatalogFilter(const std::function<bool(const std::string&)>& keep, std::string& out)
        : keep_(keep), out_(out) {}

    bool too_deep() const { return too_deep_; }

    bool start_object(std::size_t) { return enter(); }
    bool end_object() { return leave(); }
    bool start_array(std::size_t) {
        if (depth_ == 0) return false;  // a page is an object
        if (depth_ == 1) in_names_ = key_is_repositories_;
        return enter();
    }
    bool end_array() {
        if (depth_ == 2) in_names_ = false;
        return leave();
    }
    bool key(json::string_t& k) {
        if (depth_ == 1) key_is_repositories_ = k == "repositories";
        return true;
    }
    bool string(json::string_t& s) {
        if (depth_ == 0) return false;
        if (!in_names_ || depth_ != 2 || !keep_(s)) return true;
        if (!first_) out_ += ',';
        first_ = false;
        out_ += json(s).dump(-1, ' ', false, json::error_handler_t::replace);
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

    const std::function<bool(const std::string&)>& keep_;
    std::string& out_;
    std::size_t depth_ = 0;
    bool key_is_repositories_ = false;
    bool in_names_ = false;  // inside the top-level "repositories" array
    bool first_ = true;
    bool too_deep_ = false;
};

}  // namespace

Result<std::string> filter_catalog_page(std::string_view body,
                                        const std::function<bool(const std::string&)>& keep) {
    std::string out = R"({"repositories":[)";
    CatalogFilter filter(keep, out);
    if (!nlohmann::json::sax_parse(body, &filter)) {
        return make_error("CATALOG_INVALID",
                          filter.too_deep() ? "catalog page nests deeper than " +
                                                  std::to_string(kMaxCatalogDepth) + " levels"
                                            : std::string("catalog page is not a JSON object"));
    }
    out += "]}";
    return out;
}

}  // namespace drayage::registry
