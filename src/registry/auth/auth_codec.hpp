// What the token files share (auth_jwt.cpp, auth_identity.cpp, auth_token_endpoint.cpp):
// base64 in both alphabets, JSON as tokens spell it, and secrets from the system's CSPRNG.
// Private to src/registry/auth/.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace drayage::registry::detail {

inline constexpr std::string_view kStd =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
inline constexpr std::string_view kUrl =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string encode64(std::string_view bytes, std::string_view alphabet, bool pad);
// `canonical`: only the encoding encode64(.., false) makes (no padding, zero unused bits), so
// that a token has one spelling; otherwise trailing padding is skipped (Basic credentials).
std::optional<std::string> decode64(std::string_view text, std::string_view alphabet,
                                    bool canonical);
// JSON as tokens and the token endpoint spell it: compact, invalid UTF-8 replaced.
std::string dump(const nlohmann::json& j);
// `n` bytes from RAND_bytes; aborts when it fails (no entropy is no security).
std::string random_bytes(std::size_t n);

}  // namespace drayage::registry::detail
