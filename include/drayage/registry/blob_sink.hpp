// A client that the fetch layer sends a blob to (the uncached stream, uncached_stream.hpp),
// without the fetch layer knowing HTTP: the front adapts its http::Exchange to this
// (ExchangeSink in src/registry/front/misses.cpp, which adds the blob headers and the Registry API
// error bodies); the unit tests use a recording fake.
//
// An answer is one head (send_whole or send_span, then write() ... and finish() or abort()), or
// one refusal (send_unsatisfiable, send_unavailable), which ends it. Everything runs on the event
// loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "drayage/registry/byte_range.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry {

class BlobSink {
public:
    virtual ~BlobSink() = default;

    // Whether the client can tell where a body of unknown length ends (HTTP/1.1: chunked).
    // False for HTTP/1.0, whose body only the close would end: a source that may yet fail
    // verification must then not start a body without a length (a cut would look complete).
    virtual bool delimits_unknown_length() const = 0;
    // The client is gone (reset, timed out, shut down): nothing sent arrives any more.
    virtual bool closed() const = 0;
    // Who the client is, for operators' log lines.
    virtual std::string_view peer() const = 0;

    // 200 with the whole blob of `size` bytes; nullopt: length unknown (HTTP/1.1 only, see
    // delimits_unknown_length).
    virtual void send_whole(std::optional<std::uint64_t> size) = 0;
    // 206 with `span` of a blob of `size` bytes.
    virtual void send_span(const ByteSpan& span, std::uint64_t size) = 0;
    // 416: the client's Range lies outside a blob of `size` bytes.
    virtual void send_unsatisfiable(std::uint64_t size) = 0;
    // 503: the blob cannot be sent to this client now; `why` tells it what to do.
    virtual void send_unavailable(std::string_view why) = 0;

    // Body bytes after a head. False: above the output's high watermark (write again once
    // on_writable fired), or the client can receive nothing more.
    virtual bool write(std::string_view bytes) = 0;
    // Completes the answer: every byte of the head's length was written.
    virtual void finish() = 0;
    // Cuts the answer: the client sees the connection reset, never the end of a body.
    // `cause` says why (the access log's outcome).
    virtual void abort(const Error& cause) = 0;

    // `resume` runs each time the output drained after a write() returned false; `gone` once,
    // when the client goes away before finish() or abort(). Neither runs from inside a call
    // of this interface; an empty function unsets it.
    virtual void on_writable(std::function<void()> resume) = 0;
    virtual void on_closed(std::function<void()> gone) = 0;
};

}  // namespace drayage::registry
