#include "drayage/config/config.hpp"

// yaml-cpp 0.7's node/impl.h trips g++ 12's -Wdangling-pointer (a false positive on its
// temporaries); it is not our code, so silence it for that header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#include <yaml-cpp/yaml.h>
#pragma GCC diagnostic pop

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

using namespace drayage::config;
using Env = std::map<std::string, std::string>;

namespace {

Config load_ok(const std::string& yaml, const Env& env = {}) {
    auto r = load_string(yaml, "conf.yml", env);
    INFO(yaml << "\n-> " << (r ? std::string("ok") : r.error().message));
    REQUIRE(r.ok());
    return std::move(r).value();
}

std::string load_error(const std::string& yaml, const Env& env = {}) {
    auto r = load_string(yaml, "conf.yml", env);
    INFO(yaml);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "config.invalid");
    // One line: the caller prints it as is after "drayage: ".
    CHECK(r.error().message.find('\n') == std::string::npos);
    return r.error().message;
}

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    REQUIRE(in.good());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Every leaf of a YAML mapping as (dotted path, scalar text).
void leaves(const YAML::Node& node, const std::string& prefix,
            std::vector<std::pair<std::string, std::string>>& out) {
    for (auto it = node.begin(); it != node.end(); ++it) {
        const std::string path = prefix.empty() ? it->first.as<std::string>()
                                                : prefix + "." + it->first.as<std::string>();
        if (it->second.IsMap()) {
            leaves(it->second, path, out);
        } else {
            out.emplace_back(path, it->second.Scalar());
        }
    }
}

std::string env_name_of(const std::string& path) {
    std::string name = "DRAYAGE_";
    for (char c : path) {
        name += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return name;
}

// Drops the "# ..." header lines render_redacted() puts before the YAML.
std::string body(const std::string& rendered) {
    std::string out;
    std::istringstream in(rendered);
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with("#")) {
            out += line + "\n";
        }
    }
    return out;
}

const char* const kFull = R"(log:
  level: debug
  format: json
  file: /var/log/drayage.log
http:
  addr: 127.0.0.1:5001
  workers: 5
  limits:
    max_request_line: 4KiB
    max_header_bytes: 32768
    max_headers: 50
    max_body: 1GiB
    header_timeout: 5s
    idle_timeout: 2m
    body_timeout: 45
    send_timeout: 1h
    max_connections: 100
    shutdown_grace: 0
  tls:
    certificate: /etc/drayage/cert.pem
    key: /etc/drayage/key.pem
cache:
  path: /tmp/cache
  max_size: 50GiB
  complete_orphan_fills: false
upstream:
  url: http://127.0.0.1:5002
  username: mirror
  password: hunter2
  manifest_ttl: 60
  max_stale: 2h
  connect_timeout: 250ms
  response_timeout: 10s
  stall_timeout: 1m30s
  timeout: 45s
uploads:
  session_ttl: 10m
  max_sessions: 64
storage:
  s3:
    accesskey: AKIDEXAMPLE
    secretkey: wJalrXUtnFEMI
    sessiontoken: FwoGZXIvYXdzE
    region: eu-west-1
    regionendpoint: http://127.0.0.1:8080
    bucket: registry
    encrypt: true
    keyid: arn:aws:kms:eu-west-1:1:key/abc
    secure: false
    skipverify: true
    v4auth: false
    chunksize: 16MiB
    rootdirectory: /reg
    storageclass: REDUCED_REDUNDANCY
    writethrough: true
    multipart:
      concurrency: 8
    retry:
      max_attempts: 3
      base_delay: 50ms
      max_delay: 2s
    connect_timeout: 3s
    stall_timeout: 45s
)";

}  // namespace

TEST_CASE("an empty file gives the documented defaults") {
    for (const char* yaml : {"", "# only a comment\n", "---\n"}) {
        Config c = load_ok(yaml);
        CHECK(c.log.level == "info");
        CHECK(c.http.addr == ":5000");
        CHECK(c.cache.max_size == 10 * GiB);
        CHECK(c.upstream.url == "https://registry-1.docker.io");
        CHECK_FALSE(c.storage.s3.has_value());
        CHECK(c.notes.empty());
        CHECK(c.source_file == "conf.yml");
    }
}

