// The distribution grammar (github.com/distribution/distribution/v3/reference/regexp.go and
// go-digest), hand-written instead of std::regex: these run on every request and std::regex is
// slow and may throw.
#include "drayage/registry/reference.hpp"

#include <array>
#include <string>
#include <string_view>

namespace drayage::registry {
namespace {

bool is_lower_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_lower_hex(char c) {
    return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9');
}
bool is_word(char c) {
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '_';
}

Error digest_error(std::string_view text, std::string_view why) {
    return make_error(
        "DIGEST_INVALID",
        "invalid digest '" + std::string(text.substr(0, 160)) + "': " + std::string(why), 400);
}

// OCI: algorithm := algorithm-component (algorithm-separator algorithm-component)*
//      algorithm-component := [a-z0-9]+ ; algorithm-separator := [+._-]
bool valid_algorithm_syntax(std::string_view alg) {
    bool need_component = true;
    for (char c : alg) {
        if (is_lower_alnum(c)) {
            need_component = false;
        } else if (c == '+' || c == '.' || c == '_' || c == '-') {
            if (need_component) return false;
            need_component = true;
        } else {
            return false;
        }
    }
    return !need_component;
}

// OCI: encoded := [a-zA-Z0-9=_-]+
bool valid_encoded_syntax(std::string_view enc) {
    if (enc.empty()) return false;
    for (char c : enc) {
        if (!(is_word(c) || c == '=' || c == '-')) return false;
    }
    return true;
}

// One path component: [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
// i.e. alphanumeric runs separated by exactly one of ".", "_", "__" or one or more "-".
bool valid_path_component(std::string_view c) {
    std::size_t i = 0;
    const std::size_t n = c.size();
    auto alnum_run = [&] {
        const std::size_t start = i;
        while (i < n && is_lower_alnum(c[i]))
            ++i;
        return i > start;
    };
    if (!alnum_run()) return false;
    while (i < n) {
        if (c[i] == '.') {
            ++i;
        } else if (c[i] == '_') {
            ++i;
            if (i < n && c[i] == '_') ++i;
        } else if (c[i] == '-') {
            while (i < n && c[i] == '-')
                ++i;
        } else {
            return false;
        }
        if (!alnum_run()) return false;
    }
    return true;
}

}  // namespace

std::string_view BlobDigest::algorithm_name() const {
    return std::string_view(text_).substr(0, colon_);
}

Result<BlobDigest> BlobDigest::parse(std::string_view text) {
    // Nearly every digest is sha256: checked in one pass (every request carries one).
    constexpr std::string_view kSha256 = "sha256:";
    if (text.size() == kSha256.size() + 64 && text.starts_with(kSha256)) {
        static constexpr auto kHex = [] {
            std::array<bool, 256> t{};
            for (char c : std::string_view("0123456789abcdef"))
                t[static_cast<unsigned char>(c)] = true;
            return t;
        }();
        bool hex = true;
        for (char c : text.substr(kSha256.size()))
            hex &= kHex[static_cast<unsigned char>(c)];
        if (hex) return BlobDigest(DigestAlgorithm::sha256, std::string(text), kSha256.size() - 1);
    }
    const std::size_t colon = text.find(':');
    if (colon == std::string_view::npos) return digest_error(text, "no ':'");
    const std::string_view alg = text.substr(0, colon);
    const std::string_view enc = text.substr(colon + 1);
    if (!valid_algorithm_syntax(alg) || !valid_encoded_syntax(enc)) {
        return digest_error(text, "not <algorithm>:<encoded>");
    }
    DigestAlgorithm algorithm;
    std::size_t hex_len = 0;
    if (alg == "sha256") {
        algorithm = DigestAlgorithm::sha256;
        hex_len = 64;
    } else if (alg == "sha384") {
        algorithm = DigestAlgorithm::sha384;
        hex_len = 96;
    } else if (alg == "sha512") {
        algorithm = DigestAlgorithm::sha512;
        hex_len = 128;
    } else {
        return digest_error(text, "unsupported algorithm");
    }
    if (enc.size() != hex_len) {
        return digest_error(text, "wrong length for " + std::string(alg) + " (want " +
                                      std::to_string(hex_len) + " hex characters)");
    }
    for (char c : enc) {
        if (!is_lower_hex(c)) return digest_error(text, "not lower-case hex");
    }
    return BlobDigest(algorithm, std::string(text), colon);
}

Result<BlobDigest> BlobDigest::from_sha256_hex(std::string_view hex) {
    return parse("sha256:" + std::string(hex));
}

Status validate_repository_name(std::string_view name) {
    auto bad = [&](std::string_view why) {
        return make_error("NAME_INVALID",
                          "invalid repository name '" + std::string(name.substr(0, 300)) +
                              "': " + std::string(why),
                          400);
    };
    if (name.empty()) return bad("empty");
    if (name.size() > kMaxRepositoryNameLength) return bad("longer than 255 characters");
    std::size_t pos = 0;
    while (true) {
        const std::size_t slash = name.find('/', pos);
        const std::string_view component = name.substr(
            pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
        if (!valid_path_component(component)) {
            return bad("component '" + std::string(component) +
                       "' must be lower-case alphanumerics separated by '.', '_', '__' or '-'");
        }
        if (slash == std::string_view::npos) break;
        pos = slash + 1;
    }
    return {};
}

Status validate_tag(std::string_view tag) {
    const bool ok = !tag.empty() && tag.size() <= 128 && is_word(tag[0]) &&
                    tag.find_first_not_of(
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        "0123456789_.-") == std::string_view::npos;
    if (ok) return {};
    return make_error("TAG_INVALID",
                      "invalid tag '" + std::string(tag.substr(0, 200)) +
                          "': want [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
                      400);
}

}  // namespace drayage::registry
