// The S3 bucket of a Docker Distribution registry as a blob origin: blobs are read from
// `<rootdirectory>/docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data`, exactly where the
// registry's s3 driver writes them.
#pragma once

#include <memory>
#include <string_view>

#include "drayage/registry/origin.hpp"
#include "drayage/s3/client.hpp"

namespace drayage::registry {

// `client` must outlive the origin. A missing object (404 / NoSuchKey) is NOT_FOUND, so the
// next origin is asked.
std::shared_ptr<BlobOrigin> make_bucket_origin(s3::Client& client, std::string_view rootdirectory);

}  // namespace drayage::registry
