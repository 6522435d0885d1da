// The registry's names for things: blob digests, repository names and tags, validated with the
// grammar Docker Distribution 2.8 and the OCI distribution spec use, so drayage accepts exactly
// what the registry behind it accepts and builds bucket keys only from validated parts.
//
// Errors carry the Registry API error code (DIGEST_INVALID, NAME_INVALID, TAG_INVALID) and
// status 400, ready to be sent to a client.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::registry {

// The algorithms go-digest (and so the registry) can verify. Other algorithms that are valid OCI
// syntax ("multihash+base58:...") are rejected as unsupported, as the registry does.
enum class DigestAlgorithm { sha256, sha384, sha512 };

// "<algorithm>:<lower-case hex>" with the hex length fixed by the algorithm (64, 96, 128).
class BlobDigest {
public:
    // Parses and validates; error DIGEST_INVALID names what is wrong (syntax, unsupported
    // algorithm, wrong length, upper-case or non-hex characters).
    static Result<BlobDigest> parse(std::string_view text);
    // From a 64-character lower-case hex sha256 (what a hasher produces); DIGEST_INVALID else.
    static Result<BlobDigest> from_sha256_hex(std::string_view hex);

    DigestAlgorithm algorithm() const { return algorithm_; }
    std::string_view algorithm_name() const;  // "sha256"
    std::string_view hex() const { return std::string_view(text_).substr(colon_ + 1); }
    const std::string& str() const { return text_; }  // "sha256:<hex>"

    bool operator==(const BlobDigest& other) const { return text_ == other.text_; }

private:
    BlobDigest(DigestAlgorithm algorithm, std::string text, std::size_t colon)
        : algorithm_(algorithm), text_(std::move(text)), colon_(colon) {}

    DigestAlgorithm algorithm_;
    std::string text_;
    std::size_t colon_;
};

// Distribution's limit on the whole repository name.
inline constexpr std::size_t kMaxRepositoryNameLength = 255;

// A repository name: path components matching [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
// separated by single '/', at most 255 bytes in total. (No registry host part: a mirror is
// addressed by path only.) Error NAME_INVALID.
Status validate_repository_name(std::string_view name);
inline bool is_valid_repository_name(std::string_view name) {
    return validate_repository_name(name).ok();
}

// A tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}. Error TAG_INVALID.
Status validate_tag(std::string_view tag);
inline bool is_valid_tag(std::string_view tag) {
    return validate_tag(tag).ok();
}

}  // namespace drayage::registry
