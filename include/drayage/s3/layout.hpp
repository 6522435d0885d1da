// Where Docker Distribution 2.8 keeps things in its S3 bucket, so drayage reads blobs the
// registry wrote and writes blobs the registry will serve.
//
// Keys are those of distribution's path mapper (registry/storage/paths.go) passed through the s3
// driver's s3Path(): `rootdirectory` with trailing '/' removed, then the path, then leading '/'
// removed. With rootdirectory "/reg":
//   reg/docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data
//   reg/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link
//   reg/docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//   reg/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//   reg/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
//   reg/docker/registry/v2/repositories/<name>/_uploads/<uuid>/data
// A link object holds the digest string ("sha256:<hex>", no newline: 71 bytes for sha256).
//
// Keys are returned unencoded; the S3 client percent-encodes them for the wire. Digests, names,
// tags and upload ids must have been validated by the caller (the registry's grammar,
// registry/reference.hpp): these functions only concatenate, and s3 does not depend on the
// registry. The algorithm segment follows the digest (distribution does the same for
// sha384/sha512), so a sha256 digest gives exactly the keys above.
#pragma once

#include <concepts>
#include <string>
#include <string_view>

namespace drayage::s3 {

// The two parts of a validated blob digest that keys are built from: the algorithm ("sha256")
// and the lower-case hex. Any digest type with algorithm_name() and hex() converts implicitly
// (registry::BlobDigest does), so callers pass their digest as it is. The views must outlive
// the call only: keys are copied out.
struct DigestParts {
    std::string_view algorithm;
    std::string_view hex;

    DigestParts(std::string_view algorithm_name, std::string_view lower_hex)
        : algorithm(algorithm_name), hex(lower_hex) {}
    template <typename Digest>
    requires requires(const Digest& d) {
        { d.algorithm_name() } -> std::convertible_to<std::string_view>;
        { d.hex() } -> std::convertible_to<std::string_view>;
    }
    DigestParts(const Digest& d)  // NOLINT(google-explicit-constructor): see above
        : algorithm(d.algorithm_name()), hex(d.hex()) {}
};

class BucketLayout {
public:
    // `rootdirectory` as in the registry's storage.s3 config ("", "/", "/reg", "reg/", ...).
    explicit BucketLayout(std::string_view rootdirectory);

    // "" or the root with one trailing '/' ("reg/"): every key starts with it.
    const std::string& root_prefix() const { return root_prefix_; }

    std::string blob_data_key(DigestParts digest) const;
    std::string layer_link_key(std::string_view repository, DigestParts digest) const;
    std::string manifest_revision_link_key(std::string_view repository, DigestParts digest) const;
    std::string tag_current_link_key(std::string_view repository, std::string_view tag) const;
    std::string tag_index_link_key(std::string_view repository, std::string_view tag,
                                   DigestParts digest) const;
    std::string upload_data_key(std::string_view repository, std::string_view upload_uuid) const;

private:
    std::string key(std::string_view path_under_v2) const;

    std::string root_prefix_;
};

// The body of a link object: the digest string, no trailing newline.
inline std::string link_content(DigestParts digest) {
    std::string out(digest.algorithm);
    out.append(":").append(digest.hex);
    return out;
}

}  // namespace drayage::s3