TEST_CASE("every key is read from the file") {
    Config c = load_ok(kFull);
    CHECK(c.log.level == "debug");
    CHECK(c.log.format == "json");
    CHECK(c.log.file == "/var/log/drayage.log");
    CHECK(c.http.addr == "127.0.0.1:5001");
    CHECK(c.http.workers == 5);
    CHECK(c.http.limits.max_request_line == 4 * KiB);
    CHECK(c.http.limits.max_header_bytes == 32 * KiB);
    CHECK(c.http.limits.max_headers == 50);
    CHECK(c.http.limits.max_body == GiB);
    CHECK(c.http.limits.header_timeout == Millis{5000});
    CHECK(c.http.limits.idle_timeout == Millis{120'000});
    CHECK(c.http.limits.body_timeout == Millis{45'000});
    CHECK(c.http.limits.send_timeout == Millis{3'600'000});
    CHECK(c.http.limits.max_connections == 100);
    CHECK(c.http.limits.shutdown_grace == Millis{0});
    CHECK(c.http.tls.certificate == "/etc/drayage/cert.pem");
    CHECK(c.http.tls.key == "/etc/drayage/key.pem");
    CHECK(c.cache.path == "/tmp/cache");
    CHECK(c.cache.max_size == 50 * GiB);
    CHECK_FALSE(c.cache.complete_orphan_fills);
    CHECK(c.upstream.url == "http://127.0.0.1:5002");
    CHECK(c.upstream.username == "mirror");
    CHECK(c.upstream.password == "hunter2");
    CHECK(c.upstream.manifest_ttl == Seconds{60});
    CHECK(c.upstream.max_stale == Seconds{7200});
    CHECK(c.upstream.connect_timeout == Millis{250});
    CHECK(c.upstream.response_timeout == Millis{10'000});
    CHECK(c.upstream.stall_timeout == Millis{90'000});
    CHECK(c.upstream.timeout == Millis{45'000});
    REQUIRE(c.storage.s3.has_value());
    const S3Config& s3 = *c.storage.s3;
    CHECK(s3.accesskey == "AKIDEXAMPLE");
    CHECK(s3.secretkey == "wJalrXUtnFEMI");
    CHECK(s3.sessiontoken == "FwoGZXIvYXdzE");
    CHECK(s3.region == "eu-west-1");
    CHECK(s3.regionendpoint == "http://127.0.0.1:8080");
    CHECK(s3.bucket == "registry");
    CHECK(s3.encrypt);
    CHECK(s3.keyid == "arn:aws:kms:eu-west-1:1:key/abc");
    CHECK_FALSE(s3.secure);
    CHECK(s3.skipverify);
    CHECK_FALSE(s3.v4auth);
    CHECK(s3.chunksize == 16 * MiB);
    CHECK(s3.rootdirectory == "/reg");
    CHECK(s3.storageclass == "REDUCED_REDUNDANCY");
    CHECK(s3.writethrough);
    CHECK(s3.multipart.concurrency == 8);
    CHECK(s3.retry.max_attempts == 3);
    CHECK(s3.retry.base_delay == Millis{50});
    CHECK(s3.retry.max_delay == Millis{2000});
    CHECK(s3.connect_timeout == Millis{3000});
    CHECK(s3.stall_timeout == Millis{45000});
    CHECK(c.uploads.session_ttl == Millis{600'000});
    CHECK(c.uploads.max_sessions == 64);
    CHECK(c.notes.empty());
}

TEST_CASE("booleans, sizes and durations accept numbers and strings") {
    Config c = load_ok(
        "cache:\n  max_size: \"1073741824\"\n  complete_orphan_fills: \"false\"\n"
        "http:\n  limits:\n    header_timeout: \"30\"\n    max_headers: \"7\"\n"
        "storage:\n  s3:\n    bucket: b\n    encrypt: \"true\"\n    secure: no\n"
        "    chunksize: \"5242880\"\n    storageclass: standard_ia\n");
    CHECK(c.cache.max_size == GiB);
    CHECK_FALSE(c.cache.complete_orphan_fills);
    CHECK(c.http.limits.header_timeout == Millis{30'000});
    CHECK(c.http.limits.max_headers == 7);
    CHECK(c.storage.s3->encrypt);
    CHECK_FALSE(c.storage.s3->secure);
    CHECK(c.storage.s3->chunksize == 5 * MiB);
    CHECK(c.storage.s3->storageclass == "STANDARD_IA");  // Distribution upper-cases it too
}

TEST_CASE("a Distribution s3 block pasted as is loads, with its unused keys noted") {
    // The shape docker-registry's own config takes, with Distribution-only keys.
    Config c = load_ok(R"(storage:
  s3:
    accesskey: test:tester
    secretkey: testing
    region: us-east-1
    regionendpoint: http://127.0.0.1:8080
    bucket: registry
    encrypt: false
    secure: false
    v4auth: "true"
    chunksize: 5242880
    multipartcopychunksize: 33554432
    multipartcopymaxconcurrency: 100
    multipartcopythresholdsize: 33554432
    rootdirectory: /reg
    storageclass: STANDARD
    objectacl: private
    forcepathstyle: true
    pathstyle: "true"
    accelerate: false
    usedualstack: false
    loglevel: off
)");
    REQUIRE(c.storage.s3.has_value());
    CHECK(c.storage.s3->bucket == "registry");
    CHECK(c.storage.s3->chunksize == 5 * MiB);
    REQUIRE(c.notes.size() == 9);
    CHECK_THAT(c.notes[0],
               Catch::StartsWith("conf.yml:12: storage.s3.multipartcopychunksize: accepted and "
                                 "not used"));
    CHECK_THAT(c.notes[1], Catch::Contains("multipart.concurrency bounds server-side copies"));
    CHECK_THAT(render_redacted(c), Catch::Contains("# note: conf.yml:19: storage.s3.pathstyle"));
    // Still type-checked like Distribution does.
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    accelerate: maybe\n"),
               Catch::Equals("conf.yml:4: storage.s3.accelerate: expected true or false, got "
                             "\"maybe\""));
    CHECK_THAT(
        load_error("storage:\n  s3:\n    bucket: b\n    multipartcopymaxconcurrency: many\n"),
        Catch::StartsWith("conf.yml:4: storage.s3.multipartcopymaxconcurrency: expected a "
                          "whole number"));
}

TEST_CASE("YAML syntax errors name the line") {
    CHECK_THAT(load_error("log:\n  level: info\n  format: [text\n"),
               Catch::StartsWith("conf.yml:") && Catch::Contains("YAML syntax error"));
    std::string e = load_error("cache:\n  path: /a\n   max_size: 1GiB\n");
    CHECK_THAT(e, Catch::StartsWith("conf.yml:3: YAML syntax error"));
    CHECK_THAT(load_error("log:\n  level: info\n---\ncache:\n  path: /x\n"),
               Catch::Equals("conf.yml:4: (top level): a second YAML document; expected one "
                             "document per file"));
    CHECK_THAT(load_error("- a\n- b\n"),
               Catch::StartsWith("conf.yml:1: (top level): expected a mapping"));
}

TEST_CASE("unknown keys are errors with the path, line and a suggestion") {
    CHECK_THAT(load_error("cache:\n  path: /x\n  max_sise: 1GiB\n"),
               Catch::Equals("conf.yml:3: cache.max_sise: unknown key; did you mean "
                             "cache.max_size?"));
    CHECK_THAT(load_error("upsteam:\n  url: \"\"\n"),
               Catch::Equals("conf.yml:1: upsteam: unknown key; did you mean upstream?"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    endpoint: http://x\n"),
               Catch::Equals("conf.yml:4: storage.s3.endpoint: unknown key"));
    CHECK_THAT(load_error("storage:\n  filesystem:\n    rootdirectory: /x\n"),
               Catch::Contains("storage.filesystem: unknown key; storage.s3 is the only"));
    CHECK_THAT(load_error("cache:\n  path: /a\n  path: /b\n"),
               Catch::Equals("conf.yml:3: cache.path: duplicate key (the earlier value would be "
                             "lost)"));
}

TEST_CASE("wrong types name the key, line and what is expected") {
    CHECK_THAT(load_error("log:\n  level: info\ncache:\n  max_size: lots\n"),
               Catch::StartsWith("conf.yml:4: cache.max_size: expected a size like 512MiB, got "
                                 "\"lots\""));
    CHECK_THAT(load_error("cache:\n  complete_orphan_fills: sometimes\n"),
               Catch::Equals("conf.yml:2: cache.complete_orphan_fills: expected true or false, "
                             "got \"sometimes\""));
    CHECK_THAT(load_error("upstream:\n  connect_timeout: soon\n"),
               Catch::StartsWith("conf.yml:2: upstream.connect_timeout: expected a duration like "
                                 "30s"));
    CHECK_THAT(load_error("http:\n  limits:\n    max_headers: 1.5\n"),
               Catch::Equals("conf.yml:3: http.limits.max_headers: expected a whole number, got "
                             "\"1.5\""));
    CHECK_THAT(load_error("cache: /var/cache\n"),
               Catch::Equals("conf.yml:1: cache: expected a section (a mapping of keys)"));
    CHECK_THAT(load_error("cache:\n  path:\n    - /a\n"),
               Catch::Equals("conf.yml:2: cache.path: expected a single value, got a list"));
    CHECK_THAT(load_error("upstream:\n  manifest_ttl: 1500ms\n"),
               Catch::Equals("conf.yml:2: upstream.manifest_ttl: expected whole seconds, got "
                             "1500ms"));
}

TEST_CASE("out-of-range values name the key, line and the bound") {
    CHECK_THAT(
        load_error("storage:\n  s3:\n    bucket: b\n    chunksize: 1048576\n"),
        Catch::Equals("conf.yml:4: storage.s3.chunksize: 1048576 is below the S3 minimum part "
                      "size; expected at least 5242880 (5MiB)"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    chunksize: 6GiB\n"),
               Catch::Equals("conf.yml:4: storage.s3.chunksize: 6GiB is above the S3 maximum "
                             "part size; expected at most 5368709120 (5GiB)"));
    CHECK(load_ok("storage:\n  s3:\n    bucket: b\n    chunksize: 5GiB\n").storage.s3->chunksize ==
          5 * GiB);
    CHECK_THAT(load_error("cache:\n  max_size: 32MiB\n"),
               Catch::StartsWith("conf.yml:2: cache.max_size: 32MiB is below the smallest useful "
                                 "cache") &&
                   Catch::EndsWith("expected at least 67108864 (64MiB)"));
    CHECK_THAT(
        load_error("storage:\n  s3:\n    bucket: b\n    multipart:\n      concurrency: 0\n"),
        Catch::Equals("conf.yml:5: storage.s3.multipart.concurrency: expected 1..64, got 0"));
    CHECK_THAT(
        load_error("storage:\n  s3:\n    bucket: b\n    multipart:\n      concurrency: 65\n"),
        Catch::Contains("expected 1..64, got 65"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    retry:\n      max_attempts: 21\n"),
               Catch::Equals("conf.yml:5: storage.s3.retry.max_attempts: expected 1..20, got 21"));
    CHECK_THAT(load_error("upstream:\n  timeout: 2h\n"),
               Catch::Equals("conf.yml:2: upstream.timeout: expected 1ms..1h, got 2h"));
    CHECK_THAT(load_error("http:\n  limits:\n    header_timeout: 0\n"),
               Catch::Equals("conf.yml:3: http.limits.header_timeout: expected 1ms..1h, got 0"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    retry:\n      base_delay: 2s\n"
                          "      max_delay: 1s\n"),
               Catch::Equals("conf.yml:6: storage.s3.retry.max_delay: 1s is below "
                             "retry.base_delay (2s); expected at least that"));
}

TEST_CASE("enumerations: log.level, log.format, storageclass") {
    CHECK_THAT(load_error("log:\n  format: xml\n"),
               Catch::Equals("conf.yml:2: log.format: expected one of text|json, got \"xml\""));
    CHECK_THAT(load_error("log:\n  level: verbose\n"),
               Catch::Equals("conf.yml:2: log.level: expected one of "
                             "trace|debug|info|warn|error|off, got \"verbose\""));
    CHECK(load_ok("log:\n  level: WARN\n").log.level == "warn");
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    storageclass: GLACIER\n"),
               Catch::StartsWith("conf.yml:4: storage.s3.storageclass: expected one of "
                                 "STANDARD|REDUCED_REDUNDANCY|") &&
                   Catch::EndsWith("got \"GLACIER\""));
    CHECK(load_ok("storage:\n  s3:\n    bucket: b\n    storageclass: NONE\n")
              .storage.s3->storageclass == "NONE");
}

TEST_CASE("http.addr must be [host]:port with a port in 1..65535") {
    for (const char* good : {":5000", "0.0.0.0:5000", "127.0.0.1:1", "localhost:65535",
                             "[::1]:5000", "[::]:443", "drayage-0.internal:5000"}) {
        INFO(good);
        CHECK(load_ok(std::string("http:\n  addr: \"") + good + "\"\n").http.addr == good);
    }
    auto addr_error = [](const std::string& addr) {
        return load_error("http:\n  addr: \"" + addr + "\"\n");
    };
    CHECK_THAT(addr_error("5000"), Catch::StartsWith("conf.yml:2: http.addr: expected "
                                                     "[host]:port like :5000"));
    CHECK_THAT(addr_error(":0"), Catch::Contains("port 0 is not allowed"));
    CHECK_THAT(addr_error(":65536"), Catch::Contains("not a number in 1..65535"));
    CHECK_THAT(addr_error(":http"), Catch::Contains("not a number in 1..65535"));
    CHECK_THAT(addr_error("::1:5000"), Catch::Contains("IPv6 address needs brackets"));
    CHECK_THAT(addr_error("[::g]:5000"), Catch::Contains("is not an IPv6 address"));
    CHECK_THAT(addr_error("300.1.1.1:5000"), Catch::Contains("is not an IPv4 address"));
    CHECK_THAT(addr_error("bad host:5000"), Catch::Contains("is not a host name"));
    CHECK_THAT(addr_error(""), Catch::StartsWith("conf.yml:2: http.addr: expected"));

    auto a = parse_listen_address("[::1]:5000");
    REQUIRE(a.ok());
    CHECK(a->host == "::1");
    CHECK(a->port == 5000);
    a = parse_listen_address(":80");
    REQUIRE(a.ok());
    CHECK(a->host.empty());
    CHECK(a->port == 80);
    CHECK_FALSE(parse_listen_address("localhost").ok());
}

TEST_CASE("upstream.url must be an http(s) URL; regionendpoint may omit the scheme") {
    for (const char* good : {"", "https://registry-1.docker.io", "http://127.0.0.1:5000",
                             "HTTPS://[::1]:5000/", "https://registry.example/v2-mirror"}) {
        INFO(good);
        CHECK(load_ok(std::string("upstream:\n  url: \"") + good + "\"\n").upstream.url == good);
    }
    CHECK_THAT(load_error("upstream:\n  url: ftp://mirror\n"),
               Catch::Equals("conf.yml:2: upstream.url: expected an http:// or https:// URL, got "
                             "\"ftp://mirror\""));
    CHECK_THAT(load_error("upstream:\n  url: registry-1.docker.io\n"),
               Catch::Contains("expected an http:// or https:// URL"));
    CHECK_THAT(load_error("upstream:\n  url: https://\n"), Catch::Contains("expected a host"));
    CHECK_THAT(load_error("upstream:\n  url: https://u:p@registry\n"),
               Catch::Contains("credentials do not belong in the URL"));
    CHECK_THAT(load_error("upstream:\n  url: https://registry:99999\n"),
               Catch::Contains("not a number in 1..65535"));
    CHECK(load_ok("storage:\n  s3:\n    bucket: b\n    regionendpoint: minio.local:9000\n")
              .storage.s3->regionendpoint == "minio.local:9000");
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    regionendpoint: s3://x\n"),
               Catch::StartsWith("conf.yml:4: storage.s3.regionendpoint: expected an http://"));
}

TEST_CASE("cross-key rules: bucket, TLS pair, credential pair, v4auth, keyid") {
    CHECK_THAT(load_error("log:\n  level: info\nstorage:\n  s3:\n    region: us-east-1\n"),
               Catch::Equals("conf.yml:4: storage.s3.bucket: required when storage.s3 is present; "
                             "expected the bucket name the registry uses"));
    CHECK_THAT(load_error("storage:\n  s3:\n"),
               Catch::StartsWith("conf.yml:2: storage.s3.bucket: required"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: \"\"\n"),
               Catch::StartsWith("conf.yml:3: storage.s3.bucket: required"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    region: \"\"\n"),
               Catch::Equals("conf.yml:4: storage.s3.region: must not be empty"));
    CHECK_THAT(load_error("http:\n  tls:\n    certificate: /c.pem\n"),
               Catch::Equals("conf.yml:3: http.tls.certificate: set without http.tls.key; "
                             "expected both (PEM files) for TLS, or neither for plain HTTP"));
    CHECK_THAT(load_error("http:\n  tls:\n    key: /k.pem\n"),
               Catch::StartsWith("conf.yml:3: http.tls.key: set without http.tls.certificate"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    accesskey: AKID\n"),
               Catch::StartsWith("conf.yml:4: storage.s3.accesskey: set without "
                                 "storage.s3.secretkey"));
    CHECK_THAT(load_error("storage:\n  s3:\n    bucket: b\n    v4auth: false\n"),
               Catch::StartsWith("conf.yml:4: storage.s3.v4auth: false needs "
                                 "storage.s3.regionendpoint"));
    // keyid without encrypt: accepted (Distribution ignores it), reported as a note.
    Config c = load_ok("storage:\n  s3:\n    bucket: b\n    keyid: k1\n");
    REQUIRE(c.notes.size() == 1);
    CHECK(c.notes[0] ==
          "conf.yml:4: storage.s3.keyid: ignored because storage.s3.encrypt is false (objects are "
          "stored unencrypted)");
    CHECK(load_ok("storage:\n  s3:\n    bucket: b\n    keyid: k1\n    encrypt: true\n")
              .notes.empty());
}

TEST_CASE("environment overrides win over the file") {
    Config c = load_ok("cache:\n  max_size: 1GiB\nhttp:\n  limits:\n    max_headers: 20\n",
                       {{"DRAYAGE_CACHE_MAX_SIZE", "50GiB"},
                        {"DRAYAGE_HTTP_LIMITS_MAX_HEADERS", "200"},
                        {"DRAYAGE_CACHE_COMPLETE_ORPHAN_FILLS", "false"},
                        {"DRAYAGE_UPSTREAM_URL", ""},
                        {"DRAYAGE_HTTP_LIMITS_IDLE_TIMEOUT", "90"},
                        {"HOME", "/root"},
                        {"DRAYAGE_BUILD_DIR", "/work/main/build"},
                        {"DRAYAGE_TEST_QUICK", "1"}});
    CHECK(c.cache.max_size == 50 * GiB);
    CHECK(c.http.limits.max_headers == 200);
    CHECK_FALSE(c.cache.complete_orphan_fills);
    CHECK(c.upstream.url.empty());
    CHECK(c.http.limits.idle_timeout == Millis{90'000});
    CHECK_FALSE(c.storage.s3.has_value());
}

TEST_CASE("environment errors name the variable and the key") {
    CHECK_THAT(load_error("", {{"DRAYAGE_CACHE_MAX_SIZE", "lots"}}),
               Catch::Equals("DRAYAGE_CACHE_MAX_SIZE: cache.max_size: expected a size like "
                             "512MiB, got \"lots\""));
    CHECK_THAT(load_error("", {{"DRAYAGE_CACHE_MAX_SIZE", "-5GiB"}}),
               Catch::Equals("DRAYAGE_CACHE_MAX_SIZE: cache.max_size: expected a size like "
                             "512MiB, got \"-5GiB\" (is negative)"));
    CHECK_THAT(load_error("", {{"DRAYAGE_CACHE_MAX_SISE", "1GiB"}}),
               Catch::Equals("DRAYAGE_CACHE_MAX_SISE: no configuration key has this name; did you "
                             "mean DRAYAGE_CACHE_MAX_SIZE?"));
    CHECK_THAT(load_error("", {{"DRAYAGE_FROBNICATE", "1"}}),
               Catch::Equals("DRAYAGE_FROBNICATE: no configuration key has this name"));
    CHECK_THAT(load_error("", {{"DRAYAGE_STORAGE_S3", "x"}}),
               Catch::StartsWith("DRAYAGE_STORAGE_S3: storage.s3 is a section; set its keys one "
                                 "by one, e.g. DRAYAGE_STORAGE_S3_"));
    CHECK_THAT(load_error("", {{"DRAYAGE_STORAGE_S3_SECURE", "sure"}}),
               Catch::Equals("DRAYAGE_STORAGE_S3_SECURE: storage.s3.secure: expected true or "
                             "false, got \"sure\""));
    CHECK_THAT(
        load_error("storage:\n  s3:\n    bucket: b\n", {{"DRAYAGE_STORAGE_S3_CHUNKSIZE", "1MiB"}}),
        Catch::StartsWith("DRAYAGE_STORAGE_S3_CHUNKSIZE: storage.s3.chunksize: 1MiB is "
                          "below the S3 minimum part size"));
}

TEST_CASE("any storage.s3 variable creates the section") {
    Config c = load_ok("", {{"DRAYAGE_STORAGE_S3_BUCKET", "registry"},
                            {"DRAYAGE_STORAGE_S3_SECRETKEY", "s3cr3t"},
                            {"DRAYAGE_STORAGE_S3_ACCESSKEY", "AKID"},
                            {"DRAYAGE_STORAGE_S3_ENCRYPT", "true"},
                            {"DRAYAGE_STORAGE_S3_CHUNKSIZE", "5242880"},
                            {"DRAYAGE_STORAGE_S3_MULTIPART_CONCURRENCY", "16"},
                            {"DRAYAGE_STORAGE_S3_RETRY_MAX_ATTEMPTS", "2"}});
    REQUIRE(c.storage.s3.has_value());
    CHECK(c.storage.s3->bucket == "registry");
    CHECK(c.storage.s3->secretkey == "s3cr3t");
    CHECK(c.storage.s3->encrypt);
    CHECK(c.storage.s3->chunksize == 5 * MiB);
    CHECK(c.storage.s3->multipart.concurrency == 16);
    CHECK(c.storage.s3->retry.max_attempts == 2);
    CHECK(c.storage.s3->region == "us-east-1");  // others keep their defaults

    // A secret from the environment completes a file's section.
    Config merged = load_ok("storage:\n  s3:\n    bucket: b\n    accesskey: AKID\n",
                            {{"DRAYAGE_STORAGE_S3_SECRETKEY", "s3cr3t"}});
    CHECK(merged.storage.s3->secretkey == "s3cr3t");

    // Created from the environment without a bucket: the message names what created it.
    CHECK_THAT(load_error("", {{"DRAYAGE_STORAGE_S3_REGION", "eu-west-1"}}),
               Catch::StartsWith("DRAYAGE_STORAGE_S3_REGION: storage.s3.bucket: required when "
                                 "storage.s3 is present"));
}

TEST_CASE("render_redacted hides secrets and round-trips through the loader") {
    Config c = load_ok(kFull);
    const std::string text = render_redacted(c);
    INFO(text);
    CHECK_THAT(text, Catch::Contains("# effective configuration loaded from conf.yml"));
    for (const char* secret : {"hunter2", "wJalrXUtnFEMI", "FwoGZXIvYXdzE"}) {
        CHECK(text.find(secret) == std::string::npos);
    }
    const YAML::Node y = YAML::Load(text);
    CHECK(y["upstream"]["password"].as<std::string>() == "<redacted>");
    CHECK(y["storage"]["s3"]["secretkey"].as<std::string>() == "<redacted>");
    CHECK(y["storage"]["s3"]["sessiontoken"].as<std::string>() == "<redacted>");
    CHECK(y["storage"]["s3"]["accesskey"].as<std::string>() == "AKIDEXAMPLE");
    CHECK(y["upstream"]["username"].as<std::string>() == "mirror");
    CHECK(y["cache"]["max_size"].as<std::string>() == "50GiB");
    CHECK(y["http"]["limits"]["send_timeout"].as<std::string>() == "1h");
    CHECK(y["storage"]["s3"]["multipart"]["concurrency"].as<int>() == 8);

    // Secrets not set stay visibly empty, so "<redacted>" always means "set".
    const YAML::Node d = YAML::Load(render_redacted(load_ok("storage:\n  s3:\n    bucket: b\n")));
    CHECK(d["upstream"]["password"].as<std::string>().empty());
    CHECK(d["storage"]["s3"]["secretkey"].as<std::string>().empty());

    // Rendering with the secrets back is a fixed point of load + render.
    std::string unredacted = text;
    for (auto [from, to] : {std::pair{"password: <redacted>", "password: hunter2"},
                            std::pair{"secretkey: <redacted>", "secretkey: wJalrXUtnFEMI"},
                            std::pair{"sessiontoken: <redacted>", "sessiontoken: FwoGZXIvYXdzE"}}) {
        const std::size_t at = unredacted.find(from);
        REQUIRE(at != std::string::npos);
        unredacted.replace(at, std::strlen(from), to);
    }
    Config again = load_ok(unredacted);
    CHECK(again.storage.s3->secretkey == "wJalrXUtnFEMI");
    CHECK(body(render_redacted(again)) == body(text));

    // Defaults too: no s3 renders as an empty storage section and loads back the same.
    const std::string defaults = render_redacted(load_ok(""));
    CHECK_THAT(defaults, Catch::Contains("storage:\n  {}") || Catch::Contains("storage: {}"));
    CHECK(body(render_redacted(load_ok(defaults))) == body(defaults));
}

TEST_CASE("every rendered key can be set from the environment") {
    // The rendered full config lists every key drayage uses; setting each from DRAYAGE_<PATH>
    // with its rendered value must load and render identically.
    Config c = load_ok(kFull);
    const std::string text = render_redacted(c);
    std::vector<std::pair<std::string, std::string>> all;
    leaves(YAML::Load(text), "", all);
    REQUIRE(all.size() == 52);
    Env env;
    for (auto& [path, value] : all) {
        if (value == "<redacted>") {
            value = "from-env-" + path;
        }
        CHECK(env.emplace(env_name_of(path), value).second);  // names are unique
    }
    Config from_env = load_ok("", env);
    CHECK(from_env.upstream.password == "from-env-upstream.password");
    CHECK(body(render_redacted(from_env)) == body(text));
}

TEST_CASE("conf/drayage.yml loads unchanged and documents the defaults") {
    const std::string path = DRAYAGE_DEFAULT_CONFIG;
    auto r = load_file(path, {});
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r.ok());
    CHECK(r->source_file == path);
    CHECK_FALSE(r->storage.s3.has_value());
    CHECK(r->notes.empty());
    // Every value the file writes is the built-in default.
    CHECK(body(render_redacted(*r)) == body(render_redacted(load_ok(""))));

    // Every key the code knows is documented in it (the s3 ones in the commented example).
    const std::string doc = read_text(path);
    std::vector<std::pair<std::string, std::string>> all;
    leaves(YAML::Load(render_redacted(load_ok(kFull))), "", all);
    for (const auto& [key_path, value] : all) {
        const std::string leaf = key_path.substr(key_path.rfind('.') + 1) + ":";
        INFO(key_path);
        CHECK(doc.find(leaf) != std::string::npos);
    }

    // The commented-out s3 example is valid once uncommented, and shows the defaults.
    std::string uncommented;
    std::istringstream in(doc);
    bool inside = false;
    for (std::string line; std::getline(in, line);) {
        if (line.find("# --- begin s3 example") != std::string::npos) {
            inside = true;
        } else if (line.find("# --- end s3 example") != std::string::npos) {
            inside = false;
        } else if (inside) {
            const std::size_t hash = line.find("# ");
            REQUIRE(hash != std::string::npos);
            line.erase(hash, 2);
        }
        uncommented += line + "\n";
    }
    Config s3 = load_ok(uncommented);
    REQUIRE(s3.storage.s3.has_value());
    CHECK(s3.storage.s3->bucket == "registry-bucket");
    S3Config expected;
    expected.bucket = "registry-bucket";
    Config want;
    want.storage.s3 = expected;
    CHECK(body(render_redacted(s3)) == body(render_redacted(want)));
}

TEST_CASE("load_file reports an unreadable file") {
    auto r = load_file("/nonexistent/drayage.yml", {});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message ==
          "/nonexistent/drayage.yml: cannot read the config file: No such file or directory");
}

TEST_CASE("environment() returns the process environment") {
    ::setenv("DRAYAGE_UNIT_TEST_PROBE", "a=b", 1);
    const Env env = environment();
    ::unsetenv("DRAYAGE_UNIT_TEST_PROBE");
    REQUIRE(env.count("DRAYAGE_UNIT_TEST_PROBE") == 1);
    CHECK(env.at("DRAYAGE_UNIT_TEST_PROBE") == "a=b");
}

TEST_CASE("the auth section: absent is an open mirror; rules, groups and lists load and render") {
    CHECK_FALSE(load_ok("").auth.has_value());
    const std::string yaml =
        "auth:\n"
        "  htpasswd:\n"
        "    path: /etc/drayage/htpasswd\n"
        "  token:\n"
        "    service: mirror.example\n"
        "    expiration: 2m\n"
        "  groups:\n"
        "    dev: [carol, dave]\n"
        "  rules:\n"
        "    - repositories: [\"public/**\"]\n"
        "      pull: [\"*\"]\n"
        "    - repositories: private/*\n"
        "      pull: [alice, \"group:dev\"]\n"
        "      push: [alice]\n"
        "  passthrough: [\"vendor/**\"]\n"
        "  passthrough_ttl: 20s\n";
    Config c = load_ok(yaml);
    REQUIRE(c.auth.has_value());
    const AuthConfig& a = *c.auth;
    CHECK(a.htpasswd_path == "/etc/drayage/htpasswd");
    CHECK(a.token_service == "mirror.example");
    CHECK(a.token_issuer == "drayage");
    CHECK(a.token_expiration == std::chrono::seconds(120));
    CHECK(a.groups.at("dev") == std::vector<std::string>{"carol", "dave"});
    REQUIRE(a.rules.size() == 2);
    CHECK(a.rules[1].repositories == std::vector<std::string>{"private/*"});
    CHECK(a.rules[1].push == std::vector<std::string>{"alice"});
    CHECK(a.passthrough == std::vector<std::string>{"vendor/**"});
    CHECK(a.passthrough_ttl == std::chrono::seconds(20));
    // Renders and loads back the same.
    Config again = load_ok(render_redacted(c));
    REQUIRE(again.auth.has_value());
    CHECK(again.auth->rules.size() == 2);
    CHECK(body(render_redacted(again)) == body(render_redacted(c)));
    // Scalar keys come from the environment too (and create the section).
    Config env = load_ok("", {{"DRAYAGE_AUTH_TOKEN_SERVICE", "svc"}});
    REQUIRE(env.auth.has_value());
    CHECK(env.auth->token_service == "svc");
    CHECK(env.auth->rules.empty());  // deny everything
}

TEST_CASE("auth mistakes are errors naming the key") {
    CHECK_THAT(load_error("auth:\n  rules:\n    - pull: [a]\n"),
               Catch::Contains("auth.rules[0].repositories"));
    CHECK_THAT(load_error("auth:\n  rules:\n    - repositories: [a]\n      pul: [a]\n"),
               Catch::Contains("auth.rules[0].pul"));
    CHECK_THAT(load_error("auth:\n  rules:\n    - repositories: [a]\n      pull: [\"group:x\"]\n"),
               Catch::Contains("auth.groups does not define"));
    CHECK_THAT(load_error("auth:\n  passthrough_ttl: 5m\n"), Catch::Contains("passthrough_ttl"));
    CHECK_THAT(load_error("auth:\n  rules: yes\n"), Catch::Contains("auth.rules"));
}

TEST_CASE("the commented auth example in conf/drayage.yml is valid once uncommented") {
    const std::string doc = read_text(DRAYAGE_DEFAULT_CONFIG);
    const std::size_t begin = doc.find("# --- begin auth example");
    const std::size_t end = doc.find("# --- end auth example");
    REQUIRE(begin != std::string::npos);
    REQUIRE(end != std::string::npos);
    std::istringstream in(doc.substr(begin, end - begin));
    std::string line, yaml;
    std::getline(in, line);  // the marker
    while (std::getline(in, line)) {
        yaml += (line.rfind("# ", 0) == 0 ? line.substr(2) : line.substr(1)) + "\n";
    }
    Config c = load_ok(yaml);
    REQUIRE(c.auth.has_value());
    CHECK(c.auth->rules.size() == 2);
    CHECK(c.auth->token_expiration == std::chrono::seconds(300));
    CHECK(c.auth->passthrough_ttl == std::chrono::seconds(30));
}
