#include "drayage/http/parser.hpp"

#include <algorithm>
#include <cctype>
#include <climits>

namespace drayage::http {
namespace {

RequestParser& self(http_parser* p) {
    return *static_cast<RequestParser*>(p->data);
}

// RFC 9110 tchar. http-parser in its default (non-strict) build lets spaces into field names,
// so "Content-Length : 5" would frame a body that our own header scan cannot see.
bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (unsigned char c : s) {
        if (std::isalnum(c)) continue;
        if (std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) ==
            std::string_view::npos) {
            return false;
        }
    }
    return true;
}

// Splits the request-target into path and query. Absolute-form ("http://host/p?q", which
// proxies send) loses its scheme and authority so routing sees the same path as origin-form.
void split_target(const std::string& target, std::string& path, std::string& query) {
    std::string_view t = target;
    if (auto hash = t.find('#'); hash != std::string_view::npos) t = t.substr(0, hash);
    if (t.size() > 7 && (t.substr(0, 7) == "http://" || t.substr(0, 8) == "https://")) {
        std::size_t after_scheme = t.find("//") + 2;
        std::size_t slash = t.find_first_of("/?", after_scheme);
        t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
    }
    std::size_t q = t.find('?');
    path = std::string(t.substr(0, q));
    query = q == std::string_view::npos ? std::string() : std::string(t.substr(q + 1));
    if (path.empty()) path = "/";
}

}  // namespace

std::string_view Request::header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
        if (iequals(k, name)) return v;
    }
    return {};
}

RequestParser::RequestParser(const config::HttpLimits& limits, Callbacks& callbacks)
    : limits_(limits), callbacks_(callbacks) {
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
    http_parser_settings_init(&settings_);
    settings_.on_message_begin = &RequestParser::on_message_begin_cb;
    settings_.on_url = &RequestParser::on_url_cb;
    settings_.on_header_field = &RequestParser::on_header_field_cb;
    settings_.on_header_value = &RequestParser::on_header_value_cb;
    settings_.on_headers_complete = &RequestParser::on_headers_complete_cb;
    settings_.on_body = &RequestParser::on_body_cb;
    settings_.on_message_complete = &RequestParser::on_message_complete_cb;
}

std::size_t RequestParser::feed(std::string_view data) {
    std::size_t total = 0;
    while (total < data.size() && !paused_ && !error_) {
        std::string_view rest = data.substr(total);
        // http-parser sees only bytes the framing check has passed. Bytes checked in an earlier
        // call that http-parser did not take (it paused) come first and are not checked again.
        const std::size_t ahead = std::min(checked_ahead_, rest.size());
        const detail::FramingCheck::Checked checked = framing_.check(rest.substr(ahead));
        const std::size_t limit = ahead + checked.bytes;
        if (limit == 0) {
            // The next byte breaks the framing rules (or follows a head http-parser has not
            // finished, which cannot happen). Zero bytes would tell http-parser "end of input".
            fail(400, framing_.failed() ? framing_.error() : "request framing unclear");
            break;
        }
        std::size_t n = http_parser_execute(&parser_, &settings_, rest.data(), limit);
        total += n;
        checked_ahead_ = std::max(checked_ahead_, limit) - n;
        auto err = static_cast<http_errno>(HTTP_PARSER_ERRNO(&parser_));
        if (err == HPE_PAUSED) break;
        if (err != HPE_OK) {
            if (!error_) {
                // Our own callbacks set error_ before failing; anything else is http-parser's
                // verdict on the syntax.
                if (err == HPE_HEADER_OVERFLOW) {
                    error_ = ParseError{431, "request head too large"};
                } else {
                    error_ = ParseError{400, http_errno_description(err)};
                }
            }
            break;
        }
        if (n == limit && checked.message_ended && in_request_) {
            // The check saw a request end where http-parser did not: they disagree on framing.
            fail(400, "request framing unclear");
            break;
        }
        if (parser_.upgrade) {
            // http-parser stops after a request carrying Upgrade, expecting another protocol.
            // drayage upgrades nothing: carry on with the next request as HTTP/1.1.
            parser_.upgrade = 0;
            continue;
        }
        if (n == 0) break;  // cannot happen without pause or error; never spin
    }
    return total;
}

