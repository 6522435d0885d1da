// Query strings and application/x-www-form-urlencoded bodies: "k=v&k2=v2", without the '?'.
//
// Decoding is lenient, as the clients and the registry behind send well-formed input and a
// request must not fail on a stray '%': '+' is a space, "%XX" (hex digits of either case) is
// that byte, and a '%' not followed by two hex digits ("%zz", a trailing "%4") stays as sent.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace drayage::query {

// One key or value, decoded as above.
std::string decode(std::string_view component);

// The value of the first pair whose key is `name` as sent (keys are compared without decoding),
// decoded; nullopt when there is none, "" when it has no '=' ("?uploads") or an empty value.
std::optional<std::string> param(std::string_view query, std::string_view name);

// Every pair, key and value decoded; empty pairs ("a=1&&b=2") are skipped, a pair without '='
// has an empty value. Equal keys keep their order (multimap::find gives the first).
std::multimap<std::string, std::string> parse(std::string_view query);

}  // namespace drayage::query
