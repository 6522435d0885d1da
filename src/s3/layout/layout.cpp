// Distribution 2.8 storage paths (registry/storage/paths.go) under the s3 driver's root.
#include "drayage/s3/layout.hpp"

#include <string>
#include <string_view>

namespace drayage::s3 {
namespace {

constexpr std::string_view kV2 = "docker/registry/v2/";

// <algorithm>/<hex>, the digestPathComponents of paths.go.
std::string digest_components(DigestParts d) {
    std::string out(d.algorithm);
    out.append("/").append(d.hex);
    return out;
}

std::string repository(std::string_view name) {
    std::string out("repositories/");
    out.append(name).append("/");
    return out;
}

}  // namespace

BucketLayout::BucketLayout(std::string_view rootdirectory) {
    // s3Path() is strings.TrimLeft(strings.TrimRight(root, "/") + path, "/") with path starting
    // with "/": the root loses trailing and leading slashes, inner ones stay as written.
    while (!rootdirectory.empty() && rootdirectory.back() == '/')
        rootdirectory.remove_suffix(1);
    while (!rootdirectory.empty() && rootdirectory.front() == '/')
        rootdirectory.remove_prefix(1);
    if (!rootdirectory.empty()) root_prefix_.append(rootdirectory).append("/");
}

std::string BucketLayout::key(std::string_view path_under_v2) const {
    std::string out = root_prefix_;
    out.append(kV2).append(path_under_v2);
    return out;
}

std::string BucketLayout::blob_data_key(DigestParts digest) const {
    std::string p("blobs/");
    p.append(digest.algorithm).append("/").append(digest.hex.substr(0, 2));
    p.append("/").append(digest.hex).append("/data");
    return key(p);
}

std::string BucketLayout::layer_link_key(std::string_view repo, DigestParts digest) const {
    return key(repository(repo) + "_layers/" + digest_components(digest) + "/link");
}

std::string BucketLayout::manifest_revision_link_key(std::string_view repo,
                                                     DigestParts digest) const {
    return key(repository(repo) + "_manifests/revisions/" + digest_components(digest) + "/link");
}

std::string BucketLayout::tag_current_link_key(std::string_view repo, std::string_view tag) const {
    return key(repository(repo) + "_manifests/tags/" + std::string(tag) + "/current/link");
}

std::string BucketLayout::tag_index_link_key(std::string_view repo, std::string_view tag,
                                             DigestParts digest) const {
    return key(repository(repo) + "_manifests/tags/" + std::string(tag) + "/index/" +
               digest_components(digest) + "/link");
}

std::string BucketLayout::upload_data_key(std::string_view repo,
                                          std::string_view upload_uuid) const {
    return key(repository(repo) + "_uploads/" + std::string(upload_uuid) + "/data");
}

}  // namespace drayage::s3
