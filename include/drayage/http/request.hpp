// One parsed HTTP/1.1 request head, as the parser produces it and handlers read it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drayage/util/text.hpp"

namespace drayage::http {

// Header fields in arrival order, names as sent (compare case-insensitively), values with leading
// and trailing whitespace removed. Repeated fields stay separate entries.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

using text::iequals;

struct Request {
    std::string method;  // "GET", "PUT", ... (http-parser only accepts methods it knows)
    std::string target;  // request-target exactly as sent, e.g. "/v2/x/blobs/sha256:..?ns=a"
    std::string path;    // target before '?' (and without "http://host" in absolute form); raw,
                         // not percent-decoded: the registry grammar is checked on the raw form
    std::string query;   // after '?', without it; empty when absent
    int version_major = 1;
    int version_minor = 1;
    HeaderList headers;

    // Body framing, already validated: at most one of the two is set, never both.
    std::optional<std::uint64_t> content_length;  // Content-Length, when sent
    bool chunked = false;                         // Transfer-Encoding: chunked

    bool keep_alive = true;        // HTTP/1.1 without "Connection: close", or 1.0 with keep-alive
    bool expect_continue = false;  // "Expect: 100-continue" on an HTTP/1.1 request

    std::string peer;  // "ip:port" of the client; filled by the server, empty from the parser

    // First value of header `name` (case-insensitive), or an empty view when absent.
    std::string_view header(std::string_view name) const;

    // True when a body follows the head (chunked, or Content-Length > 0).
    bool has_body() const { return chunked || content_length.value_or(0) > 0; }
};

}  // namespace drayage::http
