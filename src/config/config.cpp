// Loading, validating and rendering drayage's configuration.
//
// One table (kKeys) lists every key path with its type, range and field. The YAML walk, the
// DRAYAGE_* environment overrides and render_redacted() are all driven by it, so a key added to
// the table is at once readable from the file, settable from the environment, range-checked and
// printed; nothing can be parsed but not printed, or printed but not settable.
//
// yaml-cpp throws; nothing here lets an exception out: load_string() catches at its edge and
// turns whatever went wrong into one line naming the key path and where it was set.
#include "drayage/config/config.hpp"

#include <arpa/inet.h>
#include <sched.h>
#include <unistd.h>
// yaml-cpp 0.7's node/impl.h trips g++ 12's -Wdangling-pointer (a false positive on its
// temporaries); it is not our code, so silence it for that header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#include <yaml-cpp/yaml.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <span>
#include <sstream>
#include <variant>

#include "drayage/config/size.hpp"
#include "drayage/util/text.hpp"

extern char** environ;

namespace drayage::config {

int default_http_workers() {
    // The CPUs this process may run on (a container's cpuset, taskset), not the host's.
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return std::clamp(cpus - 1, 0, 7);
}
namespace {

constexpr std::string_view kEnvPrefix = "DRAYAGE_";
constexpr std::uint64_t kNoMax = std::numeric_limits<std::uint64_t>::max();
constexpr Millis kHour{3600'000};
constexpr Millis kDay{24 * 3600'000};

// ---- key table -----------------------------------------------------------------------------

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

#define DRAYAGE_FIELD(member) \
    [](Config & c) -> auto& { \
        return c.member;      \
    }

std::string check_addr(std::string_view v);
std::string check_url(std::string_view v);
std::string check_endpoint(std::string_view v);
std::string check_not_empty(std::string_view v) {
    return v.empty() ? "must not be empty" : std::string();
}

constexpr std::array<std::string_view, 6> kLogLevels{"trace", "debug", "info",
                                                     "warn",  "error", "off"};
constexpr std::array<std::string_view, 2> kLogFormats{"text", "json"};
// Distribution's s3StorageClasses: the instant-retrieval classes, and NONE for stores that do
// not accept the x-amz-storage-class header.
constexpr std::array<std::string_view, 9> kStorageClasses{
    "STANDARD",   "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",     "INTELLIGENT_TIERING",
    "GLACIER_IR", "OUTPOSTS",           "NONE",        "EXPRESS_ONEZONE"};

constexpr std::string_view kUnusedWhy = "a Docker Distribution s3 driver key; drayage ignores it";

// The keys, one table per part of the file, in the order keys() lists them.
std::vector<Key> server_keys() {
    return {
        {"log.level", EnumKey{DRAYAGE_FIELD(log.level), kLogLevels}},
        {"log.format", EnumKey{DRAYAGE_FIELD(log.format), kLogFormats}},
        {"log.file", StringKey{DRAYAGE_FIELD(log.file)}},

        {"http.addr", StringKey{DRAYAGE_FIELD(http.addr), false, check_addr}},
        {"http.workers", CountKey{nullptr, DRAYAGE_FIELD(http.workers), 0, 64}},
        {"http.limits.max_request_line",
         SizeKey{DRAYAGE_FIELD(http.limits.max_request_line), 256, MiB, {}, {}}},
        {"http.limits.max_header_bytes",
         SizeKey{DRAYAGE_FIELD(http.limits.max_header_bytes), KiB, 16 * MiB, {}, {}}},
        {"http.limits.max_headers",
         CountKey{DRAYAGE_FIELD(http.limits.max_headers), nullptr, 1, 10'000}},
        {"http.limits.max_body", SizeKey{DRAYAGE_FIELD(http.limits.max_body), 0, kNoMax, {}, {}}},
        {"http.limits.header_timeout",
         MillisKey{DRAYAGE_FIELD(http.limits.header_timeout), Millis{1}, kHour}},
        {"http.limits.idle_timeout",
         MillisKey{DRAYAGE_FIELD(http.limits.idle_timeout), Millis{1}, kDay}},
        {"http.limits.body_timeout",
         MillisKey{DRAYAGE_FIELD(http.limits.body_timeout), Millis{1}, kDay}},
        {"http.limits.send_timeout",
         MillisKey{DRAYAGE_FIELD(http.limits.send_timeout), Millis{1}, kDay}},
        {"http.limits.max_connections",
         CountKey{DRAYAGE_FIELD(http.limits.max_connections), nullptr, 1, 1'000'000}},
        {"http.limits.shutdown_grace",
         MillisKey{DRAYAGE_FIELD(http.limits.shutdown_grace), Millis{0}, kDay}},
        {"http.tls.certificate", StringKey{DRAYAGE_FIELD(http.tls.certificate)}},
        {"http.tls.key", StringKey{DRAYAGE_FIELD(http.tls.key)}},

        {"cache.path", StringKey{DRAYAGE_FIELD(cache.path), false, check_not_empty}},
        {"cache.max_size", SizeKey{DRAYAGE_FIELD(cache.max_size),
                                   64 * MiB,
                                   kNoMax,
                                   "the smallest useful cache (a few layers)",
                                   {}}},
        {"cache.complete_orphan_fills", BoolKey{DRAYAGE_FIELD(cache.complete_orphan_fills)}},

        {"upstream.url", StringKey{DRAYAGE_FIELD(upstream.url), false, check_url}},
        {"upstream.username", StringKey{DRAYAGE_FIELD(upstream.username)}},
        {"upstream.password", StringKey{DRAYAGE_FIELD(upstream.password), true}},
        {"upstream.manifest_ttl",
         SecondsKey{DRAYAGE_FIELD(upstream.manifest_ttl), Millis{0}, 30 * kDay}},
        {"upstream.max_stale",
         SecondsKey{DRAYAGE_FIELD(upstream.max_stale), Millis{0}, 365 * kDay}},
        {"upstream.connect_timeout",
         MillisKey{DRAYAGE_FIELD(upstream.connect_timeout), Millis{1}, kHour}},
        {"upstream.response_timeout",
         MillisKey{DRAYAGE_FIELD(upstream.response_timeout), Millis{1}, kHour}},
        {"upstream.stall_timeout",
         MillisKey{DRAYAGE_FIELD(upstream.stall_timeout), Millis{1}, kHour}},
        {"upstream.timeout", MillisKey{DRAYAGE_FIELD(upstream.timeout), Millis{1}, kHour}},

        {"uploads.session_ttl",
         MillisKey{DRAYAGE_FIELD(uploads.session_ttl), Millis{1'000}, 7 * 24 * kHour}},
        {"uploads.max_sessions",
         CountKey{DRAYAGE_FIELD(uploads.max_sessions), nullptr, 1, 1'000'000}},
    };
}

std::vector<Key> storage_keys() {
    return {
        {"storage.s3.accesskey", StringKey{DRAYAGE_FIELD(storage.s3->accesskey)}},
        {"storage.s3.secretkey", StringKey{DRAYAGE_FIELD(storage.s3->secretkey), true}},
        {"storage.s3.sessiontoken", StringKey{DRAYAGE_FIELD(storage.s3->sessiontoken), true}},
        {"storage.s3.region", StringKey{DRAYAGE_FIELD(storage.s3->region), false, check_not_empty}},
        {"storage.s3.regionendpoint",
         StringKey{DRAYAGE_FIELD(storage.s3->regionendpoint), false, check_endpoint}},
        {"storage.s3.bucket", StringKey{DRAYAGE_FIELD(storage.s3->bucket)}},
        {"storage.s3.encrypt", BoolKey{DRAYAGE_FIELD(storage.s3->encrypt)}},
        {"storage.s3.keyid", StringKey{DRAYAGE_FIELD(storage.s3->keyid)}},
        {"storage.s3.secure", BoolKey{DRAYAGE_FIELD(storage.s3->secure)}},
        {"storage.s3.skipverify", BoolKey{DRAYAGE_FIELD(storage.s3->skipverify)}},
        {"storage.s3.v4auth", BoolKey{DRAYAGE_FIELD(storage.s3->v4auth)}},
        {"storage.s3.chunksize", SizeKey{DRAYAGE_FIELD(storage.s3->chunksize), 5 * MiB, 5 * GiB,
                                         "the S3 minimum part size", "the S3 maximum part size"}},
        {"storage.s3.rootdirectory", StringKey{DRAYAGE_FIELD(storage.s3->rootdirectory)}},
        {"storage.s3.storageclass",
         EnumKey{DRAYAGE_FIELD(storage.s3->storageclass), kStorageClasses}},
        {"storage.s3.writethrough", BoolKey{DRAYAGE_FIELD(storage.s3->writethrough)}},
        {"storage.s3.multipart.concurrency",
         CountKey{nullptr, DRAYAGE_FIELD(storage.s3->multipart.concurrency), 1, 64}},
        {"storage.s3.retry.max_attempts",
         CountKey{nullptr, DRAYAGE_FIELD(storage.s3->retry.max_attempts), 1, 20}},
        {"storage.s3.retry.base_delay",
         MillisKey{DRAYAGE_FIELD(storage.s3->retry.base_delay), Millis{1}, Millis{60'000}}},
        {"storage.s3.retry.max_delay",
         MillisKey{DRAYAGE_FIELD(storage.s3->retry.max_delay), Millis{1}, kHour}},
        {"storage.s3.connect_timeout",
         MillisKey{DRAYAGE_FIELD(storage.s3->connect_timeout), Millis{1}, kHour}},
        {"storage.s3.stall_timeout",
         MillisKey{DRAYAGE_FIELD(storage.s3->stall_timeout), Millis{1}, kHour}},
    };
}

std::vector<Key> auth_keys() {
    return {
        {"auth.htpasswd.path", StringKey{DRAYAGE_FIELD(auth->htpasswd_path)}},
        {"auth.token.realm", StringKey{DRAYAGE_FIELD(auth->token_realm), false, check_url}},
        {"auth.token.service",
         StringKey{DRAYAGE_FIELD(auth->token_service), false, check_not_empty}},
        {"auth.token.issuer", StringKey{DRAYAGE_FIELD(auth->token_issuer), false, check_not_empty}},
        {"auth.token.expiration",
         SecondsKey{DRAYAGE_FIELD(auth->token_expiration), Millis{1'000}, kDay}},
        {"auth.token.key", StringKey{DRAYAGE_FIELD(auth->token_key)}},
        // Decisions of the upstream are cached this long at most: a revoked credential must
        // stop working within a minute.
        {"auth.passthrough_ttl",
         SecondsKey{DRAYAGE_FIELD(auth->passthrough_ttl), Millis{0}, Millis{60'000}}},
    };
}

// Keys of the Distribution s3 driver that drayage accepts and ignores, saying why.
std::vector<Key> ignored_keys() {
    return {
        {"storage.s3.pathstyle",
         IgnoredKey{ValueType::kBool,
                    "drayage uses path-style requests whenever regionendpoint is set"}},
        {"storage.s3.forcepathstyle",
         IgnoredKey{ValueType::kBool,
                    "drayage uses path-style requests whenever regionendpoint is set"}},
        {"storage.s3.multipartcopymaxconcurrency",
         IgnoredKey{ValueType::kInteger,
                    "storage.s3.multipart.concurrency bounds server-side copies too"}},
        {"storage.s3.multipartcopychunksize",
         IgnoredKey{ValueType::kInteger, "server-side copies use storage.s3.chunksize parts"}},
        {"storage.s3.multipartcopythresholdsize", IgnoredKey{ValueType::kInteger, kUnusedWhy}},
        {"storage.s3.objectacl", IgnoredKey{ValueType::kString, kUnusedWhy}},
        {"storage.s3.useragent", IgnoredKey{ValueType::kString, kUnusedWhy}},
        {"storage.s3.accelerate", IgnoredKey{ValueType::kBool, kUnusedWhy}},
        {"storage.s3.usedualstack", IgnoredKey{ValueType::kBool, kUnusedWhy}},
        {"storage.s3.usefipsendpoint", IgnoredKey{ValueType::kBool, kUnusedWhy}},
        {"storage.s3.loglevel", IgnoredKey{ValueType::kString, kUnusedWhy}},
    };
}

const std::vector<Key>& keys() {
    static const std::vector<Key> table = [] {
        std::vector<Key> all;
        for (const auto& part : {server_keys(), storage_keys(), auth_keys(), ignored_keys()})
            all.insert(all.end(), part.begin(), part.end());
        return all;
    }();
    return table;
}

#undef DRAYAGE_FIELD

constexpr std::array<std::string_view, 14> kSections{"log",
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
constexpr std::array<std::string_view, 3> kAuthLists{"auth.groups", "auth.rules",
                                                     "auth.passthrough"};

bool is_section(std::string_view path) {
    return std::find(kSections.begin(), kSections.end(), path) != kSections.end();
}

const Key* find_key(std::string_view path) {
    for (const Key& k : keys()) {
        if (k.path == path) {
            return &k;
        }
    }
    return nullptr;
}

bool is_s3_path(std::string_view path) {
    return path.starts_with("storage.s3.");
}

bool is_auth_path(std::string_view path) {
    return path.starts_with("auth.");
}

std::string env_name(std::string_view path) {
    std::string name(kEnvPrefix);
    for (char c : path) {
        name += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return name;
}

// DRAYAGE_* variables that are not configuration.
constexpr std::array<std::string_view, 3> kReservedEnv{"DRAYAGE_BUILD_DIR", "DRAYAGE_TEST_QUICK",
                                                       "DRAYAGE_CONFIG"};

// ---- small helpers -------------------------------------------------------------------------

using text::ascii_lower;

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

// The parser's reason for rejecting `text`, as " (reason)" without repeating the text, or ""
// when it says no more than "expected ..., got ..." already does.
std::string reason(std::string_view text, std::string message) {
    const std::string prefix = quoted(text) + " ";
    if (message.starts_with(prefix)) {
        message.erase(0, prefix.size());
    }
    if (message == "does not start with a number" || message == "is not a duration") {
        return {};
    }
    return " (" + message + ")";
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

// The known key or section path closest to `path` (case-insensitively), if it is close. With
// `env_style`, `path` is spelt with '_' for '.' (from a variable name) and so are candidates.
std::string suggestion(std::string_view path, bool env_style = false) {
    const std::string want = ascii_lower(path);
    std::string best;
    std::size_t best_distance = 3;  // more than two edits away is not a typo
    auto consider = [&](std::string_view candidate) {
        std::string spelt(candidate);
        if (env_style) {
            std::replace(spelt.begin(), spelt.end(), '.', '_');
        }
        const std::size_t d = edit_distance(want, spelt);
        if (d < best_distance) {
            best_distance = d;
            best = std::string(candidate);
        }
    };
    for (const Key& k : keys()) {
        consider(k.path);
    }
    for (std::string_view s : kSections) {
        consider(s);
    }
    return best;
}

bool parse_bool(std::string_view text, bool& out) {
    // YAML 1.1 spellings plus Go's strconv.ParseBool ones (Distribution reads env strings so).
    static constexpr std::array<std::string_view, 6> kTrue{"true", "yes", "on", "1", "t", "y"};
    static constexpr std::array<std::string_view, 6> kFalse{"false", "no", "off", "0", "f", "n"};
    const std::string v = ascii_lower(text);
    if (std::find(kTrue.begin(), kTrue.end(), v) != kTrue.end()) {
        out = true;
        return true;
    }
    if (std::find(kFalse.begin(), kFalse.end(), v) != kFalse.end()) {
        out = false;
        return true;
    }
    return false;
}

bool parse_count(std::string_view text, std::uint64_t& out) {
    if (text.empty() || text.size() > 19) {
        return false;
    }
    std::uint64_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    out = v;
    return true;
}

// ---- value checks --------------------------------------------------------------------------

bool valid_hostname(std::string_view host) {
    if (host.empty() || host.size() > 253) {
        return false;
    }
    std::size_t label = 0;
    for (char c : host) {
        if (c == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
        } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
            ++label;
        } else {
            return false;
        }
    }
    return true;
}

bool all_digits_and_dots(std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

// Checks "host[:port]" of a URL or endpoint; `port_required` for listen addresses.
std::string check_host_port(std::string_view hp, bool port_required, std::string& host_out,
                            std::uint16_t& port_out) {
    std::string_view host;
    std::string_view port;
    bool has_port = false;
    if (hp.starts_with('[')) {
        const std::size_t close = hp.find(']');
        if (close == std::string_view::npos) {
            return "an IPv6 address needs a closing ']'";
        }
        host = hp.substr(1, close - 1);
        in6_addr a6{};
        if (inet_pton(AF_INET6, std::string(host).c_str(), &a6) != 1) {
            return quoted(host) + " is not an IPv6 address";
        }
        std::string_view rest = hp.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return "expected ':port' after ']'";
            }
            has_port = true;
            port = rest.substr(1);
        }
    } else {
        const std::size_t colon = hp.rfind(':');
        if (colon != std::string_view::npos) {
            host = hp.substr(0, colon);
            port = hp.substr(colon + 1);
            has_port = true;
            if (host.find(':') != std::string_view::npos) {
                return "an IPv6 address needs brackets, e.g. [::1]:5000";
            }
        } else {
            host = hp;
        }
        if (!host.empty()) {
            if (all_digits_and_dots(host)) {
                in_addr a4{};
                if (inet_pton(AF_INET, std::string(host).c_str(), &a4) != 1) {
                    return quoted(host) + " is not an IPv4 address";
                }
            } else if (!valid_hostname(host)) {
                return quoted(host) + " is not a host name";
            }
        }
    }
    if (!has_port) {
        if (port_required) {
            return "expected [host]:port, e.g. :5000 or 127.0.0.1:5000";
        }
    } else {
        std::uint64_t p = 0;
        if (!parse_count(port, p) || p > 65535) {
            return "port " + quoted(port) + " is not a number in 1..65535";
        }
        if (p == 0) {
            return "port 0 is not allowed (clients need to know the port); expected 1..65535";
        }
        port_out = static_cast<std::uint16_t>(p);
    }
    host_out = std::string(host);
    return {};
}

std::string check_addr(std::string_view v) {
    std::string host;
    std::uint16_t port = 0;
    std::string problem = check_host_port(v, true, host, port);
    return problem.empty() ? problem
                           : "expected [host]:port like :5000 or 127.0.0.1:5000, got " + quoted(v) +
                                 " (" + problem + ")";
}

// "http(s)://host[:port][/path]"; `scheme_optional` for regionendpoint, which the AWS SDK
// completes with https:// or http:// from `secure`.
std::string check_http_url(std::string_view v, bool scheme_optional) {
    const std::string low = ascii_lower(v);
    std::string_view rest = v;
    if (low.starts_with("http://")) {
        rest.remove_prefix(7);
    } else if (low.starts_with("https://")) {
        rest.remove_prefix(8);
    } else if (!scheme_optional || low.find("://") != std::string::npos) {
        return "expected an http:// or https:// URL, got " + quoted(v);
    }
    const std::size_t slash = rest.find('/');
    const std::string_view authority = rest.substr(0, slash);
    if (authority.find('@') != std::string_view::npos) {
        return "credentials do not belong in the URL (it is logged); use upstream.username and "
               "upstream.password";
    }
    if (rest.find_first_of("?#") != std::string_view::npos) {
        return "expected a URL without query or fragment, got " + quoted(v);
    }
    if (authority.empty()) {
        return "expected a host in the URL, got " + quoted(v);
    }
    std::string host;
    std::uint16_t port = 0;
    std::string problem = check_host_port(authority, false, host, port);
    if (problem.empty() && host.empty()) {
        problem = "no host";
    }
    return problem.empty() ? problem
                           : "expected an http(s) URL, got " + quoted(v) + " (" + problem + ")";
}

std::string check_url(std::string_view v) {
    return v.empty() ? std::string() : check_http_url(v, false);
}
std::string check_endpoint(std::string_view v) {
    return v.empty() ? std::string() : check_http_url(v, true);
}

// ---- loading -------------------------------------------------------------------------------

// Where a value came from, so that a message can point at it.
struct Origin {
    std::string env_var;  // set: this environment variable
    int line = 0;         // else 1-based line in the file; 0: not known
};

class Loader {
public:
    Loader(std::string file, const std::map<std::string, std::string>& env)
        : file_(std::move(file)), env_(env) {
        config_.source_file = file_;
    }

    Result<Config> run(const std::string& yaml) {
        YAML::Node root;
        try {
            std::vector<YAML::Node> documents = YAML::LoadAll(yaml);
            if (documents.size() > 1) {
                // Only one would be used; which one is a guess the operator should not need.
                return fail(origin_of(documents[1]), "(top level)",
                            "a second YAML document; expected one document per file");
            }
            if (!documents.empty()) {
                root = documents.front();
            }
        } catch (const YAML::Exception& e) {
            Origin at;
            at.line = e.mark.is_null() ? 0 : e.mark.line + 1;
            return make_error("config.invalid", where(at) + ": YAML syntax error: " + e.msg);
        }
        if (!root.IsNull() && !root.IsMap()) {
            return fail(
                origin_of(root), "(top level)",
                "expected a mapping of sections (log, http, cache, upstream, uploads, storage)");
        }
        if (root.IsMap()) {
            if (Status s = walk(root, ""); !s) {
                return s.error();
            }
        }
        if (Status s = apply_env(); !s) {
            return s.error();
        }
        if (Status s = cross_check(); !s) {
            return s.error();
        }
        return std::move(config_);
    }

private:
    std::string where(const Origin& o) const {
        if (!o.env_var.empty()) {
            return o.env_var;
        }
        if (o.line > 0) {
            return file_ + ":" + std::to_string(o.line);
        }
        return file_;
    }

    Error fail(const Origin& o, std::string_view path, const std::string& what) const {
        return make_error("config.invalid", where(o) + ": " + std::string(path) + ": " + what);
    }

    Origin origin_of(const YAML::Node& node) const {
        Origin o;
        const YAML::Mark m = node.Mark();
        o.line = m.is_null() ? 0 : m.line + 1;
        return o;
    }

    // The origin of a path if it was set, else of its nearest set section, else the file.
    Origin origin_or_section(std::string path) const {
        for (;;) {
            if (auto it = origins_.find(path); it != origins_.end()) {
                return it->second;
            }
            const std::size_t dot = path.rfind('.');
            if (dot == std::string::npos) {
                return Origin{};
            }
            path.resize(dot);
        }
    }

    void ensure_s3(const Origin& o) {
        if (!config_.storage.s3) {
            config_.storage.s3.emplace();
            origins_.emplace("storage.s3", o);
        }
    }

    void ensure_auth(const Origin& o) {
        if (!config_.auth) {
            config_.auth.emplace();
            origins_.emplace("auth", o);
        }
    }

    // A list of non-empty strings ("[a, b]" or a block list); a single string is taken as a
    // list of one.
    Result<std::vector<std::string>> string_list(const YAML::Node& v, const std::string& path) {
        std::vector<std::string> out;
        if (v.IsNull()) return out;
        if (v.IsScalar()) {
            out.push_back(v.Scalar());
            return out;
        }
        if (!v.IsSequence()) return fail(origin_of(v), path, "expected a list of names");
        for (const auto& item : v) {
            if (!item.IsScalar() || item.Scalar().empty())
                return fail(origin_of(item), path, "expected a list of non-empty names");
            out.push_back(item.Scalar());
        }
        return out;
    }

    Status auth_list(const std::string& path, const YAML::Node& v, const Origin& at) {
        ensure_auth(at);
        AuthConfig& a = *config_.auth;
        origins_[path] = at;
        if (path == "auth.passthrough") {
            auto l = string_list(v, path);
            if (!l) return l.error();
            a.passthrough = std::move(*l);
            return {};
        }
        if (path == "auth.groups") {
            if (v.IsNull()) return {};
            if (!v.IsMap()) return fail(at, path, "expected a mapping of group name -> users");
            for (const auto& entry : v) {
                const YAML::Node k = entry.first;
                if (!k.IsScalar()) return fail(at, path, "group names must be plain names");
                auto l = string_list(entry.second, path + "." + k.Scalar());
                if (!l) return l.error();
                a.groups[k.Scalar()] = std::move(*l);
            }
            return {};
        }
        // auth.rules
        if (v.IsNull()) return {};
        if (!v.IsSequence())
            return fail(at, path, "expected a list of rules ({repositories, pull, push})");
        std::size_t i = 0;
        for (const auto& item : v) {
            const std::string here = path + "[" + std::to_string(i++) + "]";
            if (!item.IsMap())
                return fail(origin_of(item), here,
                            "expected a mapping with repositories, pull and/or push");
            AuthRule rule;
            for (const auto& entry : item) {
                const YAML::Node k = entry.first;
                const std::string name = k.IsScalar() ? k.Scalar() : std::string();
                std::vector<std::string>* field = name == "repositories" ? &rule.repositories
                                                  : name == "pull"       ? &rule.pull
                                                  : name == "push"       ? &rule.push
                                                                         : nullptr;
                if (field == nullptr)
                    return fail(origin_of(k), here + "." + name,
                                "unknown key; expected repositories, pull or push");
                auto l = string_list(entry.second, here + "." + name);
                if (!l) return l.error();
                *field = std::move(*l);
            }
            if (rule.repositories.empty())
                return fail(origin_of(item), here + ".repositories",
                            "required: the repository patterns the rule covers");
            a.rules.push_back(std::move(rule));
        }
        return {};
    }

    Status walk(const YAML::Node& map, const std::string& prefix) {
        std::set<std::string> seen;
        // By value: yaml-cpp's iterators hand out temporaries (it->first would dangle).
        for (const auto& entry : map) {
            const YAML::Node k = entry.first;
            const YAML::Node v = entry.second;
            const Origin at = origin_of(k);
            if (!k.IsScalar()) {
                return fail(at, prefix.empty() ? "(top level)" : prefix,
                            "keys must be plain names");
            }
            const std::string path = prefix.empty() ? k.Scalar() : prefix + "." + k.Scalar();
            if (!seen.insert(k.Scalar()).second) {
                return fail(at, path, "duplicate key (the earlier value would be lost)");
            }
            if (is_section(path)) {
                if (!v.IsMap() && !v.IsNull()) {
                    return fail(at, path, "expected a section (a mapping of keys)");
                }
                if (path == "storage.s3") {
                    ensure_s3(at);
                }
                if (path == "auth") {
                    ensure_auth(at);
                }
                origins_.emplace(path, at);
                if (v.IsMap()) {
                    if (Status s = walk(v, path); !s) {
                        return s;
                    }
                }
                continue;
            }
            if (std::find(kAuthLists.begin(), kAuthLists.end(), path) != kAuthLists.end()) {
                if (Status s = auth_list(path, v, at); !s) {
                    return s;
                }
                continue;
            }
            const Key* key = find_key(path);
            if (key == nullptr) {
                return fail(at, path, unknown_key_hint(path));
            }
            if (!v.IsScalar() && !v.IsNull()) {
                return fail(at, path,
                            std::string("expected a single value, got a ") +
                                (v.IsSequence() ? "list" : "mapping"));
            }
            if (Status s = apply(*key, v.IsNull() ? nullptr : &v.Scalar(), at); !s) {
                return s;
            }
        }
        return {};
    }

    static std::string unknown_key_hint(const std::string& path) {
        std::string msg = "unknown key";
        const std::string near = suggestion(path);
        if (!near.empty()) {
            msg += "; did you mean " + near + "?";
        } else if (path.starts_with("storage.") && !path.starts_with("storage.s3.")) {
            msg += "; storage.s3 is the only storage section (the local cache is under cache)";
        }
        return msg;
    }

    // Sets one key from its text (`text` null: YAML null, i.e. "key:" with nothing after it).
    Status apply(const Key& key, const std::string* text, const Origin& at) {
        if (is_s3_path(key.path)) {
            ensure_s3(at);
        }
        if (is_auth_path(key.path)) {
            ensure_auth(at);
        }
        origins_[std::string(key.path)] = at;
        const std::string_view path = key.path;
        return std::visit([&](const auto& kind) -> Status { return set(kind, path, text, at); },
                          key.kind);
    }

    Status set(const StringKey& k, std::string_view path, const std::string* text,
               const Origin& at) {
        // Null is the empty string, as in Distribution ("accesskey:" means none).
        std::string value = text == nullptr ? std::string() : *text;
        if (k.check != nullptr) {
            if (std::string problem = k.check(value); !problem.empty()) {
                return fail(at, path, problem);
            }
        }
        k.field(config_) = std::move(value);
        return {};
    }

    Status set(const EnumKey& k, std::string_view path, const std::string* text, const Origin& at) {
        if (text == nullptr) {
            return {};  // default stays
        }
        const std::string want = ascii_lower(*text);
        for (std::string_view allowed : k.allowed) {
            if (ascii_lower(allowed) == want) {
                k.field(config_) = std::string(allowed);
                return {};
            }
        }
        std::string list;
        for (std::string_view allowed : k.allowed) {
            list += (list.empty() ? "" : "|") + std::string(allowed);
        }
        return fail(at, path, "expected one of " + list + ", got " + quoted(*text));
    }

    Status set(const BoolKey& k, std::string_view path, const std::string* text, const Origin& at) {
        if (text == nullptr) {
            return {};
        }
        if (!parse_bool(*text, k.field(config_))) {
            return fail(at, path, "expected true or false, got " + quoted(*text));
        }
        return {};
    }

    Status set(const SizeKey& k, std::string_view path, const std::string* text, const Origin& at) {
        if (text == nullptr) {
            return {};
        }
        Result<std::uint64_t> v = parse_size(*text);
        if (!v) {
            return fail(at, path,
                        "expected a size like 512MiB, got " + quoted(*text) +
                            reason(*text, v.error().message));
        }
        if (*v < k.min) {
            return fail(at, path,
                        *text + " is below " +
                            std::string(k.min_why.empty() ? "the minimum" : k.min_why) +
                            "; expected at least " + std::to_string(k.min) + " (" +
                            format_size(k.min) + ")");
        }
        if (*v > k.max) {
            return fail(at, path,
                        *text + " is above " +
                            std::string(k.max_why.empty() ? "the maximum" : k.max_why) +
                            "; expected at most " + std::to_string(k.max) + " (" +
                            format_size(k.max) + ")");
        }
        k.field(config_) = *v;
        return {};
    }

    Status set(const CountKey& k, std::string_view path, const std::string* text,
               const Origin& at) {
        if (text == nullptr) {
            return {};
        }
        std::uint64_t v = 0;
        if (!parse_count(*text, v)) {
            return fail(at, path, "expected a whole number, got " + quoted(*text));
        }
        if (v < k.min || v > k.max) {
            return fail(at, path,
                        "expected " + std::to_string(k.min) + ".." + std::to_string(k.max) +
                            ", got " + *text);
        }
        if (k.u64 != nullptr) {
            k.u64(config_) = v;
        } else {
            k.i32(config_) = static_cast<int>(v);
        }
        return {};
    }

    Result<Millis> duration_in(std::string_view path, const std::string& text, Millis min,
                               Millis max, const Origin& at) const {
        Result<Millis> v = parse_duration(text);
        if (!v) {
            return fail(at, path,
                        "expected a duration like 30s, 250ms or 2h30m, got " + quoted(text) +
                            reason(text, v.error().message));
        }
        if (*v < min || *v > max) {
            return fail(
                at, path,
                "expected " + format_duration(min) + ".." + format_duration(max) + ", got " + text);
        }
        return *v;
    }

    Status set(const MillisKey& k, std::string_view path, const std::string* text,
               const Origin& at) {
        if (text == nullptr) {
            return {};
        }
        Result<Millis> v = duration_in(path, *text, k.min, k.max, at);
        if (!v) {
            return v.error();
        }
        k.field(config_) = *v;
        return {};
    }

    Status set(const SecondsKey& k, std::string_view path, const std::string* text,
               const Origin& at) {
        if (text == nullptr) {
            return {};
        }
        Result<Millis> v = duration_in(path, *text, k.min, k.max, at);
        if (!v) {
            return v.error();
        }
        if (v->count() % 1000 != 0) {
            return fail(at, path, "expected whole seconds, got " + *text);
        }
        k.field(config_) = std::chrono::duration_cast<Seconds>(*v);
        return {};
    }

    Status set(const IgnoredKey& k, std::string_view path, const std::string* text,
               const Origin& at) {
        if (text != nullptr) {
            bool b = false;
            std::uint64_t n = 0;
            if (k.type == ValueType::kBool && !parse_bool(*text, b)) {
                return fail(at, path, "expected true or false, got " + quoted(*text));
            }
            if (k.type == ValueType::kInteger && !parse_count(*text, n) && !parse_size(*text)) {
                return fail(at, path, "expected a whole number, got " + quoted(*text));
            }
        }
        config_.notes.push_back(where(at) + ": " + std::string(path) + ": accepted and not used (" +
                                std::string(k.why) + ")");
        return {};
    }

    Status apply_env() {
        for (const auto& [name, value] : env_) {
            if (!name.starts_with(kEnvPrefix) ||
                std::find(kReservedEnv.begin(), kReservedEnv.end(), name) != kReservedEnv.end()) {
                continue;
            }
            const Key* key = nullptr;
            for (const Key& k : keys()) {
                if (env_name(k.path) == name) {
                    key = &k;
                }
            }
            Origin at;
            at.env_var = name;
            if (key == nullptr) {
                for (std::string_view s : kSections) {
                    if (env_name(s) == name) {
                        return make_error("config.invalid",
                                          name + ": " + std::string(s) +
                                              " is a section; set its keys one by one, e.g. " +
                                              env_name(example_key(s)));
                    }
                }
                std::string msg = name + ": no configuration key has this name";
                const std::string guess = ascii_lower(name.substr(kEnvPrefix.size()));
                if (const std::string near = suggestion(guess, true); !near.empty()) {
                    msg += "; did you mean " + env_name(near) + "?";
                }
                return make_error("config.invalid", msg);
            }
            if (Status s = apply(*key, &value, at); !s) {
                return s;
            }
        }
        return {};
    }

    static std::string example_key(std::string_view section) {
        for (const Key& k : keys()) {
            if (k.path.starts_with(std::string(section) + ".")) {
                return std::string(k.path);
            }
        }
        return std::string(section);
    }

    Status cross_check() {
        const TlsConfig& tls = config_.http.tls;
        if (tls.certificate.empty() != tls.key.empty()) {
            const bool has_cert = !tls.certificate.empty();
            const char* set_path = has_cert ? "http.tls.certificate" : "http.tls.key";
            const char* missing = has_cert ? "http.tls.key" : "http.tls.certificate";
            return fail(origin_or_section(set_path), set_path,
                        std::string("set without ") + missing +
                            "; expected both (PEM files) for TLS, or neither for plain HTTP");
        }
        if (config_.auth) {
            const AuthConfig& a = *config_.auth;
            for (const AuthRule& rule : a.rules) {
                for (const auto* list : {&rule.pull, &rule.push}) {
                    for (const std::string& who : *list) {
                        if (who.starts_with("group:") && !a.groups.contains(who.substr(6))) {
                            return fail(
                                origin_or_section("auth.rules"), "auth.rules",
                                "names " + quoted(who) + ", which auth.groups does not define");
                        }
                    }
                }
            }
        }
        if (config_.storage.s3) {
            const S3Config& s3 = *config_.storage.s3;
            if (s3.bucket.empty()) {
                return fail(origin_or_section("storage.s3.bucket"), "storage.s3.bucket",
                            "required when storage.s3 is present; expected the bucket name the "
                            "registry uses");
            }
            if (s3.accesskey.empty() != s3.secretkey.empty()) {
                const bool has_access = !s3.accesskey.empty();
                const char* set_path = has_access ? "storage.s3.accesskey" : "storage.s3.secretkey";
                const char* missing = has_access ? "storage.s3.secretkey" : "storage.s3.accesskey";
                return fail(origin_or_section(set_path), set_path,
                            std::string("set without ") + missing +
                                "; expected both, or neither to use AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY");
            }
            if (!s3.v4auth && s3.regionendpoint.empty()) {
                return fail(origin_or_section("storage.s3.v4auth"), "storage.s3.v4auth",
                            "false needs storage.s3.regionendpoint: Amazon S3 accepts only "
                            "Signature V4");
            }
            if (s3.retry.max_delay < s3.retry.base_delay) {
                return fail(origin_or_section("storage.s3.retry.max_delay"),
                            "storage.s3.retry.max_delay",
                            format_duration(s3.retry.max_delay) + " is below retry.base_delay (" +
                                format_duration(s3.retry.base_delay) + "); expected at least that");
            }
            if (!s3.keyid.empty() && !s3.encrypt) {
                // Distribution ignores keyid without encrypt; an error would break pasted
                // registry blocks, silence would hide a likely mistake.
                config_.notes.push_back(where(origin_or_section("storage.s3.keyid")) +
                                        ": storage.s3.keyid: ignored because storage.s3.encrypt "
                                        "is false (objects are stored unencrypted)");
            }
        }
        return {};
    }

    std::string file_;
    const std::map<std::string, std::string>& env_;
    Config config_;
    std::map<std::string, Origin> origins_;  // key and section paths that were set
};

// ---- rendering -----------------------------------------------------------------------------

void emit_value(YAML::Emitter& out, const Key& key, Config& c) {
    std::visit(
        [&](const auto& k) {
            using K = std::decay_t<decltype(k)>;
            if constexpr (std::is_same_v<K, StringKey>) {
                const std::string& v = k.field(c);
                out << (k.secret && !v.empty() ? std::string("<redacted>") : v);
            } else if constexpr (std::is_same_v<K, EnumKey>) {
                out << k.field(c);
            } else if constexpr (std::is_same_v<K, BoolKey>) {
                out << k.field(c);
            } else if constexpr (std::is_same_v<K, SizeKey>) {
                out << format_size(k.field(c));
            } else if constexpr (std::is_same_v<K, CountKey>) {
                if (k.u64 != nullptr) {
                    out << k.u64(c);
                } else {
                    out << k.i32(c);
                }
            } else if constexpr (std::is_same_v<K, MillisKey>) {
                out << format_duration(k.field(c));
            } else if constexpr (std::is_same_v<K, SecondsKey>) {
                out << format_duration(std::chrono::duration_cast<Millis>(k.field(c)));
            }
        },
        key.kind);
}

std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> parts;
    for (;;) {
        const std::size_t dot = path.find('.');
        parts.push_back(path.substr(0, dot));
        if (dot == std::string_view::npos) {
            return parts;
        }
        path.remove_prefix(dot + 1);
    }
}

}  // namespace

Result<ListenAddress> parse_listen_address(std::string_view addr) {
    ListenAddress out;
    std::string problem = check_host_port(addr, true, out.host, out.port);
    if (!problem.empty()) {
        return make_error("config.invalid", problem);
    }
    return out;
}

Result<Config> load_string(const std::string& yaml, const std::string& name,
                           const std::map<std::string, std::string>& env) {
    try {
        return Loader(name, env).run(yaml);
    } catch (const std::exception& e) {
        // Nothing above throws by design; this is the edge that keeps it so.
        return make_error("config.invalid", name + ": " + e.what());
    }
}

Result<Config> load_file(const std::string& path, const std::map<std::string, std::string>& env) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return make_error("config.invalid",
                          path + ": cannot read the config file: " + std::strerror(errno));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        return make_error("config.invalid",
                          path + ": cannot read the config file: " + std::strerror(errno));
    }
    return load_string(text.str(), path, env);
}

std::string render_redacted(const Config& config) {
    Config c = config;  // the key accessors take a mutable Config
    YAML::Emitter out;
    out << YAML::BeginMap;
    std::vector<std::string_view> open;  // sections currently open, outermost first
    auto close_to = [&](std::size_t depth) {
        while (open.size() > depth) {
            out << YAML::EndMap;
            open.pop_back();
        }
    };
    for (const Key& key : keys()) {
        if (std::holds_alternative<IgnoredKey>(key.kind) ||
            (is_s3_path(key.path) && !c.storage.s3) || (is_auth_path(key.path) && !c.auth)) {
            continue;
        }
        const std::vector<std::string_view> parts = split_path(key.path);
        const std::size_t sections = parts.size() - 1;
        std::size_t common = 0;
        while (common < open.size() && common < sections && open[common] == parts[common]) {
            ++common;
        }
        close_to(common);
        for (std::size_t i = common; i < sections; ++i) {
            out << YAML::Key << std::string(parts[i]) << YAML::Value << YAML::BeginMap;
            open.push_back(parts[i]);
        }
        out << YAML::Key << std::string(parts.back()) << YAML::Value;
        emit_value(out, key, c);
    }
    if (c.auth) {
        // Lists after the scalar keys: the auth section is the last one open here.
        close_to(1);
        auto list = [&](const std::vector<std::string>& l) {
            out << YAML::Flow << YAML::BeginSeq;
            for (const auto& s : l)
                out << s;
            out << YAML::EndSeq;
        };
        out << YAML::Key << "groups" << YAML::Value << YAML::BeginMap;
        for (const auto& [g, users] : c.auth->groups) {
            out << YAML::Key << g << YAML::Value;
            list(users);
        }
        out << YAML::EndMap;
        out << YAML::Key << "rules" << YAML::Value << YAML::BeginSeq;
        for (const AuthRule& r : c.auth->rules) {
            out << YAML::BeginMap << YAML::Key << "repositories" << YAML::Value;
            list(r.repositories);
            out << YAML::Key << "pull" << YAML::Value;
            list(r.pull);
            out << YAML::Key << "push" << YAML::Value;
            list(r.push);
            out << YAML::EndMap;
        }
        out << YAML::EndSeq;
        out << YAML::Key << "passthrough" << YAML::Value;
        list(c.auth->passthrough);
    }
    close_to(0);
    if (!c.storage.s3) {
        out << YAML::Key << "storage" << YAML::Value << YAML::Flow << YAML::BeginMap
            << YAML::EndMap;
    }
    out << YAML::EndMap;

    std::string text;
    if (!c.source_file.empty()) {
        text += "# effective configuration loaded from " + c.source_file + "\n";
    }
    for (const std::string& note : c.notes) {
        text += "# note: " + note + "\n";
    }
    text += out.c_str();
    text += "\n";
    return text;
}

std::map<std::string, std::string> environment() {
    std::map<std::string, std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const std::size_t eq = entry.find('=');
        if (eq != std::string_view::npos) {
            env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
        }
    }
    return env;
}

}  // namespace drayage::config
