// The uncached stream (src/registry/front/uncached_stream.cpp): a blob the cache cannot store
// (larger than the whole cache, or the cache not writable now), streamed from an origin to one
// client without caching it.
//
// Every byte is hashed on the way, and the last byte of the client's span is held back until the
// digest checks out (as for a reader joined to a fill): a client never completes a transfer of
// bytes that fail verification; it sees the connection reset instead. A Range request still reads
// the blob from its start, so it can be verified; when the origin sends no length the Range is
// ignored (200, the whole blob, chunked), and the byte held back is the last one received so far.
// An HTTP/1.0 client gets 503 before any body when the origin sends no length (only the close
// would end the body, so a failed digest would look complete). There is no single flight here:
// each client has its own origin transfer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/http/server.hpp"
#include "drayage/registry/origin.hpp"
#include "drayage/util/digest.hpp"

namespace drayage::registry::front {

class UncachedStream : public std::enable_shared_from_this<UncachedStream> {
public:
    // `head_lines`: blob_head_lines of `digest`; `range`: the client's Range header.
    UncachedStream(std::shared_ptr<http::Exchange> ex, std::string digest, std::string range,
                   std::string head_lines);

    // Asks `origin` for the blob of `repo`. Call from outside the origin's own callbacks (curl
    // refuses new transfers from inside them). The stream keeps itself alive until it ends.
    void start(BlobOrigin& origin, const std::string& repo);

private:
    bool head(const OriginHead& h);
    bool data(std::string_view bytes);
    void done(Status st);
    bool stop_after(bool result);
    void stop();

    std::shared_ptr<http::Exchange> ex_;
    std::string digest_;
    std::string range_;
    std::string head_lines_;  // blob_head_lines
    std::shared_ptr<OriginTransfer> transfer_;
    std::optional<digest::Sha256> hash_;
    std::optional<std::uint64_t> size_;  // as the origin announced it
    std::uint64_t first_ = 0;            // the client's span: [first_, end_)
    std::optional<std::uint64_t> end_;   // nullopt: to the end, wherever that is
    std::uint64_t pos_ = 0;              // bytes received from the origin
    char held_ = 0;                      // the span's last byte received, not yet sent
    bool holding_ = false;
    bool stopped_ = false;
};

}  // namespace drayage::registry::front
