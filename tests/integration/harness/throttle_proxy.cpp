// throttle_proxy: a throttling, delaying TCP proxy, the limited path the tests and bench/ put
// between drayage and an origin. The kernel here has no netem or fq qdisc, so the slow, distant
// link is made in user space. harness/throttle.py starts it and documents the model; in short,
// per connection and direction:
//   - rate: a chunk of n bytes occupies the modelled link for n / rate seconds, one chunk after
//     the other, so N bytes take at least N / rate;
//   - delay: a chunk is delivered `delay` after it left the link; the origin connection is opened
//     `delay` after the client connected;
//   - the source is read at most 20 ms of link time ahead, and bytes held per direction are
//     bounded (rate x (delay + 20 ms) + 1 MiB): past that the proxy stops reading the side, so
//     TCP flow control reaches the sender as on a real link;
//   - a FIN is passed on after the bytes before it; a reset or error on either side resets both.
// It is C++ rather than Python so that 8 connections at 50 MB/s cost little CPU on a 2-core
// machine shared with the servers it measures.
//
// Usage: throttle_proxy --upstream HOST:PORT [--port N] [--rate BYTES_PER_S] [--delay-ms MS]
// Prints "listening PORT" once listening. Each line "stats" on stdin is answered with one JSON
// line: connections (accepted so far, each one connection the origin saw), open, bytes_up (to the
// origin), bytes_down. It exits when stdin closes.

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <utility>

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kBurst = 1 << 20;
// One read takes at most this much. The source is read only when the modelled link is nearly
// free (flow()), so its bytes collect in the socket meanwhile and reads are large (libevent's
// bufferevents read at most 4 KiB at a time in 2.1, which cost more CPU than the servers being
// measured).
constexpr size_t kMaxRead = 256 * 1024;
constexpr auto kLookahead = std::chrono::milliseconds(20);

struct EventFree {
    void operator()(event* e) const { event_free(e); }
};
using EventPtr = std::unique_ptr<event, EventFree>;

struct Settings {
    sockaddr_in origin{};
    double rate = 0;  // bytes/s per connection and direction; 0: unlimited
    Clock::duration delay{};
    event_base* base = nullptr;
};

struct Stats {
    uint64_t connections = 0;
    uint64_t open = 0;
    uint64_t bytes_up = 0;
    uint64_t bytes_down = 0;
};

Settings g_settings;
Stats g_stats;

timeval to_timeval(Clock::duration d) {
    auto us =
        std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count());
    return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

void arm(event* ev, Clock::time_point when) {
    timeval tv = to_timeval(when - Clock::now());
    event_add(ev, &tv);
}

// Bytes read in one go (not zeroed first: the copy out of the socket is the proxy's main cost).
struct Chunk {
    std::unique_ptr<char[]> data = std::make_unique_for_overwrite<char[]>(kMaxRead);
    size_t size = 0;
};

class Connection;

// One direction of a connection: bytes read from `src` are written to `dst` when the modelled
// link releases them. Each returns false when the connection was closed (and freed) meanwhile.
struct Direction {
    Connection* conn = nullptr;
    int src = -1;
    int dst = -1;
    bool src_ready = false;  // connected (the origin socket is connected `delay` after accept)
    bool dst_ready = false;
    uint64_t* counter = nullptr;
    std::deque<std::pair<Clock::time_point, Chunk>> queue;  // read, not yet released
    std::deque<Chunk> out;                                  // released, not yet written
    size_t out_offset = 0;                                  // of out.front() already written
    size_t held = 0;                                        // bytes in queue and out
    size_t limit = 0;
    Clock::time_point link_free{};  // when the link has sent everything read so far
    EventPtr read_ev;               // on src
    EventPtr write_ev;              // on dst
    EventPtr release_timer;         // the queue's next release
    EventPtr link_timer;            // the link is free again: read the source
    bool reading = false;
    bool writing = false;
    bool eof = false;   // the source sent a FIN: pass it on after the bytes before it
    bool done = false;  // the FIN went out

    bool on_readable();
    bool release();
    bool write_out();
    void flow();
};

class Connection {
public:
    explicit Connection(int client_fd);
    bool connect_origin();
    bool on_connected();
    bool maybe_close();
    void close(bool reset);

    Direction up;    // client to origin
    Direction down;  // origin to client
    int client = -1;
    int origin = -1;
    EventPtr connect_timer;
    EventPtr connect_ev;
};

void on_read_cb(evutil_socket_t, short, void* ctx) {
    static_cast<Direction*>(ctx)->on_readable();
}
void on_write_cb(evutil_socket_t, short, void* ctx) {
    static_cast<Direction*>(ctx)->write_out();
}
void on_release_cb(evutil_socket_t, short, void* ctx) {
    static_cast<Direction*>(ctx)->release();
}
void on_link_cb(evutil_socket_t, short, void* ctx) {
    static_cast<Direction*>(ctx)->flow();
}

