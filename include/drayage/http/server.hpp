// drayage's HTTP/1.1 server: libevent bufferevents, streaming in both directions.
//
// Why not evhttp: it buffers whole request bodies in memory, and pushes are gigabytes.
//
// Model. The Server accepts connections and parses requests with RequestParser. For each request
// it creates one Exchange and calls the Handler with it (a std::shared_ptr the handler may keep
// for as long as it likes). One request per connection is handled at a time: pipelined requests
// wait, unparsed, until the previous response has finished, so answers come in order, and at
// most ServerOptions::read_buffer bytes of input are held per connection.
//
// Threading: everything runs on the event_base's thread; no Exchange method may be called from
// another thread. Callbacks (BodyHandlers, on_writable, on_closed) are never run from inside an
// Exchange method; they come from the event loop, so a handler may call any Exchange method
// (finish(), abort(), ...) from inside them.
//
// Request bodies. Nothing of the body is read until the handler calls read_body(); then the
// bytes flow to BodyHandlers::on_data as they arrive. pause_body() stops reading from the socket
// (TCP backpressure reaches the client), resume_body() restarts it, so a multi-GB body needs
// only bounded memory. With "Expect: 100-continue", "100 Continue" is sent when read_body() is
// called, not before.
//
// Responses. send_head() then write() ... finish(), or respond() for small bodies. write()
// queues the bytes and returns false when the output buffer is above the high watermark; the
// producer should then stop and wait for on_writable, which fires once the buffer has drained
// to the low watermark. Bytes are never dropped because of a false return.
//
// Connection reuse. After a response the connection is kept for the next request when the
// request asked for it, its body was read completely before send_head(), and the server is not
// shutting down; otherwise the response carries "Connection: close" and the connection is
// closed once the response has been sent (lingering briefly to swallow unread input, so the
// client sees the response and not a reset).
//
// Limits (config::HttpLimits), with what the client sees:
//   request line / headers / header count / body   414 / 431 / 431 / 413, then close
//   malformed request                               400, then close
//   header_timeout (head not complete in time)      408, then close
//   idle_timeout (keep-alive, no request started)   close, nothing sent
//   body_timeout (reading a body, no byte arrives)  body on_error; 408 when no response was
//                                                   started, else close
//   send_timeout (output pending, client reads nothing)   close
//   max_connections (all servers sharing            the connection is accepted and closed at
//   ServerOptions::connection_count)
//                                                   once, nothing sent: containerd and docker
//                                                   treat that as a transport error and fall
//                                                   over to the next mirror, where a 503 would
//                                                   not make containerd move on
//   accept() out of descriptors or memory           the listener stops accepting until one of
//   (EMFILE, ENFILE, ENOBUFS, ENOMEM)               its connections closes or 1 s passes (the
//                                                   connection waits in the backlog); one
//                                                   warning per episode for the process,
//                                                   drayage_http_accept_paused_total counts
//                                                   the pauses
// Errors the server answers itself are Registry API error bodies when the path starts with
// "/v2/", plain text otherwise.
//
// Cut responses: a response that stops after its head went out and before finish() (abort(), a
// short body at finish(), send_timeout, the shutdown deadline, a handler that threw) ends with a
// reset (RST), never with the FIN that ends a complete one.
//
// Client going away: noticed when the socket reports it (a reset, a failed write, or EOF read
// while the request is incomplete); then on_closed fires and, while a body is being read,
// BodyHandlers::on_error. EOF after a complete request is taken as a half-close: the response
// is still sent, then the connection closes. EOF behind a paused body is seen on resume.
//
// Logging and metrics: one access-log line per request (log::access), and in metrics::global()
// drayage_http_requests_total{method,status}, drayage_http_bytes_received_total,
// drayage_http_bytes_sent_total, drayage_http_open_connections. A request whose connection
// closed before its response finished is logged with status 499.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/config/config.hpp"
#include "drayage/http/request.hpp"
#include "drayage/util/result.hpp"

struct event_base;
struct evbuffer;
struct evconnlistener;
struct event;
struct sockaddr;

namespace drayage::http {

namespace detail {
class Connection;
}
class Server;

struct BodyHandlers {
    std::function<void(std::string_view data)> on_data;  // the view is valid during the call
    std::function<void()> on_end;                        // the whole body arrived
    // The body will not complete: limit exceeded (status 413), timeout (408), malformed chunk
    // (400) or the client went away (0). After it the server answers or closes by itself
    // unless the handler has already started a response.
    std::function<void(const Error& error)> on_error;
};

// One request and its response. Safe to keep after the connection is gone: then every response
// method is a no-op, write() returns false and closed() is true.
class Exchange {
public:
    const Request& request() const { return request_; }

