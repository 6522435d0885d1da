// The upstream registry as a blob origin (src/registry/fetch/upstream_origin.cpp): a blob is one
// GET /v2/<name>/blobs/<digest> through UpstreamRegistry::get_blob, which follows the redirect to
// the upstream's storage and authenticates as the upstream asks.
#pragma once

#include <memory>

#include "drayage/registry/origin.hpp"
#include "drayage/registry/upstream.hpp"

namespace drayage::registry {

// `upstream` must outlive the origin. A 404 from the upstream is NOT_FOUND (the next origin is
// asked); its other errors (refusals, rate limits, unreachable) are failures of this origin.
std::shared_ptr<BlobOrigin> make_upstream_origin(UpstreamRegistry& upstream);

}  // namespace drayage::registry
