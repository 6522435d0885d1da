// GET /v2/_catalog: the page size a client may ask for, and the filter that drops repositories a
// client may not pull from the upstream's page. Pure functions: no I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::registry {

// The largest `n` a catalog request may ask for: docker-registry's default `catalog.maxentries`
// (2.8.2 answers 400 PAGINATION_NUMBER_INVALID above it rather than build a page of any size).
inline constexpr std::uint64_t kMaxCatalogEntries = 1000;

// The `n` of a catalog query ("n=100&last=x", without '?'). nullopt when there is none or it is
// not a decimal number (docker-registry then uses its default, and so does the upstream). A
// number too long to hold is returned as UINT64_MAX, so it is refused like any other too large.
std::optional<std::uint64_t> catalog_page_size(std::string_view query);

// Nesting deeper than this in a catalog page stops the filter (a page is two levels deep).
inline constexpr std::size_t kMaxCatalogDepth = 16;

// The upstream's catalog page `body` ({"repositories":["a","b",...]}) with only the names for
// which `keep(name)` is true, as {"repositories":[...]}. Streams through the body (a SAX pass,
// no DOM): besides the names kept, it costs at most three times the longest run of punctuation
// and whitespace in the body while it runs (nlohmann's lexer keeps those characters in a vector
// until the next scalar, for its error messages), whatever the body holds. Other members of the
// object are ignored; names that are not strings are dropped. Errors (code "CATALOG_INVALID"):
// not a JSON object, an unreadable document, or nesting deeper than kMaxCatalogDepth.
Result<std::string> filter_catalog_page(std::string_view body,
                                        const std::function<bool(const std::string&)>& keep);

}  // namespace drayage::registry
