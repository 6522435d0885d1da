// Listings (GET /v2/_catalog and /v2/<name>/tags/list): reading the upstream's pages, and the
// spec's pagination (n, last, Link) served from the full sorted list. Pure functions: no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/util/result.hpp"

namespace drayage::registry {

// The largest `n` a catalog request may ask for: docker-registry's default `catalog.maxentries`
// (2.8.2 answers 400 PAGINATION_NUMBER_INVALID above it), and the catalog's page size when the
// client sends no `n`, as there. A tag list has no such limit: without `n` it is whole (the
// spec's end-8a), and any `n` returns at most the whole list.
inline constexpr std::uint64_t kMaxCatalogEntries = 1000;

// What drayage reads of one upstream listing (all its pages together): beyond either bound the
// list is not paginated by drayage (see listings.cpp). A name costs its bytes plus a
// std::string in memory, so the count bounds the memory of a list of short names.
inline constexpr std::size_t kMaxListingNames = 100'000;
inline constexpr std::size_t kMaxListingPages = 1000;

// A listing query's `n` and `last` ("n=10&last=v1", without '?'; other pairs are ignored).
struct ListingQuery {
    std::optional<std::uint64_t> n;  // none: absent or empty; UINT64_MAX: more digits than fit
    std::string last;                // percent-decoded; "" for none
};
// Error 400 PAGINATION_NUMBER_INVALID: an `n` that is not a non-negative decimal integer
// (docker-registry 2.8 ignores such an `n`; Distribution 3 refuses it likewise).
Result<ListingQuery> parse_listing_query(std::string_view query);

// Nesting deeper than this in a listing page stops the reader (a page is two levels deep).
inline constexpr std::size_t kMaxCatalogDepth = 16;

// Appends to `names` the strings of the top-level array `member` ("repositories" or "tags") of
// one upstream page. Streams through the body (a SAX pass, no DOM): besides the names, it costs
// at most three times the longest run of punctuation and whitespace in the body while it runs
// (nlohmann's lexer keeps those characters in a vector until the next scalar, for its error
// messages). Other members are ignored; names that are not strings are dropped. Errors:
// LISTING_INVALID (not a JSON object, unreadable, nesting deeper than kMaxCatalogDepth),
// LISTING_TOO_LONG (`names` would hold more than kMaxListingNames).
Status read_listing_page(std::string_view body, std::string_view member,
                         std::vector<std::string>& names);

// The query of the next page named by an upstream's `Link: <...?query>; rel="next"`, nullopt
// when there is none. Only the query is taken: drayage asks its own upstream URL, wherever the
// link points.
std::optional<std::string> next_page_query(std::string_view link);

// One page of `sorted` (ascending, byte order: what the spec calls lexical): the names after
// `q.last`, at most `q.n` of them (or `default_n` without one; 0 for no limit). `next_last` is
// set when more remain: the last name of the page, for the Link.
struct ListingPage {
    std::vector<std::string_view> names;
    std::optional<std::string> next_last;
    std::uint64_t n = 0;  // the page size applied
};
ListingPage select_page(const std::vector<std::string>& sorted, const ListingQuery& q,
                        std::uint64_t default_n);

// `</v2/<path>?last=<last, escaped>&n=<n>>; rel="next"`: docker-registry's form of the Link
// (its keys in this order, the value query-escaped as Go's url.Values does).
std::string next_page_link(std::string_view path, std::string_view last, std::uint64_t n);

}  // namespace drayage::registry
