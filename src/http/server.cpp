#include "drayage/http/server.hpp"

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "connection.hpp"
#include "drayage/http/tls.hpp"

namespace drayage::http {
namespace {

// After accept() ran out of descriptors the listener stays off this long, unless a connection
// of its server closes first. Level-triggered epoll would otherwise report the waiting
// connection again at once, and the loop would spin on accept() failing.
constexpr timeval kAcceptRetry{1, 0};

// Out of descriptors is a state of the process (every listener shares its table): one warning
// per episode, an episode being the failures no more than this far apart.
constexpr std::chrono::seconds kEpisodeGap{30};
std::atomic<std::int64_t> last_fd_exhaustion_ms{-kEpisodeGap.count() * 1000 - 1};

// accept() errors that say the process or the system cannot take a connection now; the
// connection stays queued and the next accept() would fail the same way.
bool out_of_resources(int err) {
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

std::uint64_t open_files_soft_limit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
    return rl.rlim_cur;
}

std::string peer_string(const sockaddr* addr) {
    char host[INET6_ADDRSTRLEN] = "?";
    std::uint16_t port = 0;
    if (addr->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
        evutil_inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    if (addr->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
        evutil_inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        return "[" + std::string(host) + "]:" + std::to_string(port);
    }
    return "?";
}

}  // namespace

Server::Server(event_base* base, ServerOptions options, Handler handler)
    : state_(std::make_unique<State>()) {
    state_->server = this;
    state_->base = base;
    state_->options = std::move(options);
    if (!state_->options.connection_count)
        state_->options.connection_count = std::make_shared<std::atomic<std::size_t>>(0);
    state_->handler = std::move(handler);
    auto& m = metrics::global();
    state_->bytes_received = &m.counter("drayage_http_bytes_received_total",
                                        "Bytes read from HTTP clients (heads and bodies)");
    state_->bytes_sent = &m.counter("drayage_http_bytes_sent_total",
                                    "Bytes queued to HTTP clients (heads and bodies)");
    state_->open_connections =
        &m.gauge("drayage_http_open_connections", "Client connections currently open");
    state_->done_event = event_new(base, -1, 0, &Server::done_cb, this);
    state_->deadline = evtimer_new(base, &Server::deadline_cb, this);
    state_->accept_resume = evtimer_new(
        base,
        [](evutil_socket_t, short, void* arg) { static_cast<Server*>(arg)->resume_accepting(); },
        this);
}

Server::~Server() {
    if (state_->listener != nullptr) evconnlistener_free(state_->listener);
    // Connections are freed without calling back into handlers: the handler objects may be
    // half-destroyed by now.
    for (auto& [ptr, conn] : state_->connections)
        conn->close_now("server destroyed", false);
    state_->connections.clear();
    event_free(state_->done_event);
    event_free(state_->deadline);
    event_free(state_->accept_resume);
}

std::size_t Server::connections() const {
    return state_->connections.size();
}

Status Server::listen() {
    const std::string& addr = state_->options.addr;
    std::size_t colon = addr.rfind(':');
    if (colon == std::string::npos) {
        return make_error("http.addr", "address '" + addr + "' is not [host]:port");
    }
    std::string host = addr.substr(0, colon);
    std::string port = addr.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
        return make_error("http.addr",
                          "cannot resolve '" + addr + "': " + std::string(gai_strerror(rc)));
    }
    // With an empty host prefer the IPv6 wildcard when offered (it also takes IPv4 on Linux).
    addrinfo* chosen = res;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    if (state_->options.reuse_port) flags |= LEV_OPT_REUSEABLE_PORT;
    evconnlistener* listener = evconnlistener_new_bind(
        state_->base, &Server::accept_cb, this, flags, state_->options.backlog, chosen->ai_addr,
        static_cast<int>(chosen->ai_addrlen));
    int err = errno;
    freeaddrinfo(res);
    if (listener == nullptr) {
        return make_error("http.listen",
                          "cannot listen on " + addr + ": " + std::string(std::strerror(err)));
    }
    state_->listener = listener;
    evconnlistener_set_error_cb(listener, &Server::accept_error_cb);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(evconnlistener_get_fd(listener), reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
        if (ss.ss_family == AF_INET) {
            port_ = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            port_ = ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
        }
    }
    spdlog::info("http: listening on {} (port {})", addr, port_);
    return {};
}

void Server::adopt(int fd, std::string replay, std::string peer) {
    State& st = *state_;
    // No max_connections check: the connection was admitted (and counted) where it was accepted.
    if (st.shutting_down || st.options.tls != nullptr) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent* bev = bufferevent_socket_new(st.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == nullptr) {
        evutil_closesocket(fd);
        return;
    }
    auto conn = std::make_unique<detail::Connection>(st, bev, std::move(peer), false);
    detail::Connection* raw = conn.get();
    st.connections.emplace(raw, std::move(conn));
    raw->start_with_input(std::move(replay));
}

void Server::accept_cb(evconnlistener*, evutil_socket_t fd, sockaddr* addr, int, void* arg) {
    auto* self = static_cast<Server*>(arg);
    State& st = *self->state_;
    if (st.shutting_down || *st.options.connection_count >= st.options.limits.max_connections) {
        // Closed without a word: clients treat it as a transport error and try the next mirror.
        evutil_closesocket(fd);
        metrics::global()
            .counter("drayage_http_connections_rejected_total",
                     "Connections closed at accept because of max_connections or shutdown")
            .inc();
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // The one place that creates the transport.
    bufferevent* bev = nullptr;
    bool tls = st.options.tls != nullptr;
    if (tls) {
        SSL* ssl = st.options.tls->new_session();
        if (ssl != nullptr) {
            // Owns `ssl` from here (BEV_OPT_CLOSE_ON_FREE frees it with the bufferevent).
            bev = bufferevent_openssl_socket_new(st.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
            if (bev == nullptr) SSL_free(ssl);
        }
        // A client that closes without close_notify is at EOF, not in error.
        if (bev != nullptr) bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(st.base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (bev == nullptr) {
        evutil_closesocket(fd);
        return;
    }
    auto conn = std::make_unique<detail::Connection>(st, bev, peer_string(addr), tls);
    detail::Connection* raw = conn.get();
    st.connections.emplace(raw, std::move(conn));
    raw->start();
}

void Server::accept_error_cb(evconnlistener*, void* arg) {
    auto* self = static_cast<Server*>(arg);
    State& st = *self->state_;
    const int err = EVUTIL_SOCKET_ERROR();
    if (!out_of_resources(err)) {
        // Linux reports some errors of the connection being accepted (EPROTO, ENETDOWN, ...)
        // from accept(): that connection is gone, the next one may be fine.
        spdlog::debug("http: accept() failed: {}", std::strerror(err));
        return;
    }
    static metrics::Counter& paused = metrics::global().counter(
        "drayage_http_accept_paused_total",
        "Times a listener stopped accepting because accept() ran out of file descriptors or "
        "memory (it resumes when a connection closes, or after 1 s)");
    paused.inc();
    const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count();
    const std::int64_t before = last_fd_exhaustion_ms.exchange(now);
    if (now - before > std::chrono::milliseconds(kEpisodeGap).count()) {
        spdlog::warn(
            "http: accept() failed: {} ({} connection(s) open, open-files limit {}); accepting "
            "pauses until a connection closes or 1 s passes. Raise the limit (ulimit -n, "
            "LimitNOFILE=, docker run --ulimit nofile=) or lower http.limits.max_connections",
            std::strerror(err), st.options.connection_count->load(), open_files_soft_limit());
    }
    st.accept_paused = true;
    evconnlistener_disable(st.listener);
    evtimer_add(st.accept_resume, &kAcceptRetry);
}

void Server::resume_accepting() {
    State& st = *state_;
    if (!st.accept_paused) return;
    st.accept_paused = false;
    evtimer_del(st.accept_resume);
    if (st.listener != nullptr) evconnlistener_enable(st.listener);
}

void Server::reap(detail::Connection* connection) {
    state_->connections.erase(connection);
    // Its descriptor is free again: a connection waiting in the backlog may have it.
    resume_accepting();
    maybe_done();
}

void Server::shutdown(std::chrono::milliseconds grace, std::function<void()> done) {
    State& st = *state_;
    st.done = std::move(done);
    if (st.shutting_down) return;
    st.shutting_down = true;
    if (st.listener != nullptr) {
        evconnlistener_free(st.listener);
        st.listener = nullptr;
    }
    st.accept_paused = false;
    evtimer_del(st.accept_resume);
    spdlog::info("http: shutting down, {} connection(s) open, grace {} ms", st.connections.size(),
                 grace.count());
    for (auto& [ptr, conn] : st.connections)
        conn->on_server_shutdown();
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(grace.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((grace.count() % 1000) * 1000);
    evtimer_add(st.deadline, &tv);
    maybe_done();
}

void Server::maybe_done() {
    if (state_->shutting_down && state_->connections.empty()) {
        event_active(state_->done_event, EV_TIMEOUT, 0);
    }
}

void Server::deadline_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Server*>(arg);
    spdlog::warn("http: shutdown grace over, cutting {} connection(s)",
                 self->state_->connections.size());
    for (auto& [ptr, conn] : self->state_->connections)
        conn->close_now("shutdown deadline");
}

void Server::done_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Server*>(arg);
    if (!self->state_->connections.empty()) return;
    evtimer_del(self->state_->deadline);
    std::function<void()> done = std::move(self->state_->done);
    self->state_->done = nullptr;
    if (done) done();
}

OpenFilesLimit raise_open_files_limit(std::uint64_t max_connections, int loops) {
    // stdio, the log, the cache's files and lock, signal and thread wake-ups, curl's resolver
    // and a few idle origin connections: about 20 in use here, the rest is margin.
    constexpr std::uint64_t kReserve = 64;
    // Each loop: epoll, its wake-up descriptor, a listener, the cross-thread notification.
    constexpr std::uint64_t kPerLoop = 4;
    auto value = [](rlim_t v) {
        return v == RLIM_INFINITY ? OpenFilesLimit::kUnlimited : static_cast<std::uint64_t>(v);
    };
    OpenFilesLimit out;
    out.needed = max_connections + kReserve + kPerLoop * static_cast<std::uint64_t>(loops);
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return out;
    out.soft_before = value(rl.rlim_cur);
    out.hard = value(rl.rlim_max);
    if (rl.rlim_cur != rl.rlim_max) {
        rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    out.soft = value(rl.rlim_cur);
    return out;
}

}  // namespace drayage::http