void RequestParser::pause() {
    paused_ = true;
    if (!error_) http_parser_pause(&parser_, 1);
}

void RequestParser::resume() {
    paused_ = false;
    if (!error_) http_parser_pause(&parser_, 0);
}

void RequestParser::set_body_limit(std::uint64_t limit) {
    body_limit_ = limit;
    std::uint64_t effective = effective_body_limit();
    if (effective != 0 && content_length_ && *content_length_ > effective) {
        fail(413, "request body larger than the limit");
    }
}

bool RequestParser::finish() {
    if (error_) return false;
    if (in_request_) {
        fail(400, "connection closed in the middle of a request");
        return false;
    }
    return true;
}

std::uint64_t RequestParser::effective_body_limit() const {
    if (limits_.max_body == 0) return body_limit_;
    if (body_limit_ == 0) return limits_.max_body;
    return std::min(body_limit_, limits_.max_body);
}

int RequestParser::fail(int status, std::string reason) {
    if (!error_) error_ = ParseError{status, std::move(reason)};
    return -1;
}

bool RequestParser::count_header_bytes(std::size_t len) {
    header_bytes_ += len;
    if (header_bytes_ > limits_.max_header_bytes) {
        fail(431, "header section too large");
        return false;
    }
    return true;
}

int RequestParser::on_message_begin_cb(http_parser* p) {
    RequestParser& s = self(p);
    // The check is ahead of http-parser, but never past the head of the request it starts.
    if (s.framing_.in_body()) return s.fail(400, "request framing unclear");
    s.in_request_ = true;
    s.in_body_ = false;
    s.in_trailers_ = false;
    s.last_was_value_ = false;
    s.url_.clear();
    s.headers_.clear();
    s.header_bytes_ = 0;
    s.header_count_ = 0;
    s.body_limit_ = 0;
    s.content_length_.reset();
    s.body_bytes_ = 0;
    s.head_bytes_ = 0;
    return 0;
}

int RequestParser::on_url_cb(http_parser* p, const char* at, std::size_t len) {
    RequestParser& s = self(p);
    if (s.url_.size() + len > s.limits_.max_request_line) {
        // Keep the allowed prefix: the error response still needs to know if this was /v2/.
        s.url_.append(at, s.limits_.max_request_line - s.url_.size());
        return s.fail(414, "request-target too long");
    }
    s.url_.append(at, len);
    return 0;
}

int RequestParser::on_header_field_cb(http_parser* p, const char* at, std::size_t len) {
    RequestParser& s = self(p);
    // ": " and CRLF count too: the limit is on the bytes of the header section.
    if (!s.count_header_bytes(len + (s.last_was_value_ ? 4 : 0))) return -1;
    if (s.last_was_value_ || s.headers_.empty()) {
        if (++s.header_count_ > s.limits_.max_headers) return s.fail(431, "too many header fields");
        s.last_was_value_ = false;
        if (s.in_trailers_) {
            // Trailers are counted against the limits but not kept: nothing in drayage reads
            // them, and keeping them would let a client grow memory after the head.
            s.headers_.clear();
        }
        s.headers_.emplace_back(std::string(at, len), std::string());
    } else {
        s.headers_.back().first.append(at, len);
    }
    return 0;
}

int RequestParser::on_header_value_cb(http_parser* p, const char* at, std::size_t len) {
    RequestParser& s = self(p);
    if (!s.count_header_bytes(len)) return -1;
    if (s.headers_.empty()) return s.fail(400, "header value without a name");
    s.headers_.back().second.append(at, len);
    s.last_was_value_ = true;
    return 0;
}

int RequestParser::on_headers_complete_cb(http_parser* p) {
    return self(p).headers_complete();
}

