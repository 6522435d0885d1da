// Listings: reading upstream pages, the query, and the pages drayage serves. Pure functions.
#include "drayage/registry/catalog.hpp"

#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <vector>

using namespace drayage::registry;

namespace {

std::vector<std::string> names_of(std::string_view body, std::string_view member = "repositories") {
    std::vector<std::string> names;
    auto st = read_listing_page(body, member, names);
    REQUIRE(st.ok());
    return names;
}

std::vector<std::string> page_names(const ListingPage& p) {
    return {p.names.begin(), p.names.end()};
}

ListingQuery query(std::string_view q) {
    auto r = parse_listing_query(q);
    REQUIRE(r.ok());
    return *r;
}

// AddressSanitizer keeps freed blocks in its quarantine and pads every allocation, so peak RSS
// there measures the sanitizer, not the filter: the memory checks run in the other builds.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssMeaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kRssMeaningful = false;
#else
constexpr bool kRssMeaningful = true;
#endif
#else
constexpr bool kRssMeaningful = true;
#endif

// Peak resident memory of this process so far, in KiB.
long peak_rss_kib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

}  // namespace

TEST_CASE("a listing page gives the names of its member, in order", "[catalog]") {
    using V = std::vector<std::string>;
    CHECK(names_of(R"({"repositories":["public/a","team/x","public/b"]})") ==
          V{"public/a", "team/x", "public/b"});
    CHECK(names_of(R"({"repositories":[]})").empty());
    CHECK(names_of(R"({})").empty());
    CHECK(names_of(R"({"name":"a/b","tags":["v1","latest"]})", "tags") == V{"v1", "latest"});
    CHECK(names_of(R"({"name":"a/b","tags":["v1"]})").empty());
    // Other members, before or after, and values that are not names are skipped; names after
    // them still count. Escapes survive.
    CHECK(names_of(R"({"x":{"repositories":["no"]},"repositories":["a",1,null,["no"],)"
                   R"({"b":"no"},"c\"d"],"y":[["no"]]})") == V{"a", "c\"d"});
    CHECK(names_of(R"({"repositories":["a\u00e9","b"]})")[0] == "a\u00e9");
}

TEST_CASE("a listing page that is not an object of names is refused", "[catalog]") {
    for (std::string_view body :
         {"", "[]", R"(["a"])", "42", R"("s")", "null", R"({"repositories":["a")",
          R"({"repositories":["a"]} x)", "{\"repositories\":[\"\xff\"]}"}) {
        std::vector<std::string> names;
        auto r = read_listing_page(body, "repositories", names);
        CAPTURE(body);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "LISTING_INVALID");
    }
    std::string nested = R"({"repositories":)";
    nested += std::string(kMaxCatalogDepth, '[');
    nested += std::string(kMaxCatalogDepth, ']');
    nested += "}";
    std::vector<std::string> names;
    auto r = read_listing_page(nested, "repositories", names);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("deeper") != std::string::npos);
}

TEST_CASE("a hostile listing page costs no memory beyond its names", "[catalog]") {
    // 16 MiB (the upstream listing cap) of '[': a DOM of it takes gigabytes; the reader stops
    // at kMaxCatalogDepth. 16 MiB of names: the reader stops at kMaxListingNames.
    const std::size_t cap = 16 * 1024 * 1024;
    std::string deep = R"({"repositories":)" + std::string(cap, '[');
    std::string names = R"({"repositories":[)";
    while (names.size() < cap)
        names += R"("team/x",)";
    names += R"("team/y"]})";
    // 16 MiB of empty arrays: nlohmann's lexer keeps the characters of a run of punctuation
    // and whitespace until the next scalar (for its error messages) in a vector, so such a page
    // costs up to three times its size while it is read (the vector's last doubling: old and
    // new buffers at once), and no more.
    std::string punctuation = R"({"repositories":[)";
    while (punctuation.size() < cap)
        punctuation += "[],";
    punctuation += "0]}";
    std::vector<std::string> out;
    long before = peak_rss_kib();
    auto r = read_listing_page(deep, "repositories", out);
    REQUIRE_FALSE(r.ok());
    CHECK(out.empty());
    if (kRssMeaningful) CHECK(peak_rss_kib() - before < 1024);
    r = read_listing_page(names, "repositories", out);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "LISTING_TOO_LONG");
    CHECK(out.size() == kMaxListingNames);
    out.clear();
    r = read_listing_page(punctuation, "repositories", out);
    REQUIRE(r.ok());
    if (kRssMeaningful) CHECK(peak_rss_kib() - before < static_cast<long>(3 * cap / 1024 + 4096));
}

