// A connection's lifecycle: start, close, reap and kick, its timer, the end of each response
// (the next request, or flush, linger and close) and socket events (connection.hpp).
#include "connection.hpp"

#include <event2/buffer.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <utility>

namespace drayage::http {
namespace {

// How long a closing connection keeps swallowing unread input after its last response, so that
// a client still sending a body sees the response instead of a reset.
constexpr config::Millis kLingerTime{2'000};

timeval to_timeval(config::Millis ms) {
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
    return tv;
}

}  // namespace

namespace detail {

// ---------------------------------------------------------------------------------------------
// Connection lifecycle

Connection::Connection(Server::State& state, bufferevent* bev, std::string peer, bool tls)
    : state_(state),
      bev_(bev),
      peer_(std::move(peer)),
      parser_(state.options.limits, *this),
      tls_(tls) {
    timer_ = evtimer_new(state_.base, &Connection::timer_cb, this);
    kick_ = event_new(state_.base, -1, 0, &Connection::kick_cb, this);
    reap_ = event_new(state_.base, -1, 0, &Connection::reap_cb, this);
    state_.open_connections->add(1);
    ++*state_.options.connection_count;
}

Connection::~Connection() {
    if (current_) close_now("server destroyed", false);
    event_free(timer_);
    event_free(kick_);
    event_free(reap_);
    if (bev_ != nullptr) bufferevent_free(bev_);
    state_.open_connections->add(-1);
    --*state_.options.connection_count;
}

void Connection::start() {
    const ServerOptions& o = state_.options;
    bufferevent_setcb(bev_, &Connection::read_cb, &Connection::write_cb, &Connection::event_cb,
                      this);
    // Reading stops by itself once this much input waits unparsed: that bounds pipelined input
    // and turns a paused body into TCP backpressure.
    bufferevent_setwatermark(bev_, EV_READ, 0, o.read_buffer);
    bufferevent_setwatermark(bev_, EV_WRITE, o.write_low_watermark, 0);
    bufferevent_set_max_single_read(bev_, o.read_buffer);
    bufferevent_set_max_single_write(bev_, o.write_high_watermark);
    // The send timeout is libevent's write timeout: it only runs while output is pending, and
    // restarts whenever the client takes some bytes.
    timeval send_tv = to_timeval(o.limits.send_timeout);
    bufferevent_set_timeouts(bev_, nullptr, &send_tv);
    // A TLS bufferevent writes through OpenSSL, so its write event simply stays on. (A new
    // bufferevent starts write-enabled.)
    write_armed_ = tls_;
    bufferevent_enable(bev_, tls_ ? EV_READ | EV_WRITE : EV_READ);
    if (!tls_) bufferevent_disable(bev_, EV_WRITE);
    update_timer(false);
}

void Connection::start_with_input(std::string replay) {
    start();
    evbuffer* in = bufferevent_get_input(bev_);
    evbuffer_unfreeze(in, 0);
    evbuffer_add(in, replay.data(), replay.size());
    evbuffer_freeze(in, 0);
    process_input();
}

void Connection::on_server_shutdown() {
    if (phase_ == Phase::kHead && !parser_.in_request() &&
        evbuffer_get_length(bufferevent_get_input(bev_)) == 0) {
        close_now("shutdown: idle");
        return;
    }
    close_after_ = true;
}

void Connection::close_now(const char* why, bool notify) {
    if (phase_ == Phase::kClosed) return;
    spdlog::debug("http connection {} closed: {}", peer_, why);
    if (current_ && current_->head_sent_ && !current_->finished_) reset_on_close();
    phase_ = Phase::kClosed;
    evtimer_del(timer_);
    event_del(kick_);
    bufferevent_disable(bev_, EV_READ | EV_WRITE);
    bufferevent_setcb(bev_, nullptr, nullptr, nullptr, nullptr);
    parser_.pause();
    if (current_) {
        std::shared_ptr<Exchange> ex = std::move(current_);
        current_.reset();
        ex->conn_ = nullptr;
        if (!ex->finished_) {
            log_exchange(*ex, 499);
            ex->closed_ = true;
            if (notify) {
                if (ex->body_requested_ && !ex->body_done_) {
                    ex->body_done_ = true;
                    run_callback(*ex, ex->body_.on_error, false,
                                 make_error("closed", "connection closed before the body ended"));
                }
                run_callback(*ex, ex->on_closed_, false);
            }
        }
        retire(*ex);
    }
    event_active(reap_, EV_TIMEOUT, 0);
}

void Connection::reset_on_close() {
    // A response cut short must not end the way a complete one does. The FIN of an orderly
    // close would end a close-delimited body (HTTP/1.0, length unknown) as if it were whole;
    // with SO_LINGER 0 the close sends RST instead, and the client sees an error.
    evutil_socket_t fd = bufferevent_getfd(bev_);
    if (fd < 0) return;
    linger off{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
}

void Connection::retire(Exchange& ex) {
    ex.body_ = BodyHandlers{};
    ex.on_writable_ = nullptr;
    ex.on_closed_ = nullptr;
}

void Connection::reap_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    self->state_.server->reap(self);  // deletes self
}

void Connection::kick() {
    if (phase_ != Phase::kClosed) event_active(kick_, EV_TIMEOUT, 0);
}

void Connection::kick_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    // A body that ended before read_body() (no body, or set_body_limit made it fail) is
    // reported from here, on the loop, never from inside read_body().
    if (self->current_ && self->current_->body_requested_ && !self->current_->body_done_ &&
        self->request_complete_) {
        std::shared_ptr<Exchange> ex = self->current_;
        ex->body_done_ = true;
        run_callback(*ex, ex->body_.on_end, false);
    }
    self->process_input();
}

// ---------------------------------------------------------------------------------------------
// Timers

void Connection::arm(Timer kind, config::Millis after) {
    timer_kind_ = kind;
    timeval tv = to_timeval(after);
    evtimer_add(timer_, &tv);
}

void Connection::update_timer(bool progressed) {
    const config::HttpLimits& l = state_.options.limits;
    switch (phase_) {
        case Phase::kHead:
            if (parser_.in_request() || evbuffer_get_length(bufferevent_get_input(bev_)) > 0) {
                // The whole head must arrive within header_timeout of its first byte; trickling
                // bytes does not extend it (slowloris).
                if (timer_kind_ != Timer::kHeader) arm(Timer::kHeader, l.header_timeout);
            } else if (timer_kind_ != Timer::kIdle) {
                arm(Timer::kIdle, first_request_ ? l.header_timeout : l.idle_timeout);
            }
            break;
        case Phase::kExchange:
            if (current_ && current_->body_requested_ && !current_->body_paused_ &&
                !request_complete_) {
                if (progressed || timer_kind_ != Timer::kBody) arm(Timer::kBody, l.body_timeout);
            } else if (timer_kind_ != Timer::kNone) {
                evtimer_del(timer_);
                timer_kind_ = Timer::kNone;
            }
            break;
        case Phase::kFlushClose:
            if (timer_kind_ != Timer::kNone) {
                evtimer_del(timer_);
                timer_kind_ = Timer::kNone;
            }
            break;
        case Phase::kLinger:
        case Phase::kClosed: break;
    }
}

void Connection::timer_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    Timer kind = self->timer_kind_;
    self->timer_kind_ = Timer::kNone;
    switch (kind) {
        case Timer::kIdle: self->close_now("idle timeout"); break;
        case Timer::kHeader: {
            auto ex = self->error_exchange();
            self->parser_.pause();
            self->send_error(ex, 408, "request head not received in time");
            break;
        }
        case Timer::kBody: {
            std::shared_ptr<Exchange> ex = self->current_;
            if (!ex) break;
            self->parser_.pause();
            self->close_after_ = true;
            if (!ex->body_done_) {
                ex->body_done_ = true;
                run_callback(*ex, ex->body_.on_error, false,
                             make_error("timeout", "request body stalled", 408));
            }
            if (self->phase_ == Phase::kClosed || ex->finished_) break;
            if (!ex->head_sent_) {
                self->send_error(ex, 408, "request body not received in time");
            } else {
                self->close_now("body timeout");
            }
            break;
        }
        case Timer::kLinger: self->close_now("linger done"); break;
        case Timer::kNone: break;
    }
}

// ---------------------------------------------------------------------------------------------
// The end of a response, and socket events

void Connection::response_finished(Exchange& ex) {
    log_exchange(ex, ex.status_);
    ex.conn_ = nullptr;
    retire(ex);
    std::shared_ptr<Exchange> keep = std::move(current_);
    current_.reset();
    dispatch_pending_ = false;
    if (close_after_ || state_.shutting_down) {
        flush_and_close();
        return;
    }
    // Next request: parsing resumes from the loop, not from inside this (handler) call.
    phase_ = Phase::kHead;
    head_bytes_.clear();
    first_request_ = false;
    timer_kind_ = Timer::kNone;
    evtimer_del(timer_);
    if (processing_) {
        reprocess_ = true;  // finished inside process_input(), which parses on when it returns
    } else {
        kick();
    }
}

void Connection::flush_and_close() {
    phase_ = Phase::kFlushClose;
    update_timer(false);
    bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
    if (evbuffer_get_length(bufferevent_get_output(bev_)) == 0) start_linger();
}

void Connection::start_linger() {
    phase_ = Phase::kLinger;
    evutil_socket_t fd = bufferevent_getfd(bev_);
    if (fd >= 0) ::shutdown(fd, SHUT_WR);
    evbuffer* in = bufferevent_get_input(bev_);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (peer_eof_) {
        close_now("response sent");
        return;
    }
    bufferevent_enable(bev_, EV_READ);
    arm(Timer::kLinger, kLingerTime);
}

void Connection::write_cb(bufferevent*, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    self->output_drained_to(evbuffer_get_length(bufferevent_get_output(self->bev_)));
    // libevent has taken its write event off once the output is empty; clear "enabled" too, so
    // that the next response is written eagerly again.
    if (self->write_armed_ && !self->tls_ && self->phase_ != Phase::kClosed &&
        evbuffer_get_length(bufferevent_get_output(self->bev_)) == 0) {
        self->write_armed_ = false;
        bufferevent_disable(self->bev_, EV_WRITE);
    }
}

void Connection::output_drained_to(std::size_t pending) {
    if (handoff_pending_) {
        if (pending == 0) complete_hand_off();
        return;
    }
    if (phase_ == Phase::kFlushClose) {
        if (pending == 0) start_linger();
        return;
    }
    std::shared_ptr<Exchange> ex = current_;
    if (ex && ex->want_writable_ && pending <= state_.options.write_low_watermark) {
        ex->want_writable_ = false;
        run_callback(*ex, ex->on_writable_, true);
    }
}

void Connection::event_cb(bufferevent*, short what, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    if (what & BEV_EVENT_TIMEOUT) {
        self->close_now("send timeout: client reads nothing");
    } else if (what & BEV_EVENT_ERROR) {
        self->close_now("socket error");
    } else if (what & BEV_EVENT_EOF) {
        self->peer_eof_ = true;
        if (self->phase_ == Phase::kLinger || self->phase_ == Phase::kFlushClose) {
            if (self->phase_ == Phase::kLinger) self->close_now("peer closed after response");
            return;
        }
        if (self->tls_ && self->phase_ == Phase::kExchange) {
            // bufferevent_openssl stops writing as well once it sees EOF, so a TLS half-close
            // cannot be answered: the response would hang until send_timeout.
            self->close_now("peer closed the TLS connection");
            return;
        }
        if (self->phase_ == Phase::kExchange && self->request_complete_) {
            // Half-close after a complete request: answer it, then close.
            self->close_after_ = true;
            return;
        }
        self->process_input();
    }
}

}  // namespace detail
}  // namespace drayage::http