int RequestParser::headers_complete() {
    // The framing check stopped at the end of this head: tell it how http-parser reads the body.
    framing_.body((parser_.flags & F_CHUNKED) != 0,
                  parser_.content_length == ULLONG_MAX ? 0 : parser_.content_length);
    Request r;
    r.method = http_method_str(static_cast<http_method>(parser_.method));
    if (parser_.method == HTTP_CONNECT) return fail(501, "CONNECT is not supported");
    r.version_major = parser_.http_major;
    r.version_minor = parser_.http_minor;
    if (r.version_major != 1) return fail(400, "unsupported HTTP version");
    r.target = url_;  // url_ stays until the next request, for error responses
    split_target(r.target, r.path, r.query);

    int hosts = 0;
    int content_lengths = 0;
    bool has_te = false;
    int chunked_count = 0;
    bool chunked_last = false;
    bool unknown_coding = false;
    for (auto& [name, value] : headers_) {
        if (!is_token(name)) return fail(400, "invalid header field name");
        value = std::string(text::trim_ows(value));
        if (iequals(name, "host")) {
            ++hosts;
        } else if (iequals(name, "content-length")) {
            ++content_lengths;
        } else if (iequals(name, "transfer-encoding")) {
            has_te = true;
            std::string_view rest = value;
            while (true) {
                std::size_t comma = rest.find(',');
                std::string_view coding = text::trim_ows(rest.substr(0, comma));
                if (!coding.empty()) {
                    if (iequals(coding, "chunked")) {
                        ++chunked_count;
                        chunked_last = true;
                    } else {
                        unknown_coding = true;
                        chunked_last = false;
                    }
                }
                if (comma == std::string_view::npos) break;
                rest.remove_prefix(comma + 1);
            }
        } else if (iequals(name, "expect")) {
            if (!iequals(value, "100-continue")) return fail(417, "unsupported expectation");
            r.expect_continue = r.version_minor >= 1;
        }
    }
    if (r.version_minor >= 1 && hosts != 1) {
        return fail(400, hosts == 0 ? "missing Host header" : "repeated Host header");
    }
    if (content_lengths > 1) return fail(400, "repeated Content-Length");
    if (has_te) {
        // Both framings at once is the classic smuggling vector (RFC 9112 6.3): refuse.
        if (content_lengths > 0) return fail(400, "both Content-Length and Transfer-Encoding");
        if (r.version_minor == 0) return fail(400, "Transfer-Encoding on HTTP/1.0");
        if (unknown_coding) return fail(501, "unsupported transfer coding");
        if (chunked_count != 1 || !chunked_last) return fail(400, "invalid Transfer-Encoding");
        if ((parser_.flags & F_CHUNKED) == 0) return fail(400, "invalid Transfer-Encoding");
        r.chunked = true;
    } else if (content_lengths == 1) {
        if ((parser_.flags & F_CONTENTLENGTH) == 0) return fail(400, "invalid Content-Length");
        r.content_length = parser_.content_length;
        content_length_ = parser_.content_length;
        std::uint64_t limit = effective_body_limit();
        if (limit != 0 && *r.content_length > limit) {
            return fail(413, "request body larger than the limit");
        }
    }
    r.keep_alive = http_should_keep_alive(&parser_) != 0;
    // "METHOD SP target SP HTTP/1.x CRLF", the field lines and the blank line.
    head_bytes_ = r.method.size() + r.target.size() + 12 + header_bytes_ + 4;
    r.headers = std::move(headers_);
    headers_.clear();
    last_was_value_ = false;
    in_trailers_ = true;
    in_body_ = r.has_body();
    callbacks_.on_request_head(std::move(r));
    return error_ ? -1 : 0;
}

int RequestParser::on_body_cb(http_parser* p, const char* at, std::size_t len) {
    RequestParser& s = self(p);
    std::uint64_t limit = s.effective_body_limit();
    if (limit != 0 && s.body_bytes_ + len > limit) {
        return s.fail(413, "request body larger than the limit");
    }
    s.body_bytes_ += len;
    s.callbacks_.on_body(std::string_view(at, len));
    return s.error_ ? -1 : 0;
}

int RequestParser::on_message_complete_cb(http_parser* p) {
    RequestParser& s = self(p);
    s.in_request_ = false;
    s.in_body_ = false;
    s.headers_.clear();
    s.callbacks_.on_message_complete();
    return s.error_ ? -1 : 0;
}

}  // namespace drayage::http
