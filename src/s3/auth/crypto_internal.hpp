// Helpers shared by the two signers that the rest of drayage has no use for.
#pragma once

#include <string>
#include <string_view>

namespace drayage::s3 {

// Raw 20-byte HMAC-SHA1(key, data): SigV2 only.
std::string hmac_sha1(std::string_view key, std::string_view data);
// Standard base64 with padding, no line breaks.
std::string base64_encode(std::string_view raw);
// ASCII lower-casing (header names are ASCII tokens).
std::string ascii_lower(std::string_view s);
// Strips SP, HT, CR, LF, VT, FF at both ends.
std::string_view trim_whitespace(std::string_view s);

}  // namespace drayage::s3
