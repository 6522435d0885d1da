#include "drayage/registry/routes.hpp"

#include <algorithm>
#include <cstring>

#include "drayage/registry/reference.hpp"

namespace drayage::registry {
namespace {

Error not_found() {
    return make_error("NOT_FOUND", "no such endpoint", 404);
}

bool valid_upload_id(std::string_view id) {
    if (id.empty() || id.size() > 128) return false;
    for (char c : id) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok) return false;
    }
    return true;
}

Status check_name(std::string_view name) {
    auto st = validate_repository_name(name);
    if (!st) return make_error("NAME_INVALID", st.error().message, 400);
    return {};
}

// The last '/' in s[0, end), or npos. memrchr: string_view::rfind(char) steps a byte at a time.
std::size_t last_slash(std::string_view s, std::size_t end) {
    const void* at = ::memrchr(s.data(), '/', std::min(end, s.size()));
    return at == nullptr ? std::string_view::npos
                         : static_cast<std::size_t>(static_cast<const char*>(at) - s.data());
}

// Splits "<name>/<marker>/<rest>" at the last occurrence of "/<marker>/". Walks the slashes
// from the right: string_view::rfind of a needle compares at every position.
bool split_last(std::string_view s, std::string_view marker, std::string_view& name,
                std::string_view& rest) {
    for (std::size_t end = last_slash(s, s.size());
         end != std::string_view::npos && end > marker.size(); end = last_slash(s, end)) {
        std::size_t start = end - marker.size();
        if (s[start - 1] != '/' || s.compare(start, marker.size(), marker) != 0) continue;
        if (start == 1) return false;  // "/<marker>/..." has no name
        name = s.substr(0, start - 1);
        rest = s.substr(end + 1);
        return true;
    }
    return false;
}

}  // namespace

Result<Route> parse_route(std::string_view path) {
    if (path == "/healthz") return Route{Endpoint::healthz, {}, {}, false};
    if (path == "/metrics") return Route{Endpoint::metrics, {}, {}, false};
    if (path == "/v2" || path == "/v2/") return Route{Endpoint::base, {}, {}, false};
    if (path.substr(0, 4) != "/v2/") return not_found();
    std::string_view s = path.substr(4);
    if (s == "_catalog") return Route{Endpoint::catalog, {}, {}, false};

    // Uploads first: "/blobs/uploads/" also contains "/blobs/".
    constexpr std::string_view kUploads = "/blobs/uploads";
    auto pos =
        s.find(kUploads) == std::string_view::npos ? std::string_view::npos : s.rfind(kUploads);
    if (pos != std::string_view::npos && pos > 0) {
        std::string_view after = s.substr(pos + kUploads.size());
        if (after.empty() || after[0] == '/') {
            std::string_view n = s.substr(0, pos);
            if (auto st = check_name(n); !st) return st.error();
            if (after.size() <= 1) return Route{Endpoint::upload_start, std::string(n), {}, false};
            std::string_view id = after.substr(1);
            if (id.back() == '/') id.remove_suffix(1);
            // No upload can have such an id: an unknown upload, as the registry answers.
            if (!valid_upload_id(id))
                return make_error("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404);
            return Route{Endpoint::upload, std::string(n), std::string(id), false};
        }
    }
    if (s.ends_with("/tags/list")) {
        std::string_view n = s.substr(0, s.size() - std::string_view("/tags/list").size());
        if (n.empty()) return not_found();
        if (auto st = check_name(n); !st) return st.error();
        return Route{Endpoint::tags, std::string(n), {}, false};
    }
    std::string_view name, rest;
    if (split_last(s, "manifests", name, rest)) {
        if (auto st = check_name(name); !st) return st.error();
        if (rest.find(':') != std::string_view::npos) {
            auto d = BlobDigest::parse(rest);
            if (!d) return make_error("DIGEST_INVALID", d.error().message, 400);
            return Route{Endpoint::manifest, std::string(name), d->str(), true};
        }
        // No tag outside the grammar can exist: a manifest that does not exist (the registry's
        // router answers 404 for it too).
        if (auto st = validate_tag(rest); !st)
            return make_error("MANIFEST_UNKNOWN", st.error().message, 404);
        return Route{Endpoint::manifest, std::string(name), std::string(rest), false};
    }
    if (split_last(s, "blobs", name, rest)) {
        if (auto st = check_name(name); !st) return st.error();
        // Not even digest-shaped: no such blob, as the registry answers (404); a digest that is
        // malformed or of an unsupported algorithm is the client's error (400), as there.
        if (rest.find(':') == std::string_view::npos)
            return make_error("BLOB_UNKNOWN", "blob unknown: not a digest", 404);
        auto d = BlobDigest::parse(rest);
        if (!d) return make_error("DIGEST_INVALID", d.error().message, 400);
        return Route{Endpoint::blob, std::string(name), d->str(), true};
    }
    return not_found();
}

}  // namespace drayage::registry