    // --- Request body -------------------------------------------------------------------
    // Maximum body size for this request (0: only HttpLimits::max_body). Call before
    // read_body(). When a Content-Length already exceeds it, the server answers 413 at once
    // (the exchange is then finished; read_body() does nothing).
    void set_body_limit(std::uint64_t limit);
    // Starts delivering the body; call at most once. A request without a body gets on_end only.
    void read_body(BodyHandlers handlers);
    void pause_body();
    void resume_body();

    // --- Response -----------------------------------------------------------------------
    // True when a body of unknown length (send_head without content_length) reaches this client
    // framed so that it can tell the body's end from a cut: chunked on HTTP/1.1, or no body at
    // all (HEAD). False for an HTTP/1.0 GET, whose body only the close would end: a handler
    // whose source may yet fail (a blob still being verified) should then not start the body
    // before the length is known, and answer otherwise (drayage's blob path: 503).
    bool delimits_unknown_length() const;
    // Sends the status line and headers. `content_length` nullopt means chunked (close-delimited
    // for an HTTP/1.0 client). Do not pass Content-Length, Transfer-Encoding or Connection in
    // `headers`; the server owns framing. For HEAD, Content-Length is sent as given and no body.
    // 204, 304 and 1xx carry no body and no framing headers. Calling it twice is ignored.
    void send_head(int status, HeaderList headers, std::optional<std::uint64_t> content_length);
    // The same with the headers already formatted, each line "Name: value\r\n": the cache-hit
    // path formats its few headers into one reused string instead of a HeaderList. The lines
    // must not carry framing headers (Content-Length, Transfer-Encoding, Connection).
    void send_head_lines(int status, std::string_view header_lines,
                         std::optional<std::uint64_t> content_length);
    // Queues body bytes. Returns false when the output is above the high watermark (wait for
    // on_writable) or the exchange can send nothing more (connection closed, finished). Bytes
    // past the announced Content-Length are dropped and logged (a handler bug). For HEAD the
    // bytes are discarded and true is returned; handlers should not produce a HEAD body.
    bool write(std::string_view data);
    // Same, moving all of `data` into the output without copying (evbuffer_add_buffer).
    bool write(evbuffer* data);
    // Called each time the output drained to the low watermark after a write() returned false.
    void on_writable(std::function<void()> callback);
    // Completes the response. If fewer bytes than the announced Content-Length were written the
    // connection is aborted instead (the client must not take a short body for a whole one).
    void finish();
    // send_head + write + finish.
    void respond(int status, HeaderList headers, std::string body);
    // Cuts the connection now, e.g. when the source of the body failed mid-way. The socket is
    // closed with a reset (RST), never with the FIN that ends a complete response, so that no
    // client takes the cut for the end of a close-delimited body. on_closed is not called for
    // an abort() the handler made itself.
    void abort();
    // Called once if the connection closes before finish() (client gone, timeout, shutdown).
    void on_closed(std::function<void()> callback);
    bool closed() const { return closed_; }
    bool head_sent() const { return head_sent_; }
    bool finished() const { return finished_; }

    // --- Access log -----------------------------------------------------------------------
    void set_outcome(std::string outcome) { outcome_ = std::move(outcome); }
    void set_user(std::string user) { user_ = std::move(user); }

    // --- Hand-off -----------------------------------------------------------------------
    // Gives the whole connection, with this request unanswered, to ServerOptions::on_handoff
    // (another server adopts it and parses the request again). Only before anything was sent
    // or read of the body, on a plain-HTTP server with on_handoff set; returns false otherwise.
    // Nothing is logged for the request here: the adopting server logs it.
    bool hand_off();

    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;
    ~Exchange();

private:
    friend class detail::Connection;
    Exchange(detail::Connection* connection, Request request);

    detail::Connection* conn_;
    Request request_;
    std::chrono::steady_clock::time_point started_;

    BodyHandlers body_;
    std::uint64_t body_limit_ = 0;
    bool body_requested_ = false;
    bool body_paused_ = false;
    bool body_done_ = false;  // on_end or on_error delivered
    bool continue_sent_ = false;

    int status_ = 0;
    bool head_sent_ = false;
    bool finished_ = false;
    bool closed_ = false;
    bool no_body_ = false;  // HEAD, 204, 304, 1xx
    bool chunked_ = false;
    std::optional<std::uint64_t> content_length_;
    std::uint64_t body_sent_ = 0;
    std::uint64_t bytes_out_ = 0;
    bool want_writable_ = false;
    bool overflow_logged_ = false;
    std::function<void()> on_writable_;
    std::function<void()> on_closed_;

