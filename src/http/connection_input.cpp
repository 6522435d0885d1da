// A connection's input: reading the socket, parsing requests, dispatching each to the handler,
// and answering parse errors (connection.hpp).
#include <event2/buffer.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/uio.h>

#include "connection.hpp"
#include "drayage/http/errors.hpp"

namespace drayage::http::detail {

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

}  // namespace drayage::http::detail
