// The uncached stream (src/registry/fetch/uncached_stream.cpp): a blob the cache cannot store
// (larger than the whole cache, or the cache not writable now; FetchOutcome::Kind::uncached),
// streamed from an origin to one client without caching it.
//
// Every byte is hashed on the way, and the last byte of the client's span is held back until the
// digest checks out (as for a reader joined to a fill): a client never completes a transfer of
// bytes that fail verification; its answer is aborted instead (the connection reset). A Range
// request still reads the blob from its start, so it can be verified; when the origin sends no
// length the Range is ignored (200, the whole blob, without a length), and the byte held back is
// the last one received so far. A client that cannot take a body of unknown length
// (BlobSink::delimits_unknown_length: HTTP/1.0) gets 503 before any body when the origin sends no
// length. There is no single flight here: each client has its own origin transfer.
//
// Flow control: a write() the client refuses pauses the origin (its on_data returns false), and
// the client's on_writable resumes it. A client going away cancels the origin's transfer.
#pragma once

#include <memory>
#include <string>

#include "drayage/registry/blob_sink.hpp"
#include "drayage/registry/origin.hpp"

namespace drayage::registry {

// Asks `origin` for blob `digest` of `repo` and streams it to `client`; `range` is the client's
// Range header value (empty: none). Call from outside the origin's own callbacks (curl refuses
// new transfers from inside them). The stream keeps itself alive until it ends; nothing is
// returned because nothing needs stopping from outside: the client's on_closed does it.
void stream_uncached(BlobOrigin& origin, const std::string& repo, const std::string& digest,
                     const std::string& range, std::shared_ptr<BlobSink> client);

}  // namespace drayage::registry
