// RequestParser: HTTP/1.1 request parsing without sockets. Bytes in, callbacks out, pausable.
//
// It wraps Debian's http-parser (2.9) and adds what a server exposed to the internet needs on
// top: limits (request line, header bytes, header count, body size) and the framing checks that
// stop request smuggling. The owner feeds whatever bytes arrived; the parser calls back
//
//   on_request_head(Request&&)   once per request, after the blank line that ends the head;
//   on_body(string_view)         zero or more times, body bytes with framing removed (chunk
//                                sizes, extensions and trailers are consumed, never delivered);
//                                the view is valid only during the call;
//   on_message_complete()        once per request, after the last body byte (or right after the
//                                head when there is no body).
//
// Pausing: pause() may be called at any time, also from inside a callback; the feed() in progress
// then returns at once, reporting how many bytes it consumed. Unconsumed bytes must be fed again
// (first) after resume(). A paused parser consumes nothing.
//
// Errors: a malformed or over-limit request moves the parser to a failed state for good; feed()
// returns what it consumed before the error and error() says which HTTP status to answer with,
// after which the connection must be closed (the byte stream can no longer be trusted):
//
//   400  malformed syntax; conflicting framing (Content-Length with Transfer-Encoding, repeated
//        or invalid Content-Length, "chunked" not the last or repeated coding); missing or
//        repeated Host on HTTP/1.1; bad chunk syntax; what http-parser's lenient build would
//        let through and FramingCheck refuses (framing_check.hpp): a bare LF or a CR without
//        LF as a line end, obs-fold (a field line starting with whitespace), NUL in the head,
//        a request line not ending in HTTP/<d>.<d>, chunk data not followed by CRLF
//   408  never produced here (timeouts belong to the connection)
//   413  body larger than the body limit (known from Content-Length at once, or while chunks
//        arrive, before the offending bytes are delivered)
//   414  request-target longer than HttpLimits::max_request_line
//   417  Expect with anything but 100-continue
//   431  header section (all field lines, trailers included) over max_header_bytes, more than
//        max_headers fields, or over http-parser's compiled-in 80 KiB head limit
//   501  a transfer coding other than chunked; the CONNECT method
//
// Requests with Upgrade are parsed as plain requests (drayage upgrades nothing).
// Not thread-safe; one parser per connection. Never throws.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/config/config.hpp"
#include "drayage/http/framing_check.hpp"
#include "drayage/http/request.hpp"

namespace drayage::http {

struct ParseError {
    int status = 400;    // the status to answer with
    std::string reason;  // for the log and the error body, e.g. "header section too large"
};

class RequestParser {
public:
    class Callbacks {
    public:
        virtual ~Callbacks() = default;
        virtual void on_request_head(Request&& request) = 0;
        virtual void on_body(std::string_view data) = 0;
        virtual void on_message_complete() = 0;
    };

    // `limits` is copied; `callbacks` must outlive the parser.
    RequestParser(const config::HttpLimits& limits, Callbacks& callbacks);
    RequestParser(const RequestParser&) = delete;
    RequestParser& operator=(const RequestParser&) = delete;

    // Parses as much of `data` as it can; returns the number of bytes consumed. Less than
    // data.size() means paused or failed (see paused() / failed()). Empty input is a no-op (it
    // does not mean end of stream; see finish()).
    std::size_t feed(std::string_view data);

    void pause();
    void resume();
    bool paused() const { return paused_; }

    // The body limit of the current request (0: none). The effective limit is the smaller of
    // this and HttpLimits::max_body (when non-zero). Setting it below a known Content-Length
    // fails the parser with 413 at once. Reset to 0 when the next request starts.
    void set_body_limit(std::uint64_t limit);

    // The peer closed its side. Returns true when that happened between requests (a clean end);
    // false when a request was cut short, which also fails the parser with 400.
    bool finish();

    bool failed() const { return error_.has_value(); }
    const std::optional<ParseError>& error() const { return error_; }

    // Size of the current request: its head (as counted for the limits: request-target, field
    // lines, framing; a few bytes off the wire size) plus the body bytes delivered so far.
    std::uint64_t request_bytes() const { return head_bytes_ + body_bytes_; }
    std::uint64_t body_bytes() const { return body_bytes_; }
    // True from the first byte of a request until its on_message_complete.
    bool in_request() const { return in_request_; }
    // The request-target of the current request as far as received (at most max_request_line
    // bytes), for error responses made before there is a Request.
    std::string_view target_so_far() const { return url_; }
    // True between on_request_head and on_message_complete.
    bool in_body() const { return in_body_; }

private:
    static int on_message_begin_cb(http_parser* p);
    static int on_url_cb(http_parser* p, const char* at, std::size_t len);
    static int on_header_field_cb(http_parser* p, const char* at, std::size_t len);
    static int on_header_value_cb(http_parser* p, const char* at, std::size_t len);
    static int on_headers_complete_cb(http_parser* p);
    static int on_body_cb(http_parser* p, const char* at, std::size_t len);
    static int on_message_complete_cb(http_parser* p);

    int fail(int status, std::string reason);
    bool count_header_bytes(std::size_t len);
    int headers_complete();
    std::uint64_t effective_body_limit() const;

    config::HttpLimits limits_;
    Callbacks& callbacks_;
    http_parser parser_{};
    http_parser_settings settings_{};
    detail::FramingCheck framing_;
    // Bytes after the parse position that framing_ has already checked (fed, not yet taken).
    std::size_t checked_ahead_ = 0;
    bool paused_ = false;
    std::optional<ParseError> error_;

    // Per request.
    bool in_request_ = false;
    bool in_body_ = false;
    bool in_trailers_ = false;
    bool last_was_value_ = false;
    std::string url_;
    HeaderList headers_;
    std::uint64_t header_bytes_ = 0;
    std::uint64_t header_count_ = 0;
    std::uint64_t body_limit_ = 0;
    std::optional<std::uint64_t> content_length_;
    std::uint64_t body_bytes_ = 0;
    std::uint64_t head_bytes_ = 0;
};

}  // namespace drayage::http
