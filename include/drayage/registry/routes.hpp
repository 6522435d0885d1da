// Registry API v2 routes: which endpoint a request path names, with its parts validated.
//
// Pure: a raw request path in, a Route out. The path is matched as sent (not percent-decoded:
// a name spelled with %2F or ".." is not a valid name, so it is rejected rather than
// reinterpreted). `<name>` may itself contain "/manifests/" or "/blobs/" components, so the
// endpoint is found from the right, as Distribution's router does.
#pragma once

#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::registry {

enum class Endpoint {
    base,          // /v2/
    catalog,       // /v2/_catalog
    tags,          // /v2/<name>/tags/list
    manifest,      // /v2/<name>/manifests/<reference>
    blob,          // /v2/<name>/blobs/<digest>
    upload_start,  // /v2/<name>/blobs/uploads/
    upload,        // /v2/<name>/blobs/uploads/<uuid>
    healthz,       // /healthz
    metrics,       // /metrics
};

struct Route {
    Endpoint endpoint = Endpoint::base;
    std::string name;        // repository name (validated)
    std::string reference;   // tag or digest (manifest), digest (blob), uuid (upload)
    bool by_digest = false;  // manifest reference is a digest
};

// Errors carry the Registry API code and status to answer with:
//   404 NOT_FOUND      (code "NOT_FOUND", plain 404: no such endpoint)
//   400 NAME_INVALID   (a repository name outside the grammar, or over 255 bytes)
//   400 DIGEST_INVALID (a reference with a ':' that is not a digest drayage supports: outside
//                       the grammar, or of an algorithm other than sha256/sha384/sha512)
//   404 MANIFEST_UNKNOWN (a manifest reference without ':' outside the tag grammar: no such
//                       tag can exist; docker-registry answers 404 for it as well)
//   404 BLOB_UNKNOWN   (a blob reference without ':': not a digest, so no such blob)
//   404 BLOB_UPLOAD_UNKNOWN (an upload id outside [A-Za-z0-9_-]{1,128}: no such upload can
//                       exist; docker-registry answers 404 as well)
Result<Route> parse_route(std::string_view path);

}  // namespace drayage::registry