    std::string outcome_;
    std::string user_;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

class TlsContext;

struct ServerOptions {
    std::string addr = "127.0.0.1:0";  // [host]:port; empty host: all interfaces; port 0: any
    // Set: every connection is TLS, with an SSL from this context at accept time (see tls.hpp;
    // reloading it affects only new connections). Must outlive the server. Null: plain HTTP.
    const TlsContext* tls = nullptr;
    config::HttpLimits limits;
    std::size_t write_high_watermark = 256 * 1024;  // write() returns false above this
    std::size_t write_low_watermark = 64 * 1024;    // on_writable fires at or below this
    std::size_t read_buffer = 256 * 1024;           // unparsed input held per connection
    int backlog = 511;
    // Several servers (one per thread) listen on the same address; the kernel spreads new
    // connections over them.
    bool reuse_port = false;
    // Set: Exchange::hand_off() is allowed, and passes the socket (to own and close), the bytes
    // read from it not yet answered (the request head again, and what followed it), and the
    // peer's address. Called on this server's thread.
    std::function<void(int fd, std::string replay, std::string peer)> on_handoff;
    // Open connections, for limits.max_connections. Servers that share one address (hit
    // workers) share one count, so the limit holds for the process. Null: the server counts
    // its own.
    std::shared_ptr<std::atomic<std::size_t>> connection_count;
};

class Server {
public:
    // `base` must outlive the server. Nothing happens until listen().
    Server(event_base* base, ServerOptions options, Handler handler);
    ~Server();  // closes every connection at once (no callbacks into handlers)
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds and listens. Errors: "http.addr" (cannot parse or resolve the address),
    // "http.listen" (bind/listen failed, e.g. port in use; message names errno).
    Status listen();
    // The bound port (useful with port 0); 0 before listen().
    std::uint16_t port() const { return port_; }
    std::size_t connections() const;

    // Graceful shutdown: stops accepting (the listening socket is closed, so new connections
    // are refused), closes idle keep-alive connections at once, lets requests in flight finish
    // (their responses carry "Connection: close") and cuts whatever is left after `grace`.
    // `done` is called from the event loop once no connection is left. Calling it again only
    // replaces `done`.
    void shutdown(std::chrono::milliseconds grace, std::function<void()> done);

    // Takes a connection another server handed off (ServerOptions::on_handoff): `replay` is
    // parsed before anything more is read from `fd`. Plain HTTP only. Closes `fd` when shutting
    // down or at max_connections.
    void adopt(int fd, std::string replay, std::string peer);

private:
    friend class detail::Connection;
    static void accept_cb(evconnlistener* listener, int fd, ::sockaddr* addr, int len, void* arg);
    static void accept_error_cb(evconnlistener* listener, void* arg);
    void resume_accepting();
    static void deadline_cb(int fd, short what, void* arg);
    static void done_cb(int fd, short what, void* arg);
    void reap(detail::Connection* connection);
    void maybe_done();

    struct State;
    std::unique_ptr<State> state_;
    std::uint16_t port_ = 0;
};

// The process's open-files limit (RLIMIT_NOFILE) against what serving needs. Every client
// connection holds a descriptor, so do origin connections, the listeners, the event loops, the
// cache's files and the log; when they run out, accept() fails and a Server pauses accepting
// (see accept_error_cb) until a connection closes.
struct OpenFilesLimit {
    static constexpr std::uint64_t kUnlimited = ~std::uint64_t{0};
    std::uint64_t soft_before = 0;  // the soft limit the process started with
    std::uint64_t soft = 0;         // after raise_open_files_limit()
    std::uint64_t hard = 0;
    // max_connections client connections plus a reserve for the rest of the process (64, and
    // 4 per event loop). Origin connections of requests in flight come out of the reserve.
    std::uint64_t needed = 0;
    bool fits() const { return soft >= needed; }
};
// Called once at start-up, before any listener: raises the soft limit to the hard one (what an
// unprivileged process may do; systemd and container runtimes often start services at 1024 soft
// with a far higher hard limit) and reports the result. `loops`: the main loop and hit workers.
// A failing setrlimit leaves the limit as it was (soft == soft_before); a failing getrlimit
// leaves soft and hard at 0.
OpenFilesLimit raise_open_files_limit(std::uint64_t max_connections, int loops);

}  // namespace drayage::http
