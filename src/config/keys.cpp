// The key table: every key path with its type, range and field, and the lookups over it. The
// YAML walk, the DRAYAGE_* overrides and render_redacted() are all driven by it, so a key added
// here is at once readable from the file, settable from the environment, range-checked and
// printed.
#include "keys.hpp"

#include <algorithm>
#include <cctype>
#include <limits>

#include "drayage/config/size.hpp"

namespace drayage::config::detail {

namespace {

constexpr std::uint64_t kNoMax = std::numeric_limits<std::uint64_t>::max();
constexpr Millis kHour{3600'000};
constexpr Millis kDay{24 * 3600'000};

#define DRAYAGE_FIELD(member) \
    [](Config & c) -> auto& { \
        return c.member;      \
    }
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

}  // namespace

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

}  // namespace drayage::config::detail
