// The catalog page filter and page size: pure functions.
#include "drayage/registry/catalog.hpp"

#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace drayage::registry;

namespace {

auto keep_all = [](const std::string&) { return true; };

std::string filtered(std::string_view body,
                     const std::function<bool(const std::string&)>& keep = keep_all) {
    auto r = filter_catalog_page(body, keep);
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

TEST_CASE("a catalog page keeps the names the caller may see, in order", "[catalog]") {
    auto keep = [](const std::string& n) { return n.rfind("public/", 0) == 0; };
    CHECK(filtered(R"({"repositories":["public/a","team/x","public/b"]})", keep) ==
          R"({"repositories":["public/a","public/b"]})");
    CHECK(filtered(R"({"repositories":[]})") == R"({"repositories":[]})");
    CHECK(filtered(R"({})") == R"({"repositories":[]})");
    // Other members, before or after, and values that are not names are skipped; names after
    // them still count. Escapes survive.
    CHECK(filtered(R"({"x":{"repositories":["no"]},"repositories":["a",1,null,["no"],)"
                   R"({"b":"no"},"c\"d"],"y":[["no"]]})") == R"({"repositories":["a","c\"d"]})");
    auto page = nlohmann::json::parse(filtered(R"({"repositories":["a\u00e9","b"]})"));
    CHECK(page["repositories"][0] == "a\u00e9");
}

TEST_CASE("a catalog page that is not an object of names is refused", "[catalog]") {
    for (std::string_view body :
         {"", "[]", R"(["a"])", "42", R"("s")", "null", R"({"repositories":["a")",
          R"({"repositories":["a"]} x)", "{\"repositories\":[\"\xff\"]}"}) {
        auto r = filter_catalog_page(body, keep_all);
        CAPTURE(body);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "CATALOG_INVALID");
    }
    std::string nested = R"({"repositories":)";
    nested += std::string(kMaxCatalogDepth, '[');
    nested += std::string(kMaxCatalogDepth, ']');
    nested += "}";
    auto r = filter_catalog_page(nested, keep_all);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("deeper") != std::string::npos);
}

TEST_CASE("a hostile catalog page costs no memory beyond its names", "[catalog]") {
    // 16 MiB (the upstream listing cap) of '[': a DOM of it takes gigabytes; the filter stops
    // at kMaxCatalogDepth. 16 MiB of names, none kept: nothing is built.
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
    auto keep = [](const std::string& n) { return n == "public/a"; };

    long before = peak_rss_kib();
    auto r = filter_catalog_page(deep, keep);
    REQUIRE_FALSE(r.ok());
    r = filter_catalog_page(names, keep);
    REQUIRE(r.ok());
    CHECK(*r == R"({"repositories":[]})");
    if (kRssMeaningful) CHECK(peak_rss_kib() - before < 1024);
    r = filter_catalog_page(punctuation, keep);
    REQUIRE(r.ok());
    if (kRssMeaningful) CHECK(peak_rss_kib() - before < static_cast<long>(3 * cap / 1024 + 4096));
}

TEST_CASE("the page size of a catalog query", "[catalog]") {
    CHECK(catalog_page_size("") == std::nullopt);
    CHECK(catalog_page_size("last=a") == std::nullopt);
    CHECK(catalog_page_size("n=5") == 5u);
    CHECK(catalog_page_size("last=x&n=1001") == 1001u);
    CHECK(catalog_page_size("nn=5&n=7") == 7u);
    // Not a number: the default applies (docker-registry ignores it too).
    CHECK(catalog_page_size("n=") == std::nullopt);
    CHECK(catalog_page_size("n=abc") == std::nullopt);
    CHECK(catalog_page_size("n=-1") == std::nullopt);
    CHECK(catalog_page_size("n=99999999999999999999999") == UINT64_MAX);
}
