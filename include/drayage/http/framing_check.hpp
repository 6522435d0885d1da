// FramingCheck: a strict check of the line structure of requests, run by RequestParser over the
// bytes before http-parser sees them. Pure code: bytes in, a verdict out.
//
// Why: Debian's libhttp-parser is built with HTTP_PARSER_STRICT=0. It then accepts a bare LF as a
// line end, joins obs-fold continuation lines into the previous field value, takes any byte after
// a CR where CRLF belongs (after chunk data, a chunk-size line, the blank line ending a head) and
// any four letters for "HTTP" in the request line. Each is a way for drayage to read a byte stream
// differently from a proxy in front of it (request smuggling); RFC 9112 (2.2, 5.2, 7.1) lets a
// server reject them all, and this one does.
//
// What it checks, byte by byte: lines end in CRLF (no bare LF, no CR without LF, no NUL in a
// line); no field line (head or trailers) starts with whitespace; the request line ends in
// " HTTP/<d>.<d>"; chunk data is followed by exactly CRLF. What it leaves to http-parser: methods,
// tokens, field values, hex digits, lengths. It follows the framing only to know where lines are:
// after each head it stops and waits for body(), told how http-parser will read the body.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace drayage::http::detail {

class FramingCheck {
public:
    struct Checked {
        std::size_t bytes = 0;       // checked and fine, from the start of the input
        bool message_ended = false;  // the last of them ended a request (its body or trailers)
    };

    // Checks `data`, which continues the bytes checked so far. Stops early (fewer bytes than
    // data.size()) after the end of a head, until body() is called; after the last byte of a
    // request; and at a byte that breaks the rules (failed() from then on, for good; that byte
    // is not counted).
    Checked check(std::string_view data);

    // The head just checked is followed by a chunked body, or by `length` bytes (0: none).
    void body(bool chunked, std::uint64_t length);

    bool failed() const { return failed_; }
    const char* error() const { return error_; }
    // Inside a body or its trailers, as far as checked (a request cannot begin here).
    bool in_body() const;

private:
    enum class State : std::uint8_t {
        kBetween,      // before a request line: only empty lines (CRLF) may come
        kBetweenCR,    // CR of such an empty line
        kRequestLine,  // inside the request line
        kLine,         // inside a field line (head or trailers)
        kLineCR,       // CR ending a line; LF must follow
        kLineStart,    // after a line: a field line, or the CRLF ending the section
        kSectionCR,    // CR of the blank line ending a head or the trailers
        kAwaitBody,    // a head ended; body() says what follows
        kFixedBody,    // `remaining_` bytes of a Content-Length body
        kChunkSize,    // a chunk-size line: hex digits
        kChunkExt,     // the rest of a chunk-size line (extensions)
        kChunkSizeCR,  // CR ending a chunk-size line
        kChunkData,    // `remaining_` bytes of chunk data
        kChunkDataCR,  // CR after chunk data
        kChunkDataLF,  // LF after chunk data
    };

    bool step(char c);
    bool line_end(char c, State after_cr);
    bool fail(const char* why);
    void keep_tail(std::string_view bytes);
    bool version_ok() const;

    State state_ = State::kBetween;  // where the check is (or stopped, once failed)
    bool failed_ = false;
    bool trailers_ = false;  // the field lines being checked are trailers
    std::uint64_t remaining_ = 0;
    std::uint64_t chunk_size_ = 0;
    std::array<char, 9> tail_{};  // the last bytes of the request line: " HTTP/1.1"
    const char* error_ = "";
};

}  // namespace drayage::http::detail
