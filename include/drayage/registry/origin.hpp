// Where blobs come from on a cache miss: the S3 bucket in the Distribution layout, or the upstream
// registry (make_bucket_origin, make_upstream_origin: src/registry/fetch/). The fetch layer
// (fetch.hpp) asks the origins in order and takes the first that has the blob; registry code
// reads blob bytes only through this interface, whatever client lies below it.
//
// Every callback runs on the event loop thread. A NOT_FOUND error (Error::code "NOT_FOUND") means
// "this origin does not have it, ask the next"; any other error is a failure of that origin.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::registry {

struct OriginHead {
    std::optional<std::uint64_t> size;  // Content-Length of the whole blob when known
};

struct OriginSink {
    // The blob exists; its bytes follow. Return false to abandon the transfer (then on_done is
    // not called).
    std::function<bool(const OriginHead&)> on_head;
    // Bytes in order. Return false to pause until OriginTransfer::resume().
    std::function<bool(std::string_view)> on_data;
    // Exactly once unless cancelled or abandoned from on_head: ok() after the last byte.
    std::function<void(Status)> on_done;
};

class OriginTransfer {
public:
    virtual ~OriginTransfer() = default;
    virtual void resume() = 0;
    virtual void cancel() = 0;  // no callback after this
};

class BlobOrigin {
public:
    virtual ~BlobOrigin() = default;
    // "s3" or "upstream": the cache outcome in the access log names it.
    virtual std::string_view name() const = 0;
    // The blob's size without its bytes.
    virtual void head(std::string_view repo, std::string_view digest,
                      std::function<void(Result<OriginHead>)> done) = 0;
    // The whole blob, streamed.
    virtual std::shared_ptr<OriginTransfer> get(std::string_view repo, std::string_view digest,
                                                OriginSink sink) = 0;
};

}  // namespace drayage::registry
