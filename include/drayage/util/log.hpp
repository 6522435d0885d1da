// Process-wide logging: one spdlog logger ("drayage") writing text or JSON lines to stderr or to
// `log.file`. The file is reopened by `reopen()` (SIGHUP), so logrotate can move it away.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::log {

struct Options {
    std::string level = "info";  // trace|debug|info|warn|error|off
    bool json = false;           // one JSON object per line instead of text
    std::string file;            // empty: stderr
};

// Installs the logger as spdlog's default. Fails (with a message naming the file) when the log
// file cannot be opened. Safe to call again; the last call wins.
Status init(const Options& options);

// Reopens the log file (no-op on stderr). On failure the old file stays in use and the failure is
// logged there.
Status reopen();

// Parses a level name; returns false for an unknown one.
bool parse_level(const std::string& name, spdlog::level::level_enum& out);

// One request, one line. Fields are what an operator greps for; `outcome` carries the cache and
// source result ("hit", "miss:s3", "miss:upstream", ...) once the registry front sets it.
// Views: a record is logged during the call that builds it (one per request, so no copies).
struct AccessRecord {
    std::string_view peer;
    std::string_view method;
    std::string_view path;  // without the query string (it may carry secrets)
    int status = 0;
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
    std::chrono::microseconds duration{0};
    std::string_view outcome;
    std::string_view user;
};
void access(const AccessRecord& record);

// JSON string escaping shared by the JSON log format and small hand-built JSON bodies.
std::string json_escape(std::string_view in);

}  // namespace drayage::log
