// Helpers shared by the two signers that the rest of drayage has no use for.
#pragma once

#include <string>
#include <string_view>

namespace drayage::s3 {

// Standard base64 with padding, no line breaks.
std::string base64_encode(std::string_view raw);
// ASCII lower-casing (header names are ASCII tokens).
std::string ascii_lower(std::string_view s);
// Strips SP, HT, CR, LF, VT, FF at both ends.
std::string_view trim_whitespace(std::string_view s);

}  // namespace drayage::s3