TEST_CASE("the n and last of a listing query", "[catalog]") {
    CHECK(query("").n == std::nullopt);
    CHECK(query("last=a").n == std::nullopt);
    CHECK(query("last=a").last == "a");
    CHECK(query("n=5").n == 5u);
    CHECK(query("last=x&n=1001").n == 1001u);
    CHECK(query("nn=5&n=7").n == 7u);
    CHECK(query("n=0").n == 0u);
    CHECK(query("n=").n == std::nullopt);  // empty: as if absent (docker-registry too)
    CHECK(query("n=99999999999999999999999").n == UINT64_MAX);
    CHECK(query("last=p%2Fapp&ns=docker.io").last == "p/app");
    for (std::string_view q : {"n=abc", "n=-1", "n=1.5", "n=+3", "n=%31x"}) {
        auto r = parse_listing_query(q);
        CAPTURE(q);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "PAGINATION_NUMBER_INVALID");
        CHECK(r.error().status == 400);
    }
}

TEST_CASE("a page: at most n names after last, and the last one sent when more remain",
          "[catalog]") {
    using V = std::vector<std::string>;
    const V sorted{"B", "Z", "_x", "a", "b", "v1", "v10", "v2"};
    auto all = select_page(sorted, query(""), 0);
    CHECK(page_names(all) == sorted);
    CHECK_FALSE(all.next_last);
    auto first = select_page(sorted, query("n=3"), 0);
    CHECK(page_names(first) == V{"B", "Z", "_x"});
    CHECK(first.next_last == "_x");
    auto second = select_page(sorted, query("n=3&last=_x"), 0);
    CHECK(page_names(second) == V{"a", "b", "v1"});
    auto third = select_page(sorted, query("n=3&last=v1"), 0);
    CHECK(page_names(third) == V{"v10", "v2"});
    CHECK_FALSE(third.next_last);
    // Exactly n left: no Link (nothing remains after the page).
    CHECK_FALSE(select_page(sorted, query("n=2&last=v1"), 0).next_last);
    // n = 0: an empty page, never a Link.
    auto zero = select_page(sorted, query("n=0"), 0);
    CHECK(zero.names.empty());
    CHECK_FALSE(zero.next_last);
    // `last` need not be in the list: the names lexically after it.
    CHECK(page_names(select_page(sorted, query("last=c"), 0)) == V{"v1", "v10", "v2"});
    CHECK(select_page(sorted, query("last=zzz"), 0).names.empty());
    CHECK(page_names(select_page(sorted, query("n=" + std::to_string(UINT64_MAX)), 0)) == sorted);
    // The catalog's default page size applies without n.
    auto paged = select_page(sorted, query(""), 5);
    CHECK(paged.names.size() == 5);
    CHECK(paged.next_last == "b");
    CHECK(paged.n == 5);
    CHECK(select_page({}, query("n=3"), 0).names.empty());
}

TEST_CASE("Link headers: the registry's form out, the next query in", "[catalog]") {
    CHECK(next_page_link("/v2/_catalog", "p/app", 1) ==
          R"(</v2/_catalog?last=p%2Fapp&n=1>; rel="next")");
    CHECK(next_page_link("/v2/a/b/tags/list", "v1.0_x-y", 10) ==
          R"(</v2/a/b/tags/list?last=v1.0_x-y&n=10>; rel="next")");
    CHECK(next_page_query(R"(</v2/_catalog?last=p%2Fapp&n=1>; rel="next")") == "last=p%2Fapp&n=1");
    CHECK(next_page_query(R"(<https://other.example/v2/a/tags/list?n=2&last=b>; rel="next")") ==
          "n=2&last=b");
    CHECK(next_page_query("") == std::nullopt);
    CHECK(next_page_query(R"(</v2/_catalog?n=1>; rel="prev")") == std::nullopt);
    CHECK(next_page_query(R"(</v2/_catalog>; rel="next")") == std::nullopt);
    CHECK(next_page_query("</v2/_catalog?n=1") == std::nullopt);
}
