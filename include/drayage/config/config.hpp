// drayage's configuration: one YAML file, typed and validated at start-up.
//
// Every key documented in conf/drayage.yml maps to one field below; the defaults here are the
// defaults there. `storage.s3` keys carry the Docker Distribution s3 driver's names and meanings,
// so an operator can paste the registry's block. Every key can be overridden from the environment
// as DRAYAGE_<PATH> (upper-cased, '.' -> '_'), e.g. DRAYAGE_STORAGE_S3_SECRETKEY.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/config/size.hpp"
#include "drayage/util/result.hpp"

namespace drayage::config {

using Seconds = std::chrono::seconds;
using Millis = std::chrono::milliseconds;

struct LogConfig {
    std::string level = "info";   // trace|debug|info|warn|error|off
    std::string format = "text";  // text|json
    std::string file;             // empty: stderr; reopened on SIGHUP
};

struct HttpLimits {
    std::uint64_t max_request_line = 8 * KiB;   // 414 past this
    std::uint64_t max_header_bytes = 64 * KiB;  // 431 past this (all header lines together)
    std::uint64_t max_headers = 100;            // 431 past this many header fields
    std::uint64_t max_body = 0;                 // 0: routes decide; else a global cap (413)
    Millis header_timeout{10'000};              // whole request head must arrive in this (408)
    Millis idle_timeout{60'000};                // keep-alive connection with no request
    Millis body_timeout{60'000};                // no body byte for this long: close
    Millis send_timeout{300'000};               // client reads nothing for this long: close
    std::uint64_t max_connections = 4096;       // accepts past this are closed at once
    Millis shutdown_grace{30'000};              // SIGTERM: in-flight requests get this long
};

struct TlsConfig {
    std::string certificate;  // PEM file; empty with `key` empty: plain HTTP
    std::string key;
};

// One per CPU beyond the first, at most 7: the default of http.workers.
int default_http_workers();

struct HttpConfig {
    std::string addr = ":5000";  // [host]:port; empty host means all interfaces
    // Extra event-loop threads that serve cache hits (blob GET/HEAD) on their own socket of the
    // same address and hand every other request to the main loop. 0: off. Not used with `auth`
    // or TLS (the main loop then serves everything).
    int workers = default_http_workers();
    HttpLimits limits;
    TlsConfig tls;
};

struct CacheConfig {
    std::string path = "/var/lib/drayage/cache";
    std::uint64_t max_size = 10 * GiB;
    bool complete_orphan_fills = true;  // a fill whose readers all left still completes
};

struct UpstreamConfig {
    std::string url = "https://registry-1.docker.io";  // empty: no pull-through source
    std::string username;
    std::string password;       // secret
    Seconds manifest_ttl{300};  // tags are revalidated upstream after this
    Seconds max_stale{86'400};  // stale-if-error limit for tag manifests
    Millis connect_timeout{5'000};
    Millis response_timeout{30'000};  // until the response head arrives
    Millis stall_timeout{30'000};     // blob body bytes stop arriving for this long
    // A whole manifest, listing, token or error response, from request to last byte.
    Millis timeout{60'000};
};

// Push sessions (blob uploads into the bucket).
struct UploadsConfig {
    // An upload session with no request for this long is dropped and its multipart upload
    // aborted.
    Millis session_ttl{3'600'000};
    // Open upload sessions at most; past it a new upload gets 429 TOOMANYREQUESTS.
    std::uint64_t max_sessions = 1024;
};

struct S3RetryConfig {
    int max_attempts = 5;
    Millis base_delay{100};
    Millis max_delay{10'000};
};

struct S3MultipartConfig {
    int concurrency = 4;  // parts in flight per upload/copy
};

// storage.s3, with the Distribution s3 driver's key names.
struct S3Config {
    std::string accesskey;     // empty: AWS_ACCESS_KEY_ID
    std::string secretkey;     // secret; empty: AWS_SECRET_ACCESS_KEY
    std::string sessiontoken;  // secret; empty: AWS_SESSION_TOKEN
    std::string region = "us-east-1";
    std::string regionendpoint;  // set: path-style requests to this endpoint
    std::string bucket;          // required
    bool encrypt = false;
    std::string keyid;  // with encrypt: aws:kms with this key
    bool secure = true;
    bool skipverify = false;
    bool v4auth = true;
    std::uint64_t chunksize = 10 * MiB;  // >= 5 MiB
    std::string rootdirectory;
    std::string storageclass = "STANDARD";  // STANDARD|REDUCED_REDUNDANCY|... or NONE
    bool writethrough = false;              // store upstream-fetched blobs in the bucket too
    S3MultipartConfig multipart;
    S3RetryConfig retry;
    // Not Distribution keys: connecting to the endpoint, and an attempt in which no byte moves,
    // fail (and are retried) after these.
    Millis connect_timeout{10'000};
    Millis stall_timeout{30'000};
};

// One access rule: the repositories it covers (globs) and who may pull or push them.
// Patterns: `*` matches within one path component, `**` across components ("team/**"). Names
// are matched after normalisation (see registry/auth.hpp). Principals: a user name,
// "group:<name>", "anonymous" (no credentials), "authenticated" (any valid login) or "*"
// (everyone, anonymous included).
struct AuthRule {
    std::vector<std::string> repositories;
    std::vector<std::string> pull;
    std::vector<std::string> push;
};

// `auth`: present means drayage authenticates clients and denies what no rule allows. Absent:
// an open mirror (anyone may pull what the upstream serves to drayage's own credentials).
struct AuthConfig {
    std::string htpasswd_path;  // auth.htpasswd.path: bcrypt entries ("user:$2y$...")
    // auth.token.realm: the token endpoint URL sent in challenges; empty: derived from the
    // request's Host ("http(s)://<Host>/auth/token").
    std::string token_realm;
    std::string token_service = "drayage";  // `service` in challenges, `aud` of tokens
    std::string token_issuer = "drayage";   // `iss` of tokens
    Seconds token_expiration{300};          // access token lifetime
    // A file holding the HS256 signing secret (at least 32 bytes); empty: a random secret made
    // at start (tokens then die with the process, and nodes of a fleet do not share them).
    std::string token_key;
    std::map<std::string, std::vector<std::string>> groups;  // auth.groups: name -> users
    std::vector<AuthRule> rules;                             // auth.rules
    // auth.passthrough: repository patterns whose access the upstream decides with the
    // client's own credentials; decisions cached for passthrough_ttl (at most 60 s).
    std::vector<std::string> passthrough;
    Seconds passthrough_ttl{30};
};

struct StorageConfig {
    std::optional<S3Config> s3;
};

struct Config {
    LogConfig log;
    HttpConfig http;
    CacheConfig cache;
    UpstreamConfig upstream;
    UploadsConfig uploads;
    StorageConfig storage;
    std::optional<AuthConfig> auth;

    std::string source_file;  // the file it was loaded from, for messages

    // Things the operator should know that do not stop start-up, one line each, already naming
    // the key and where it was set: Distribution s3 keys that drayage accepts but does not use,
    // and `keyid` without `encrypt: true` (Distribution ignores it too, so a pasted registry
    // block keeps working). The caller logs them (warn) once logging is up; render_redacted()
    // prints them as comments.
    std::vector<std::string> notes;
};

// `http.addr` split: host ("" = all interfaces; an IPv6 literal without brackets) and port.
struct ListenAddress {
    std::string host;
    std::uint16_t port = 0;
};

// Parses "[host]:port": ":5000", "0.0.0.0:5000", "localhost:5000", "[::1]:5000". The port must
// be 1..65535: port 0 (kernel's choice) is refused because clients and the harness need to know
// it from the config. Error message says what is expected (without a key path).
Result<ListenAddress> parse_listen_address(std::string_view addr);

// Loads `path`, applies DRAYAGE_* overrides from `env` (pass environ-derived pairs; tests pass
// their own), validates. Environment names are resolved against the known key set, so
// DRAYAGE_HTTP_LIMITS_MAX_HEADERS is http.limits.max_headers; any storage.s3.* variable creates
// the storage.s3 section; an unknown DRAYAGE_* variable is an error (typos must not be silent),
// except the ones that are not configuration: DRAYAGE_BUILD_DIR, DRAYAGE_TEST_QUICK (test
// scripts) and DRAYAGE_CONFIG (reserved for the config file's path). Env wins over the file. On
// failure the Error's message is the single line to print: key path, file:line where known, and
// what is expected. Exit status 2 is the caller's job.
Result<Config> load_file(const std::string& path, const std::map<std::string, std::string>& env);

// Same from a string (tests); `name` stands in for the file name in messages.
Result<Config> load_string(const std::string& yaml, const std::string& name,
                           const std::map<std::string, std::string>& env);

// The effective configuration as YAML, every key with defaults filled in, secrets
// (upstream.password, storage.s3.secretkey, storage.s3.sessiontoken) replaced by "<redacted>"
// when set and shown as "" when not. Sizes and durations are printed in the exact form the loader
// reads back ("10GiB", "1m30s"), so the output (with secrets put back) loads to the same Config.
// Starts with "# " comment lines: the source file and each of `notes`. Accepted-but-unused
// Distribution keys are not printed. No storage.s3: "storage: {}".
std::string render_redacted(const Config& config);

// The process environment as a map (only DRAYAGE_* entries are used by the loader).
std::map<std::string, std::string> environment();

}  // namespace drayage::config
