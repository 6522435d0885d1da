// Internal: one client connection of http::Server. Not part of the module's interface.
//
// Ownership: Server::State owns every Connection (unique_ptr in `connections`). A Connection owns
// its bufferevent, its three events and the current Exchange's shared_ptr; the Exchange points
// back with a raw pointer that close_now() / response_finished() clear, so a handler holding an
// Exchange after the connection died touches nothing freed. A Connection is never deleted from
// inside its own callbacks: close_now() only disables I/O and activates `reap_`, and the Server
// frees it from that event, on a clean stack.
//
// Its jobs, by file:
//   connection.cpp         lifecycle: start, close, reap, kick, timers, the end of a response
//                          (next request, or flush, linger and close) and socket events
//   connection_input.cpp   reading and parsing input, dispatching a request to the handler,
//                          parse errors
//   connection_output.cpp  writing: response heads, bodies (Content-Length, chunked, raw),
//                          flow control, hand-off of the connection, the access log line
//   exchange.cpp           Exchange, the handler's thin handle onto the connection
#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "drayage/http/parser.hpp"
#include "drayage/http/server.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::http {

struct Server::State {
    Server* server = nullptr;
    event_base* base = nullptr;
    ServerOptions options;
    Handler handler;
    evconnlistener* listener = nullptr;
    std::map<detail::Connection*, std::unique_ptr<detail::Connection>> connections;
    bool shutting_down = false;
    std::function<void()> done;
    event* deadline = nullptr;  // shutdown grace
    event* done_event = nullptr;
    // accept() failed for want of descriptors (or memory): the listener is off until a
    // connection of this server closes or `accept_resume` fires.
    bool accept_paused = false;
    event* accept_resume = nullptr;
    metrics::Counter* bytes_received = nullptr;
    metrics::Counter* bytes_sent = nullptr;
    metrics::Gauge* open_connections = nullptr;
};

namespace detail {

class Connection final : public RequestParser::Callbacks {
public:
    // Takes ownership of `bev` (a connected socket bufferevent, or a bufferevent_openssl with
    // `tls`: then nothing reads the fd directly, see read_ahead()).
    Connection(Server::State& state, bufferevent* bev, std::string peer, bool tls = false);
    ~Connection() override;
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    void start();
    // start(), with `replay` already read (a connection handed over by another server).
    void start_with_input(std::string replay);
    // Server shutdown: close now when idle, otherwise close after the current response.
    void on_server_shutdown();
    // Closes at once. `notify` false: no handler callbacks (server destruction). A response
    // whose head went out and that has not finished is cut with RST (reset_on_close).
    void close_now(const char* why, bool notify = true);

    // Called by Exchange.
    void exchange_set_body_limit(Exchange& ex, std::uint64_t limit);
    void exchange_read_body(Exchange& ex);
    void exchange_pause_body(Exchange& ex);
    void exchange_resume_body(Exchange& ex);
    void exchange_send_head(Exchange& ex, int status, HeaderList headers,
                            std::optional<std::uint64_t> content_length);
    void exchange_send_head_lines(Exchange& ex, int status, std::string_view lines,
                                  std::optional<std::uint64_t> content_length);
    bool exchange_write(Exchange& ex, std::string_view data);
    bool exchange_write(Exchange& ex, evbuffer* data);
    void exchange_finish(Exchange& ex);
    void exchange_abort(Exchange& ex);
    bool exchange_hand_off(Exchange& ex);
    void complete_hand_off();

    // RequestParser::Callbacks
    void on_request_head(Request&& request) override;
    void on_body(std::string_view data) override;
    void on_message_complete() override;

private:
    enum class Phase { kHead, kExchange, kFlushClose, kLinger, kClosed };
    enum class Timer { kNone, kIdle, kHeader, kBody, kLinger };

    static void read_cb(bufferevent* bev, void* arg);
    static void write_cb(bufferevent* bev, void* arg);
    static void event_cb(bufferevent* bev, short what, void* arg);
    static void timer_cb(evutil_socket_t fd, short what, void* arg);
    static void kick_cb(evutil_socket_t fd, short what, void* arg);
    static void reap_cb(evutil_socket_t fd, short what, void* arg);

    void read_ahead();
    static void read_into(evbuffer* in, evutil_socket_t fd, std::size_t max);
    void process_input();
    void process_step();
    void dispatch();
    void handle_parse_error();
    void send_error(const std::shared_ptr<Exchange>& ex, int status, const std::string& reason);
    std::shared_ptr<Exchange> error_exchange();
    void response_finished(Exchange& ex);
    void flush_and_close();
    void start_linger();
    void update_timer(bool progressed);
    void arm(Timer kind, config::Millis after);
    void kick();
    void add_output(const char* data, std::size_t len);
    void output_added();
    void flush_eagerly();
    void output_drained_to(std::size_t pending);
    bool below_high_watermark() const;
    void log_exchange(Exchange& ex, int status);
    static metrics::Counter& requests_counter(const std::string& method, int status);
    void retire(Exchange& ex);
    void reset_on_close();

    Server::State& state_;
    bufferevent* bev_;
    std::string peer_;
    RequestParser parser_;
    event* timer_ = nullptr;
    event* kick_ = nullptr;
    event* reap_ = nullptr;
    Timer timer_kind_ = Timer::kNone;
    Phase phase_ = Phase::kHead;

    std::shared_ptr<Exchange> current_;
    bool dispatch_pending_ = false;
    bool request_complete_ = false;  // the current request's body has been parsed to its end
    bool close_after_ = false;       // close once the current response has been sent
    bool peer_eof_ = false;
    bool tls_ = false;
    bool first_request_ = true;
    bool processing_ = false;
    bool reprocess_ = false;
    // Plain sockets keep libevent's write event off while nothing is queued: a response made
    // while input is processed is written once processing ends, and the event is only armed if
    // the socket did not take it all (saves two epoll_ctl calls per small response).
    bool write_armed_ = false;
    bool flush_pending_ = false;
    std::size_t input_after_process_ = 0;  // input length when process_input() last returned
    std::string head_bytes_;        // the current request's head as received (on_handoff servers)
    bool handoff_pending_ = false;  // handed off; waiting for the output to drain
};

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

}  // namespace detail
}  // namespace drayage::http
