// Blob serving (src/registry/front/blob_serving.cpp): GET and HEAD of blobs in the cache,
// complete or still filling, with Range; the hit workers' handler (make_hit_handler); a HEAD
// answered from the origins when the cache does not have the blob. A GET of a blob the cache
// does not have goes to serve_miss (misses.cpp) and the fetch layer, and comes back here through
// stream_from_cache once the blob's fill exists.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "drayage/cache/cache.hpp"
#include "drayage/http/server.hpp"
#include "drayage/registry/front.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry::front {

// The headers of a blob response, formatted ("Name: value\r\n" lines, see
// Exchange::send_head_lines): they go out with every blob answer.
std::string blob_head_lines(std::string_view digest);

// The Content-Range line of a 206, appended to blob_head_lines.
void add_content_range(std::string& lines, const ByteSpan& span, std::uint64_t size);

// Serves a GET of `digest`, complete or filling in `cache`; `range` is the client's Range header.
// One reader per request: opened on the whole blob, it tells the size the range is resolved
// against (206 with Content-Range, or 416 with bytes */size) and is narrowed to it. A filling
// blob whose size is not known yet is served whole (200). A blob the cache does not have is a
// 404 BLOB_UNKNOWN, a reader that cannot be opened a 503.
void stream_from_cache(const std::shared_ptr<http::Exchange>& ex, cache::Cache& cache,
                       const std::string& digest, const std::string& range);

}  // namespace drayage::registry::front