bool Direction::on_readable() {
    Chunk chunk;
    ssize_t n = read(src, chunk.data.get(), kMaxRead);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    if (n < 0) {  // a reset (or another error): pass it on as a reset
        conn->close(true);
        return false;
    }
    if (n == 0) {
        eof = true;
        flow();
        return release();
    }
    chunk.size = static_cast<size_t>(n);
    *counter += chunk.size;
    auto now = Clock::now();
    Clock::time_point release_at = now + g_settings.delay;
    if (g_settings.rate > 0) {
        link_free = std::max(link_free, now) +
                    std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                        static_cast<double>(chunk.size) / g_settings.rate));
        release_at = link_free + g_settings.delay;
    }
    held += chunk.size;
    queue.emplace_back(release_at, std::move(chunk));
    if (!release()) return false;
    flow();
    return true;
}

bool Direction::release() {
    auto now = Clock::now();
    while (!queue.empty() && queue.front().first <= now) {
        out.push_back(std::move(queue.front().second));
        queue.pop_front();
    }
    if (!queue.empty()) arm(release_timer.get(), queue.front().first);
    return write_out();
}

bool Direction::write_out() {
    if (!dst_ready) return true;
    while (!out.empty()) {
        const Chunk& front = out.front();
        ssize_t n = send(dst, front.data.get() + out_offset, front.size - out_offset, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n < 0) {
            conn->close(true);
            return false;
        }
        held -= static_cast<size_t>(n);
        out_offset += static_cast<size_t>(n);
        if (out_offset == front.size) {
            out.pop_front();
            out_offset = 0;
        }
    }
    if (out.empty() != !writing) {
        writing = !out.empty();
        writing ? event_add(write_ev.get(), nullptr) : event_del(write_ev.get());
    }
    if (eof && !done && queue.empty() && out.empty()) {
        done = true;
        shutdown(dst, SHUT_WR);
        return conn->maybe_close();
    }
    flow();
    return true;
}

// Reads the source only while the modelled link has less than kLookahead left to send and the
// bytes held are under the bound (resuming below half of it), so TCP flow control reaches the
// sender as on a real link. Reading a little ahead keeps the link from idling while a timer is
// late (release times come from link_free alone, so lateness never adds up), and pausing until
// then lets the sender's bytes collect in the socket, so reads are large.
void Direction::flow() {
    auto now = Clock::now();
    bool link_busy = g_settings.rate > 0 && link_free > now + kLookahead;
    bool room = held <= (reading ? limit : limit / 2);
    bool want = src_ready && !eof && room && !link_busy;
    if (want != reading) {
        reading = want;
        want ? event_add(read_ev.get(), nullptr) : event_del(read_ev.get());
    }
    if (src_ready && !eof && room && link_busy) arm(link_timer.get(), link_free - kLookahead);
}

void on_connect_timer(evutil_socket_t, short, void* ctx) {
    static_cast<Connection*>(ctx)->connect_origin();
}

void on_connect_ev(evutil_socket_t, short, void* ctx) {
    static_cast<Connection*>(ctx)->on_connected();
}

Connection::Connection(int client_fd) : client(client_fd) {
    double seconds = std::chrono::duration<double>(g_settings.delay + kLookahead).count();
    size_t limit = static_cast<size_t>(g_settings.rate * seconds) + kBurst;
    up.counter = &g_stats.bytes_up;
    down.counter = &g_stats.bytes_down;
    for (Direction* d : {&up, &down}) {
        d->conn = this;
        d->limit = limit;
        d->release_timer.reset(evtimer_new(g_settings.base, on_release_cb, d));
        d->link_timer.reset(evtimer_new(g_settings.base, on_link_cb, d));
    }
    up.src = down.dst = client;
    up.src_ready = down.dst_ready = true;
    up.read_ev.reset(event_new(g_settings.base, client, EV_READ | EV_PERSIST, on_read_cb, &up));
    down.write_ev.reset(
        event_new(g_settings.base, client, EV_WRITE | EV_PERSIST, on_write_cb, &down));
    up.flow();
    connect_timer.reset(evtimer_new(g_settings.base, on_connect_timer, this));
    arm(connect_timer.get(), Clock::now() + g_settings.delay);
}

bool Connection::connect_origin() {
    origin = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (origin < 0 || (connect(origin, reinterpret_cast<sockaddr*>(&g_settings.origin),
                               sizeof(g_settings.origin)) != 0 &&
                       errno != EINPROGRESS)) {
        close(true);
        return false;
    }
    connect_ev.reset(event_new(g_settings.base, origin, EV_WRITE, on_connect_ev, this));
    event_add(connect_ev.get(), nullptr);
    return true;
}

