#include "connection.hpp"

#include <event2/buffer.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <charconv>
#include <ctime>
#include <exception>
#include <iterator>
#include <utility>

#include "drayage/http/errors.hpp"
#include "drayage/util/log.hpp"

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

// Runs a handler callback kept in `slot`. It is moved out for the call so that the handler may
// replace it, or finish the exchange (which drops every callback), from inside without
// destroying the function that is running; it is put back afterwards unless either happened.
// An exception from a handler is contained here: it must not unwind through libevent.
template <typename Sig, typename... Args>
bool run_callback(Exchange& ex, std::function<Sig>& slot, bool restore, Args&&... args) {
    if (!slot) return true;
    std::function<Sig> fn = std::move(slot);
    slot = nullptr;
    bool ok = true;
    try {
        fn(std::forward<Args>(args)...);
    } catch (const std::exception& e) {
        spdlog::error("http handler callback threw for {} {}: {}", ex.request().method,
                      ex.request().path, e.what());
        ok = false;
    } catch (...) {
        spdlog::error("http handler callback threw for {} {}", ex.request().method,
                      ex.request().path);
        ok = false;
    }
    if (!ok) {
        // State unknown after a throw: cut this exchange rather than carry on.
        if (!ex.finished() && !ex.closed()) ex.abort();
        return false;
    }
    if (restore && !slot && !ex.finished() && !ex.closed()) slot = std::move(fn);
    return ok;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Exchange: thin handle; the connection does the work while it is attached.

Exchange::Exchange(detail::Connection* connection, Request request)
    : conn_(connection), request_(std::move(request)), started_(std::chrono::steady_clock::now()) {}

Exchange::~Exchange() = default;

void Exchange::set_body_limit(std::uint64_t limit) {
    body_limit_ = limit;
    if (conn_ != nullptr) conn_->exchange_set_body_limit(*this, limit);
}

void Exchange::read_body(BodyHandlers handlers) {
    if (conn_ == nullptr || body_requested_ || finished_) return;
    body_requested_ = true;
    body_ = std::move(handlers);
    conn_->exchange_read_body(*this);
}

void Exchange::pause_body() {
    body_paused_ = true;
    if (conn_ != nullptr) conn_->exchange_pause_body(*this);
}

void Exchange::resume_body() {
    body_paused_ = false;
    if (conn_ != nullptr) conn_->exchange_resume_body(*this);
}

bool Exchange::delimits_unknown_length() const {
    return request_.version_minor >= 1 || request_.method == "HEAD";
}

void Exchange::send_head(int status, HeaderList headers,
                         std::optional<std::uint64_t> content_length) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    conn_->exchange_send_head(*this, status, std::move(headers), content_length);
}

void Exchange::send_head_lines(int status, std::string_view header_lines,
                               std::optional<std::uint64_t> content_length) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    conn_->exchange_send_head_lines(*this, status, header_lines, content_length);
}

bool Exchange::write(std::string_view data) {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_write(*this, data);
}

bool Exchange::hand_off() {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_hand_off(*this);
}

bool Exchange::write(evbuffer* data) {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_write(*this, data);
}

void Exchange::on_writable(std::function<void()> callback) {
    if (!finished_ && !closed_) on_writable_ = std::move(callback);
}

void Exchange::finish() {
    if (conn_ == nullptr || finished_) return;
    conn_->exchange_finish(*this);
}

void Exchange::respond(int status, HeaderList headers, std::string body) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    std::uint64_t size = body.size();
    send_head(status, std::move(headers), size);
    write(std::string_view(body));
    finish();
}

void Exchange::abort() {
    if (conn_ != nullptr) conn_->exchange_abort(*this);
}

void Exchange::on_closed(std::function<void()> callback) {
    if (!finished_ && !closed_) on_closed_ = std::move(callback);
}

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
// Input

