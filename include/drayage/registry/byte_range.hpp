// The Range header of a blob GET (RFC 9110 section 14), as the registry serves it: one span of
// bytes or the whole blob. Used by the cache's answers (front/blob_serving.cpp) and the uncached
// stream (fetch/uncached_stream.cpp) alike, so a client gets the same span from either.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::registry {

// Bytes [first, last] of a blob, inclusive.
struct ByteSpan {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
};

// Parses a Range header value against a blob of `size` bytes. Returns nullopt for no usable
// range (absent, not bytes=, several ranges, syntactically invalid: serve the whole blob); an
// Error with status 416 when unsatisfiable; else the span, clipped to the blob.
Result<std::optional<ByteSpan>> parse_range(std::string_view header, std::uint64_t size);

}  // namespace drayage::registry
