// A connection's output: response heads and bodies (Content-Length, chunked, raw), flow
// control, hand-off of the connection to another server, and the access log line
// (connection.hpp).
#include <event2/buffer.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <ctime>

#include "connection.hpp"
#include "drayage/http/errors.hpp"
#include "drayage/util/log.hpp"

namespace drayage::http {
namespace {

// The Date header value, formatted once per second.
const std::string& http_date() {
    static thread_local std::time_t cached_at = 0;
    static thread_local std::string cached;
    std::time_t now = std::time(nullptr);
    if (now != cached_at) {
        std::tm tm{};
        gmtime_r(&now, &tm);
        char buf[64];
        std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached.assign(buf, n);
        cached_at = now;
    }
    return cached;
}

bool is_framing_header(std::string_view name) {
    return iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
           iequals(name, "connection");
}

}  // namespace

namespace detail {

void Connection::add_output(const char* data, std::size_t len) {
    evbuffer_add(bufferevent_get_output(bev_), data, len);
    state_.bytes_sent->inc(len);
    if (current_) current_->bytes_out_ += len;
    output_added();
}

void Connection::output_added() {
    if (write_armed_) return;
    if (processing_) {
        flush_pending_ = true;  // written when processing ends, with whatever else it queues
        return;
    }
    write_armed_ = true;
    bufferevent_enable(bev_, EV_WRITE);
}

void Connection::flush_eagerly() {
    flush_pending_ = false;
    if (phase_ == Phase::kClosed || write_armed_) return;
    evbuffer* out = bufferevent_get_output(bev_);
    if (evbuffer_get_length(out) == 0) return;
    // bufferevent_sock keeps the output's start frozen outside its own writes; thaw it likewise.
    evbuffer_unfreeze(out, 1);
    evbuffer_write_atmost(out, bufferevent_getfd(bev_),
                          static_cast<ev_ssize_t>(state_.options.write_high_watermark));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0) {
        // The socket is full, or failed: libevent's write path takes over from here, with the
        // send timeout, and reports an error through event_cb.
        write_armed_ = true;
        bufferevent_enable(bev_, EV_WRITE);
        return;
    }
    output_drained_to(0);
}

bool Connection::below_high_watermark() const {
    return evbuffer_get_length(bufferevent_get_output(bev_)) < state_.options.write_high_watermark;
}

void Connection::exchange_set_body_limit(Exchange& ex, std::uint64_t limit) {
    if (&ex != current_.get() || request_complete_) return;
    parser_.set_body_limit(limit);
    if (parser_.failed()) kick();
}

void Connection::exchange_read_body(Exchange& ex) {
    if (&ex != current_.get()) return;
    if (!request_complete_ && ex.request_.expect_continue && !ex.head_sent_ && !ex.continue_sent_) {
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        ex.continue_sent_ = true;
        add_output(kContinue.data(), kContinue.size());
    }
    if (!request_complete_ && !ex.body_paused_) parser_.resume();
    kick();
}

void Connection::exchange_pause_body(Exchange& ex) {
    if (&ex != current_.get() || request_complete_ || !ex.body_requested_) return;
    parser_.pause();
    update_timer(false);
}

void Connection::exchange_resume_body(Exchange& ex) {
    if (&ex != current_.get() || request_complete_ || !ex.body_requested_) return;
    parser_.resume();
    kick();
}

void Connection::exchange_send_head(Exchange& ex, int status, HeaderList headers,
                                    std::optional<std::uint64_t> content_length) {
    std::size_t room = 0;
    for (const auto& [name, value] : headers)
        room += name.size() + value.size() + 4;
    std::string lines;
    lines.reserve(room);
    for (const auto& [name, value] : headers) {
        if (is_framing_header(name)) continue;
        lines += name;
        lines += ": ";
        lines += value;
        lines += "\r\n";
    }
    exchange_send_head_lines(ex, status, lines, content_length);
}

void Connection::exchange_send_head_lines(Exchange& ex, int status, std::string_view lines,
                                          std::optional<std::uint64_t> content_length) {
    const Request& req = ex.request_;
    ex.head_sent_ = true;
    ex.status_ = status;
    bool bodiless_status = status < 200 || status == 204 || status == 304;
    ex.no_body_ = bodiless_status || req.method == "HEAD";
    ex.content_length_ = content_length;
    // Reuse needs a request read to its end: unread body bytes would be parsed as the next
    // request. Draining them instead could take arbitrarily long; closing is bounded.
    if (!request_complete_ || !req.keep_alive || state_.shutting_down) close_after_ = true;
    if (!content_length && !bodiless_status) {
        if (req.version_minor == 0) {
            close_after_ = true;  // HTTP/1.0 has no chunked: the close delimits the body
        } else {
            ex.chunked_ = true;
        }
    }
    // Appended by hand, not with fmt: this runs for every response, and formatting was a
    // tenth of a small cache hit's instructions.
    std::string_view reason = reason_phrase(status);
    std::string_view date = http_date();
    char number[24];
    static thread_local std::string head;  // one per loop; its capacity is kept
    head.clear();
    head += "HTTP/1.1 ";
    head.append(number, std::to_chars(number, number + sizeof number, status).ptr);
    head += ' ';
    head += reason;
    head += "\r\n";
    head += lines;
    head += "Date: ";
    head += date;
    head += "\r\n";
    if (!bodiless_status) {
        if (content_length) {
            head += "Content-Length: ";
            head.append(number, std::to_chars(number, number + sizeof number, *content_length).ptr);
            head += "\r\n";
        } else if (ex.chunked_) {
            head += "Transfer-Encoding: chunked\r\n";
        }
    }
    if (close_after_) {
        head += "Connection: close\r\n";
    } else if (req.version_minor == 0) {
        head += "Connection: keep-alive\r\n";
    }
    head += "\r\n";
    add_output(head.data(), head.size());
}

bool Connection::exchange_write(Exchange& ex, std::string_view data) {
    if (!ex.head_sent_) {
        spdlog::error("http: write() before send_head() on {} {}", ex.request_.method,
                      ex.request_.path);
        return false;
    }
    if (ex.no_body_) return true;
    if (ex.content_length_) {
        std::uint64_t room = *ex.content_length_ - ex.body_sent_;
        if (data.size() > room) {
            if (!ex.overflow_logged_) {
                spdlog::error("http: response body of {} {} exceeds its Content-Length {}",
                              ex.request_.method, ex.request_.path, *ex.content_length_);
                ex.overflow_logged_ = true;
            }
            data = data.substr(0, room);
        }
    }
    if (!data.empty()) {
        if (ex.chunked_) {
            std::string size = fmt::format("{:x}\r\n", data.size());
            add_output(size.data(), size.size());
            add_output(data.data(), data.size());
            add_output("\r\n", 2);
        } else {
            add_output(data.data(), data.size());
        }
        ex.body_sent_ += data.size();
    }
    bool ok = below_high_watermark();
    if (!ok) ex.want_writable_ = true;
    return ok;
}

bool Connection::exchange_write(Exchange& ex, evbuffer* data) {
    std::size_t len = evbuffer_get_length(data);
    if (!ex.head_sent_ || ex.no_body_ || len == 0 ||
        (ex.content_length_ && *ex.content_length_ - ex.body_sent_ < len)) {
        // Unusual cases go through the copying path, which owns the checks and the logging.
        if (!ex.head_sent_ || ex.no_body_ || len == 0) {
            evbuffer_drain(data, len);
            return exchange_write(ex, std::string_view());
        }
        bool ok = true;
        while (evbuffer_get_length(data) > 0) {
            evbuffer_iovec v{};
            if (evbuffer_peek(data, -1, nullptr, &v, 1) < 1) break;
            ok = exchange_write(ex,
                                std::string_view(static_cast<const char*>(v.iov_base), v.iov_len));
            evbuffer_drain(data, v.iov_len);
        }
        return ok;
    }
    evbuffer* out = bufferevent_get_output(bev_);
    if (ex.chunked_) {
        std::string size = fmt::format("{:x}\r\n", len);
        add_output(size.data(), size.size());
    }
    evbuffer_add_buffer(out, data);
    state_.bytes_sent->inc(len);
    ex.bytes_out_ += len;
    ex.body_sent_ += len;
    output_added();
    if (ex.chunked_) add_output("\r\n", 2);
    bool ok = below_high_watermark();
    if (!ok) ex.want_writable_ = true;
    return ok;
}

void Connection::exchange_finish(Exchange& ex) {
    if (!ex.head_sent_) {
        spdlog::error("http: finish() without a response on {} {}; answering 500",
                      ex.request_.method, ex.request_.path);
        exchange_send_head(ex, 500, {}, 0);
    }
    if (ex.content_length_ && !ex.no_body_ && ex.body_sent_ < *ex.content_length_) {
        spdlog::error("http: response to {} {} ended after {} of {} bytes; closing",
                      ex.request_.method, ex.request_.path, ex.body_sent_, *ex.content_length_);
        close_now("short response body", false);
        return;
    }
    if (ex.chunked_ && !ex.no_body_) add_output("0\r\n\r\n", 5);
    ex.finished_ = true;
    response_finished(ex);
}

bool Connection::exchange_hand_off(Exchange& ex) {
    if (&ex != current_.get() || !state_.options.on_handoff || tls_ || ex.head_sent_ ||
        ex.body_requested_ || ex.finished_ || phase_ != Phase::kExchange) {
        return false;
    }
    // Finished without a response: nothing is logged or counted here; the adopting server
    // parses the request again and answers it.
    ex.finished_ = true;
    ex.outcome_ = "handed-off";
    if (evbuffer_get_length(bufferevent_get_output(bev_)) > 0) {
        // The previous response is still going out: hand off once it has all left.
        handoff_pending_ = true;
        bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
        bufferevent_disable(bev_, EV_READ);
        return true;
    }
    complete_hand_off();
    return true;
}

void Connection::complete_hand_off() {
    handoff_pending_ = false;
    evutil_socket_t fd = bufferevent_getfd(bev_);
    int copy = fd < 0 ? -1 : ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
        close_now("hand-off failed: cannot duplicate the socket");
        return;
    }
    std::string replay = std::move(head_bytes_);
    head_bytes_.clear();
    evbuffer* in = bufferevent_get_input(bev_);
    std::size_t pending = evbuffer_get_length(in);
    if (pending > 0) {
        std::size_t at = replay.size();
        replay.resize(at + pending);
        evbuffer_copyout(in, replay.data() + at, pending);
    }
    close_now("handed off", false);
    state_.options.on_handoff(copy, std::move(replay), peer_);
}

