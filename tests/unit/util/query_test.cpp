// Query strings and form bodies (src/util/query.cpp).
#include "drayage/util/query.hpp"

#include <catch2/catch.hpp>
#include <string>

using namespace drayage::query;

TEST_CASE("decode: '+' is a space, %XX a byte, a broken escape stays as sent", "[query]") {
    CHECK(decode("team%2Fx") == "team/x");
    CHECK(decode("team%2fx") == "team/x");
    CHECK(decode("a+b") == "a b");
    CHECK(decode("a%2Bb") == "a+b");
    CHECK(decode("%zz") == "%zz");
    CHECK(decode("%4") == "%4");
    CHECK(decode("x%4g") == "x%4g");
    CHECK(decode("%") == "%");
    CHECK(decode("%41") == "A");
    CHECK(decode("%00") == std::string(1, '\0'));
    CHECK(decode("%%41") == "%A");
    CHECK(decode("") == "");
}

TEST_CASE("param: the first value of a key as sent, decoded", "[query]") {
    const char* q = "mount=sha256%3Aab&from=team%2Fx&digest=sha256:cd&mount=second&empty&plus=a+b";
    CHECK(param(q, "mount") == "sha256:ab");  // the first of two, decoded
    CHECK(param(q, "from") == "team/x");
    CHECK(param(q, "digest") == "sha256:cd");
    CHECK(param(q, "empty") == "");
    CHECK(param(q, "plus") == "a b");
    CHECK_FALSE(param(q, "missing"));
    CHECK_FALSE(param(q, "moun"));
    CHECK_FALSE(param("", "mount"));
    CHECK(param("x=%zz%4", "x") == "%zz%4");  // not an escape: kept as sent
    CHECK(param("a=1&&b=2", "b") == "2");
    CHECK(param("x=a=b", "x") == "a=b");       // the value runs to the next '&'
    CHECK_FALSE(param("mo%75nt=x", "mount"));  // keys are compared as sent
}

TEST_CASE("parse: every pair decoded, empty pairs skipped", "[query]") {
    auto m =
        parse("service=reg&scope=repository%3Aa%3Apull&&scope=repository:b:push&flag&k%20=v+w");
    CHECK(m.size() == 5);
    CHECK(m.find("service")->second == "reg");
    auto [from, to] = m.equal_range("scope");
    REQUIRE(std::distance(from, to) == 2);
    CHECK(from->second == "repository:a:pull");  // equal keys in the order sent
    CHECK(std::next(from)->second == "repository:b:push");
    CHECK(m.find("flag")->second == "");
    CHECK(m.find("k ")->second == "v w");
    CHECK(parse("").empty());
    CHECK(parse("&&").empty());
}
