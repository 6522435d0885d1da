// The key table and what reads it: the types of keys, the table (keys.cpp), the text helpers the
// loader and the checks share (checks.cpp). Private to src/config/.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "drayage/config/config.hpp"
#include "drayage/util/text.hpp"

namespace drayage::config::detail {

inline constexpr std::string_view kEnvPrefix = "DRAYAGE_";

// Returns "" when the value is acceptable, else what was expected.
using StringCheck = std::string (*)(std::string_view);

struct StringKey {
    std::string& (*field)(Config&);
    bool secret = false;
    StringCheck check = nullptr;
};
struct EnumKey {
    std::string& (*field)(Config&);
    std::span<const std::string_view> allowed;  // canonical spellings; input matched ignoring case
};
struct BoolKey {
    bool& (*field)(Config&);
};
struct SizeKey {
    std::uint64_t& (*field)(Config&);
    std::uint64_t min;
    std::uint64_t max;
    std::string_view min_why;  // "the S3 minimum part size"; empty: "the minimum"
    std::string_view max_why;
};
struct CountKey {  // plain whole numbers (counts), for std::uint64_t or int fields
    std::uint64_t& (*u64)(Config&);
    int& (*i32)(Config&);
    std::uint64_t min;
    std::uint64_t max;
};
struct MillisKey {
    Millis& (*field)(Config&);
    Millis min;
    Millis max;
};
struct SecondsKey {
    Seconds& (*field)(Config&);
    Millis min;
    Millis max;
};
// A Distribution s3 driver key drayage accepts (so a pasted registry block loads) but does not
// use. The value is type-checked like Distribution does, then only noted.
enum class ValueType { kBool, kInteger, kString };
struct IgnoredKey {
    ValueType type;
    std::string_view why;
};

using KeyKind =
    std::variant<StringKey, EnumKey, BoolKey, SizeKey, CountKey, MillisKey, SecondsKey, IgnoredKey>;

struct Key {
    std::string_view path;
    KeyKind kind;
};

// The keys in the order render_redacted() prints them (keys.cpp).
const std::vector<Key>& keys();

inline constexpr std::array<std::string_view, 14> kSections{"log",
                                                            "http",
                                                            "http.limits",
                                                            "http.tls",
                                                            "cache",
                                                            "upstream",
                                                            "uploads",
                                                            "storage",
                                                            "storage.s3",
                                                            "storage.s3.multipart",
                                                            "storage.s3.retry",
                                                            "auth",
                                                            "auth.htpasswd",
                                                            "auth.token"};

// auth keys whose values are lists or mappings (outside the scalar key table: they are read
// from the file only, not from the environment).
inline constexpr std::array<std::string_view, 3> kAuthLists{"auth.groups", "auth.rules",
                                                            "auth.passthrough"};

bool is_section(std::string_view path);
const Key* find_key(std::string_view path);
bool is_s3_path(std::string_view path);
bool is_auth_path(std::string_view path);
// The DRAYAGE_* variable that sets `path`.
std::string env_name(std::string_view path);

// DRAYAGE_* variables that are not configuration.
inline constexpr std::array<std::string_view, 3> kReservedEnv{
    "DRAYAGE_BUILD_DIR", "DRAYAGE_TEST_QUICK", "DRAYAGE_CONFIG"};

// ---- text helpers and value checks (checks.cpp) ---------------------------------------------

using text::ascii_lower;

std::string quoted(std::string_view s);
// The parser's reason for rejecting `text`, as " (reason)" without repeating the text, or ""
// when it says no more than "expected ..., got ..." already does.
std::string reason(std::string_view text, std::string message);
// The known key or section path closest to `path` (case-insensitively), if it is close. With
// `env_style`, `path` is spelt with '_' for '.' (from a variable name) and so are candidates.
std::string suggestion(std::string_view path, bool env_style = false);
bool parse_bool(std::string_view text, bool& out);
bool parse_count(std::string_view text, std::uint64_t& out);
// Checks "host[:port]" of a URL or endpoint; `port_required` for listen addresses.
std::string check_host_port(std::string_view hp, bool port_required, std::string& host_out,
                            std::uint16_t& port_out);
// Returns "" when the value is acceptable, else what was expected (StringKey::check).
std::string check_addr(std::string_view v);
std::string check_url(std::string_view v);
std::string check_endpoint(std::string_view v);

}  // namespace drayage::config::detail