void Connection::exchange_abort(Exchange& ex) {
    if (&ex != current_.get()) return;
    reset_on_close();
    close_now("aborted by handler", false);
}

void Connection::log_exchange(Exchange& ex, int status) {
    log::AccessRecord r;
    r.peer = peer_;
    r.method = ex.request_.method;
    r.path = ex.request_.path.empty() ? std::string_view("-") : std::string_view(ex.request_.path);
    r.status = status;
    r.bytes_in = parser_.request_bytes();
    r.bytes_out = ex.bytes_out_;
    r.duration = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - ex.started_);
    r.outcome = ex.outcome_;
    r.user = ex.user_;
    log::access(r);
    requests_counter(ex.request_.method, status).inc();
}

metrics::Counter& Connection::requests_counter(const std::string& method, int status) {
    // The registry's lookup builds its key and takes a lock; a loop sees few distinct pairs.
    struct Seen {
        std::string method;
        int status;
        metrics::Counter* counter;
    };
    static thread_local std::vector<Seen> seen;
    for (const Seen& s : seen) {
        if (s.status == status && s.method == method) return *s.counter;
    }
    metrics::Counter& c = metrics::global().counter(
        "drayage_http_requests_total", "HTTP requests by method and status",
        {{"method", method}, {"status", std::to_string(status)}});
    if (seen.size() < 64) seen.push_back(Seen{method, status, &c});
    return c;
}

}  // namespace detail
}  // namespace drayage::http