void Connection::read_cb(bufferevent*, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    if (self->phase_ == Phase::kLinger) {
        evbuffer* in = bufferevent_get_input(self->bev_);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    // libevent sizes its read by FIONREAD: a read short of its cap took all there was.
    static constexpr std::size_t kLibeventMaxRead = 4096;  // EVBUFFER_MAX_READ in 2.1
    std::size_t have = evbuffer_get_length(bufferevent_get_input(self->bev_));
    if (have < self->input_after_process_ ||
        have - self->input_after_process_ >= kLibeventMaxRead) {
        self->read_ahead();
    }
    self->process_input();
}

void Connection::read_ahead() {
    // libevent 2.1 reads at most 4 KiB per readiness event (EVBUFFER_MAX_READ), which held a
    // body upload to ~150 MB/s here. After its read, take what else the socket holds, up to the
    // read watermark, in one large read. EOF and errors are left to libevent's next read.
    // Plain sockets only: a TLS bufferevent must do its own reads.
    if (tls_) return;  // the socket holds ciphertext: only OpenSSL may read it
    evbuffer* in = bufferevent_get_input(bev_);
    std::size_t have = evbuffer_get_length(in);
    std::size_t cap = state_.options.read_buffer;
    evutil_socket_t fd = bufferevent_getfd(bev_);
    if (fd < 0 || have >= cap) return;
    // bufferevent_sock keeps the input's end frozen outside its own reads; thaw it the same way.
    evbuffer_unfreeze(in, 0);
    read_into(in, fd, cap - have);
    evbuffer_freeze(in, 0);
}

void Connection::read_into(evbuffer* in, evutil_socket_t fd, std::size_t max) {
    evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(in, static_cast<ev_ssize_t>(max), v, 2);
    if (nv <= 0) return;
    iovec iov[2];
    for (int i = 0; i < nv; ++i) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    ssize_t n = ::readv(fd, iov, nv);
    if (n <= 0) {
        evbuffer_commit_space(in, v, 0);
        return;
    }
    auto left = static_cast<std::size_t>(n);
    int used = 0;
    for (; used < nv && left > 0; ++used) {
        if (v[used].iov_len > left) v[used].iov_len = left;
        left -= v[used].iov_len;
    }
    evbuffer_commit_space(in, v, used);
}

void Connection::process_input() {
    // Handler code runs inside; anything it does that needs more parsing just asks for another
    // round instead of re-entering the parser.
    if (processing_) {
        reprocess_ = true;
        return;
    }
    processing_ = true;
    do {
        reprocess_ = false;
        process_step();
    } while (reprocess_ && phase_ != Phase::kClosed);
    processing_ = false;
    input_after_process_ = evbuffer_get_length(bufferevent_get_input(bev_));
    if (flush_pending_) flush_eagerly();
}

void Connection::process_step() {
    // Only these two phases parse; a closing connection has answered its last request already.
    if (phase_ != Phase::kHead && phase_ != Phase::kExchange) return;
    if (phase_ == Phase::kHead && parser_.paused() && !current_) parser_.resume();
    evbuffer* in = bufferevent_get_input(bev_);
    bool progressed = false;
    while ((phase_ == Phase::kHead || phase_ == Phase::kExchange) && !parser_.paused() &&
           !parser_.failed()) {
        std::size_t len = evbuffer_get_length(in);
        if (len == 0) break;
        evbuffer_iovec v{};
        if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
        const bool in_head = phase_ == Phase::kHead;
        std::size_t n =
            parser_.feed(std::string_view(static_cast<const char*>(v.iov_base), v.iov_len));
        if (phase_ == Phase::kClosed) return;
        if (in_head && state_.options.on_handoff && n > 0) {
            // Kept for a hand-off; the parser stops at the end of the head, so no body is here.
            head_bytes_.append(static_cast<const char*>(v.iov_base), n);
        }
        if (n > 0) {
            evbuffer_drain(in, n);
            state_.bytes_received->inc(n);
            progressed = true;
        }
        if (n == 0 && !parser_.paused() && !parser_.failed()) break;  // defensive: no spinning
    }
    if (parser_.failed()) {
        handle_parse_error();
        return;
    }
    if (dispatch_pending_) {
        dispatch();
        if (phase_ == Phase::kClosed) return;
    }
    update_timer(progressed);
    if (peer_eof_ && evbuffer_get_length(in) == 0 && !parser_.paused()) {
        // The client sent everything it will send and the parser wants more.
        if (phase_ == Phase::kHead) {
            if (!parser_.finish()) {
                close_now("peer closed mid-request");
            } else {
                close_now("peer closed");
            }
        } else if (phase_ == Phase::kExchange && !request_complete_) {
            close_now("peer closed mid-body");
        }
    }
}

void Connection::on_request_head(Request&& request) {
    request.peer = peer_;
    current_ = std::shared_ptr<Exchange>(new Exchange(this, std::move(request)));
    phase_ = Phase::kExchange;
    request_complete_ = false;
    dispatch_pending_ = true;
    // With a body, stop here: the handler decides whether and when it is read. Without one,
    // on_message_complete follows at once and pauses there, holding back pipelined requests.
    if (current_->request_.has_body()) parser_.pause();
}

void Connection::on_body(std::string_view data) {
    if (!current_ || current_->finished_) return;  // finished early: drop the rest
    std::shared_ptr<Exchange> ex = current_;
    run_callback(*ex, ex->body_.on_data, true, data);
    if (phase_ == Phase::kClosed) parser_.pause();
}

void Connection::on_message_complete() {
    request_complete_ = true;
    parser_.pause();
    if (current_ && current_->body_requested_ && !current_->body_done_ && !dispatch_pending_) {
        std::shared_ptr<Exchange> ex = current_;
        ex->body_done_ = true;
        run_callback(*ex, ex->body_.on_end, false);
    }
}

void Connection::dispatch() {
    dispatch_pending_ = false;
    std::shared_ptr<Exchange> ex = current_;
    if (!ex) return;
    if (state_.shutting_down) close_after_ = true;
    try {
        if (state_.handler) {
            state_.handler(ex);
        } else {
            send_error(ex, 404, "no handler");
        }
    } catch (const std::exception& e) {
        spdlog::error("http handler threw for {} {}: {}", ex->request_.method, ex->request_.path,
                      e.what());
        if (!ex->head_sent_) {
            send_error(ex, 500, "internal error");
        } else if (!ex->finished_) {
            ex->abort();
        }
    } catch (...) {
        spdlog::error("http handler threw for {} {}", ex->request_.method, ex->request_.path);
        if (!ex->head_sent_) {
            send_error(ex, 500, "internal error");
        } else if (!ex->finished_) {
            ex->abort();
        }
    }
    // Held only here and by the connection: nobody can ever finish it. Answer rather than leave
    // the client waiting for a timeout.
    if (current_ == ex && ex.use_count() == 2 && !ex->finished_) {
        spdlog::error("http handler dropped {} {} without finishing it", ex->request_.method,
                      ex->request_.path);
        if (!ex->head_sent_) {
            send_error(ex, 500, "request dropped by its handler");
        } else {
            close_now("response dropped by its handler", false);
        }
    }
}

std::shared_ptr<Exchange> Connection::error_exchange() {
    // An error before a request head was complete: answer on a stand-in exchange so the error
    // is logged and counted like any other request.
    Request r;
    r.method = "-";
    r.peer = peer_;
    r.keep_alive = false;
    // What arrived of the target decides between a Registry API error body and plain text.
    r.target = std::string(parser_.target_so_far());
    r.path = r.target.substr(0, r.target.find('?'));
    current_ = std::shared_ptr<Exchange>(new Exchange(this, std::move(r)));
    phase_ = Phase::kExchange;
    request_complete_ = false;
    return current_;
}

void Connection::handle_parse_error() {
    const ParseError& err = *parser_.error();
    int status = err.status;
    std::string reason = err.reason;
    spdlog::debug("http {}: bad request ({}): {}", peer_, status, reason);
    std::shared_ptr<Exchange> ex = current_;
    if (!ex) ex = error_exchange();
    if (ex->finished_) return;
    if (ex->body_requested_ && !ex->body_done_) {
        ex->body_done_ = true;
        run_callback(*ex, ex->body_.on_error, false, make_error("body", reason, status));
        if (phase_ == Phase::kClosed || ex->finished_) return;
    }
    if (!ex->head_sent_) {
        send_error(ex, status, reason);
    }
    // Otherwise the handler's response is under way; it has "Connection: close" (the body was
    // not complete at send_head) and the connection closes when it finishes.
}

void Connection::send_error(const std::shared_ptr<Exchange>& ex, int status,
                            const std::string& reason) {
    const std::string& path = ex->request_.path.empty() ? ex->request_.target : ex->request_.path;
    close_after_ = close_after_ || status >= 400;
    if (path.rfind("/v2/", 0) == 0 || path == "/v2") {
        respond_registry_error(*ex, status, registry_code_for_status(status), reason);
    } else {
        ex->respond(status, {{"Content-Type", "text/plain; charset=utf-8"}},
                    fmt::format("{} {}: {}\n", status, reason_phrase(status), reason));
    }
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
// Output

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
