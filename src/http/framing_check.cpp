#include "drayage/http/framing_check.hpp"

#include <algorithm>
#include <limits>

namespace drayage::http::detail {
namespace {

constexpr const char* kBareLf = "line ends in a bare LF (CRLF required)";
constexpr const char* kLoneCr = "CR not followed by LF";
constexpr const char* kNul = "NUL byte in the request head";
constexpr const char* kFold = "header line starts with whitespace (obs-fold)";
constexpr const char* kChunkEnd = "chunk data not followed by CRLF";

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// The bytes that end or spoil a line: CR, LF, NUL. A table: this runs over every byte of a head.
constexpr std::array<bool, 256> kLineStop = [] {
    std::array<bool, 256> t{};
    t['\r'] = t['\n'] = t['\0'] = true;
    return t;
}();

std::size_t skip_line_bytes(std::string_view data, std::size_t i) {
    while (i < data.size() && !kLineStop[static_cast<unsigned char>(data[i])])
        ++i;
    return i;
}

}  // namespace

bool FramingCheck::in_body() const {
    switch (state_) {
        case State::kFixedBody:
        case State::kChunkSize:
        case State::kChunkExt:
        case State::kChunkSizeCR:
        case State::kChunkData:
        case State::kChunkDataCR:
        case State::kChunkDataLF: return true;
        case State::kLine:
        case State::kLineCR:
        case State::kLineStart:
        case State::kSectionCR: return trailers_;
        default: return false;
    }
}

void FramingCheck::body(bool chunked, std::uint64_t length) {
    if (state_ != State::kAwaitBody) return;
    if (chunked) {
        state_ = State::kChunkSize;
        chunk_size_ = 0;
    } else if (length > 0) {
        state_ = State::kFixedBody;
        remaining_ = length;
    } else {
        state_ = State::kBetween;
    }
}

FramingCheck::Checked FramingCheck::check(std::string_view data) {
    Checked out;
    std::size_t i = 0;
    const std::size_t n = data.size();
    while (i < n && !failed_) {
        if (state_ == State::kAwaitBody) break;
        if (state_ == State::kFixedBody || state_ == State::kChunkData) {
            // Body bytes are http-parser's to judge; only their count matters here.
            const std::uint64_t take = std::min<std::uint64_t>(remaining_, n - i);
            i += static_cast<std::size_t>(take);
            remaining_ -= take;
            if (remaining_ > 0) break;
            if (state_ == State::kChunkData) {
                state_ = State::kChunkDataCR;
                continue;
            }
            state_ = State::kBetween;
            out.message_ended = true;
            break;
        }
        if (state_ == State::kLine || state_ == State::kRequestLine) {
            // Lines are most of a head: skip to the next byte that matters.
            const std::size_t from = i;
            i = skip_line_bytes(data, i);
            if (state_ == State::kRequestLine) keep_tail(data.substr(from, i - from));
            if (i == n) break;
        }
        const bool ends_message = step(data[i]);
        if (failed_) break;
        ++i;
        if (ends_message) {
            out.message_ended = true;
            break;
        }
    }
    out.bytes = i;
    return out;
}

bool FramingCheck::fail(const char* why) {
    failed_ = true;
    error_ = why;
    return false;
}

void FramingCheck::keep_tail(std::string_view bytes) {
    if (bytes.size() >= tail_.size()) {
        std::copy(bytes.end() - tail_.size(), bytes.end(), tail_.begin());
        return;
    }
    std::copy(tail_.begin() + bytes.size(), tail_.end(), tail_.begin());
    std::copy(bytes.begin(), bytes.end(), tail_.end() - bytes.size());
}

bool FramingCheck::version_ok() const {
    static constexpr std::string_view kPrefix = " HTTP/";
    return std::string_view(tail_.data(), kPrefix.size()) == kPrefix && is_digit(tail_[6]) &&
           tail_[7] == '.' && is_digit(tail_[8]);
}

// The bytes every line refuses, and the CR that ends it (`after_cr` comes next). Returns true
// when `c` was one of them: the state moved on, or the check failed.
bool FramingCheck::line_end(char c, State after_cr) {
    if (c == '\r') {
        state_ = after_cr;
        return true;
    }
    if (c == '\n' || c == '\0') {
        fail(c == '\n' ? kBareLf : kNul);
        return true;
    }
    return false;
}

// One byte of a line-structured part: a head, a chunk-size line, the CRLF after chunk data,
// trailers. Returns true when the byte ended a request.
bool FramingCheck::step(char c) {
    switch (state_) {
        case State::kBetween:
            if (line_end(c, State::kBetweenCR)) return false;
            state_ = State::kRequestLine;
            tail_.fill('\0');
            keep_tail(std::string_view(&c, 1));
            return false;
        case State::kBetweenCR:
            if (c != '\n') return fail(kLoneCr);
            state_ = State::kBetween;
            return false;
        case State::kRequestLine:
            if (c == '\r' && !version_ok())
                return fail("request line does not end in HTTP/<d>.<d>");
            [[fallthrough]];
        case State::kLine:
            line_end(c, State::kLineCR);  // check() stops only at CR, LF and NUL in a line
            return false;
        case State::kLineCR:
            if (c != '\n') return fail(kLoneCr);
            state_ = State::kLineStart;
            return false;
        case State::kLineStart:
            if (c == ' ' || c == '\t') return fail(kFold);
            if (line_end(c, State::kSectionCR)) return false;
            state_ = State::kLine;
            return false;
        case State::kSectionCR:
            if (c != '\n') return fail(kLoneCr);
            if (!trailers_) {
                state_ = State::kAwaitBody;
                return false;
            }
            trailers_ = false;
            state_ = State::kBetween;
            return true;
        case State::kChunkSize:
            if (int v = hex_value(c); v >= 0) {
                // Saturates: http-parser refuses a size this large before any data.
                constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
                chunk_size_ = chunk_size_ > (kMax >> 4) ? kMax : chunk_size_ * 16 + v;
                return false;
            }
            [[fallthrough]];
        case State::kChunkExt:
            if (line_end(c, State::kChunkSizeCR)) return false;
            state_ = State::kChunkExt;
            return false;
        case State::kChunkSizeCR:
            if (c != '\n') return fail(kLoneCr);
            if (chunk_size_ == 0) {
                trailers_ = true;  // the last chunk: trailers and a blank line follow
                state_ = State::kLineStart;
            } else {
                remaining_ = chunk_size_;
                state_ = State::kChunkData;
            }
            return false;
        case State::kChunkDataCR:
            if (c != '\r') return fail(kChunkEnd);
            state_ = State::kChunkDataLF;
            return false;
        case State::kChunkDataLF:
            if (c != '\n') return fail(kChunkEnd);
            state_ = State::kChunkSize;
            chunk_size_ = 0;
            return false;
        case State::kAwaitBody:
        case State::kFixedBody:
        case State::kChunkData: return false;  // check() handles these without step()
    }
    return false;
}

}  // namespace drayage::http::detail