bool Connection::on_connected() {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(origin, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        close(true);  // refused: the client sees a reset, as it would from the origin
        return false;
    }
    down.src = up.dst = origin;
    down.src_ready = up.dst_ready = true;
    down.read_ev.reset(event_new(g_settings.base, origin, EV_READ | EV_PERSIST, on_read_cb, &down));
    up.write_ev.reset(event_new(g_settings.base, origin, EV_WRITE | EV_PERSIST, on_write_cb, &up));
    if (!up.release()) return false;
    down.flow();
    return true;
}

bool Connection::maybe_close() {
    if (!up.done || !down.done) return true;
    close(false);
    return false;
}

void Connection::close(bool reset) {
    --g_stats.open;
    for (Direction* d : {&up, &down}) {
        // Events go before their sockets are closed.
        d->read_ev.reset();
        d->write_ev.reset();
    }
    connect_ev.reset();
    for (int fd : {client, origin}) {
        if (fd < 0) continue;
        if (reset) {
            // SO_LINGER 0: close() sends a RST, so the peer sees the reset it would have seen.
            linger lg{1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        ::close(fd);
    }
    delete this;
}

void on_accept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void*) {
    ++g_stats.connections;
    ++g_stats.open;
    evutil_make_socket_nonblocking(fd);
    new Connection(fd);  // owns itself: deleted in close()
}

void on_stdin(evutil_socket_t fd, short, void*) {
    static std::string pending;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
        event_base_loopbreak(g_settings.base);
        return;
    }
    pending.append(buf, static_cast<size_t>(n));
    for (size_t nl; (nl = pending.find('\n')) != std::string::npos; pending.erase(0, nl + 1)) {
        if (pending.compare(0, nl, "stats") != 0) continue;
        std::printf(
            "{\"connections\": %llu, \"open\": %llu, \"bytes_up\": %llu, \"bytes_down\": %llu}\n",
            static_cast<unsigned long long>(g_stats.connections),
            static_cast<unsigned long long>(g_stats.open),
            static_cast<unsigned long long>(g_stats.bytes_up),
            static_cast<unsigned long long>(g_stats.bytes_down));
        std::fflush(stdout);
    }
}

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "throttle_proxy: %s\nusage: throttle_proxy --upstream HOST:PORT [--port N] "
                 "[--rate BYTES_PER_S] [--delay-ms MS]\n",
                 why);
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    std::string upstream;
    int port = 0;
    double delay_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string key = argv[i];
        const char* value = argv[i + 1];
        if (key == "--upstream")
            upstream = value;
        else if (key == "--port")
            port = std::atoi(value);
        else if (key == "--rate")
            g_settings.rate = std::strtod(value, nullptr);
        else if (key == "--delay-ms")
            delay_ms = std::strtod(value, nullptr);
        else
            usage(("unknown option " + key).c_str());
    }
    if (argc % 2 == 0) usage("every option takes a value");
    auto colon = upstream.rfind(':');
    if (colon == std::string::npos) usage("--upstream HOST:PORT is required");
    g_settings.origin.sin_family = AF_INET;
    g_settings.origin.sin_port = htons(static_cast<uint16_t>(std::atoi(&upstream[colon + 1])));
    if (inet_pton(AF_INET, upstream.substr(0, colon).c_str(), &g_settings.origin.sin_addr) != 1) {
        usage("--upstream needs an IPv4 address");
    }
    g_settings.delay = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(delay_ms));

    signal(SIGPIPE, SIG_IGN);
    g_settings.base = event_base_new();
    sockaddr_in listen_addr{};
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_port = htons(static_cast<uint16_t>(port));
    listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    evconnlistener* listener = evconnlistener_new_bind(
        g_settings.base, on_accept, nullptr, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 256,
        reinterpret_cast<sockaddr*>(&listen_addr), sizeof(listen_addr));
    if (listener == nullptr) {
        std::fprintf(stderr, "throttle_proxy: cannot listen on 127.0.0.1:%d: %s\n", port,
                     std::strerror(errno));
        return 1;
    }
    sockaddr_in bound{};
    socklen_t len = sizeof(bound);
    getsockname(evconnlistener_get_fd(listener), reinterpret_cast<sockaddr*>(&bound), &len);
    std::printf("listening %d\n", ntohs(bound.sin_port));
    std::fflush(stdout);

    EventPtr control(
        event_new(g_settings.base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, nullptr));
    event_add(control.get(), nullptr);
    event_base_dispatch(g_settings.base);
    evconnlistener_free(listener);
    return 0;
}
