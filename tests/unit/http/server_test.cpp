// Exchange lifetime rules on a real Server and a loopback client in the same thread: what a
// handler holding an Exchange sees when the client goes away, and after the server is gone.
#include "drayage/http/server.hpp"

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <memory>
#include <string>

using namespace drayage::http;

namespace {

struct Loop {
    Loop() : base(event_base_new()) { std::signal(SIGPIPE, SIG_IGN); }
    ~Loop() { event_base_free(base); }
    // Runs the loop until `done` holds; the iteration cap only turns a bug into a failure.
    template <typename Pred>
    bool run_until(Pred done, int max_iterations = 100000) {
        for (int i = 0; i < max_iterations && !done(); ++i) {
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        }
        return done();
    }
    event_base* base;
};

int connect_to(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    return fd;
}

void send_all(int fd, const std::string& s) {
    REQUIRE(::send(fd, s.data(), s.size(), 0) == static_cast<ssize_t>(s.size()));
}

}  // namespace

TEST_CASE("exchange outlives a client that went away", "[http][server]") {
    Loop loop;
    std::shared_ptr<Exchange> held;
    int closed_calls = 0;
    auto server =
        std::make_unique<Server>(loop.base, ServerOptions{}, [&](std::shared_ptr<Exchange> ex) {
            held = ex;
            ex->on_closed([&] { ++closed_calls; });
            ex->send_head(200, {}, std::nullopt);
        });
    REQUIRE(server->listen().ok());
    int fd = connect_to(server->port());
    send_all(fd, "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(loop.run_until([&] { return held != nullptr; }));
    // The client resets the connection (unread response bytes make close() send RST).
    linger lg{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(fd);
    std::string chunk(64 * 1024, 'x');
    REQUIRE(loop.run_until([&] {
        held->write(chunk);
        return held->closed();
    }));
    loop.run_until([&] { return server->connections() == 0; });
    CHECK(closed_calls == 1);
    CHECK_FALSE(held->write(chunk));
    held->finish();  // no-op
    held->respond(500, {}, "late");
    CHECK(closed_calls == 1);
    CHECK(server->connections() == 0);
    server.reset();
    CHECK_FALSE(held->write(chunk));
}

TEST_CASE("handler may finish from inside its callbacks; exchange survives the server",
          "[http][server]") {
    Loop loop;
    std::shared_ptr<Exchange> last;
    int served = 0;
    auto server =
        std::make_unique<Server>(loop.base, ServerOptions{}, [&](std::shared_ptr<Exchange> ex) {
            last = ex;
            auto body = std::make_shared<std::string>();
            // The callbacks capture the exchange: finishing inside on_end must drop them safely.
            ex->read_body(BodyHandlers{
                [body](std::string_view d) { body->append(d); },
                [ex, body, &served] {
                    ++served;
                    ex->respond(200, {}, *body);
                    ex->finish();  // second finish: ignored
                },
                nullptr,
            });
        });
    REQUIRE(server->listen().ok());
    int fd = connect_to(server->port());
    send_all(fd,
             "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
             "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
             "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    std::string got;
    REQUIRE(loop.run_until([&] {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        return n == 0;
    }));
    ::close(fd);
    CHECK(served == 3);
    auto first = got.find("\r\n\r\nabc");
    auto second = got.find("\r\n\r\nde");
    CHECK(first != std::string::npos);
    CHECK(second != std::string::npos);
    CHECK(first < second);
    CHECK(got.find("Connection: close") != std::string::npos);
    REQUIRE(last != nullptr);
    CHECK(last->finished());
    loop.run_until([&] { return server->connections() == 0; });
    server.reset();
    CHECK(last.use_count() == 1);  // no cycle through the callbacks
}

TEST_CASE("shutdown closes idle connections and reports completion", "[http][server]") {
    Loop loop;
    auto server =
        std::make_unique<Server>(loop.base, ServerOptions{},
                                 [](std::shared_ptr<Exchange> ex) { ex->respond(200, {}, "ok"); });
    REQUIRE(server->listen().ok());
    int fd = connect_to(server->port());
    send_all(fd, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    std::string got;
    REQUIRE(loop.run_until([&] {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        return got.find("\r\n\r\nok") != std::string::npos;
    }));
    bool done = false;
    server->shutdown(std::chrono::milliseconds(60'000), [&] { done = true; });
    REQUIRE(loop.run_until([&] { return done; }));
    char c;
    CHECK(::recv(fd, &c, 1, 0) == 0);  // the idle keep-alive connection was closed
    ::close(fd);
    // The listener is gone.
    int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server->port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(::connect(probe, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0);
    ::close(probe);
}

TEST_CASE("a request the handler drops unanswered gets a 500", "[http][server]") {
    Loop loop;
    auto server = std::make_unique<Server>(loop.base, ServerOptions{},
                                           [](std::shared_ptr<Exchange>) { /* forgets it */ });
    REQUIRE(server->listen().ok());
    int fd = connect_to(server->port());
    send_all(fd, "GET /v2/ HTTP/1.1\r\nHost: h\r\n\r\n");
    std::string got;
    REQUIRE(loop.run_until([&] {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        return n == 0;
    }));
    ::close(fd);
    CHECK(got.rfind("HTTP/1.1 500 ", 0) == 0);
    CHECK(got.find(R"({"errors":[{"code":"UNKNOWN")") != std::string::npos);
}

TEST_CASE("the open-files soft limit is raised to the hard one", "[http][server]") {
    rlimit started{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &started) == 0);
    REQUIRE(started.rlim_max >= 512);
    rlimit low = started;
    low.rlim_cur = 256;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    const OpenFilesLimit files = raise_open_files_limit(1000, 2);
    rlimit now{};
    getrlimit(RLIMIT_NOFILE, &now);
    const bool hard_is_enough = raise_open_files_limit(started.rlim_max, 1).fits();
    setrlimit(RLIMIT_NOFILE, &started);  // as this process had it
    CHECK(now.rlim_cur == started.rlim_max);
    CHECK(files.soft_before == 256);
    CHECK(files.soft == started.rlim_max);
    CHECK(files.hard == started.rlim_max);
    CHECK(files.needed == 1000 + 64 + 2 * 4);  // connections, the process, two loops
    CHECK(files.fits() == (started.rlim_max >= files.needed));
    CHECK_FALSE(hard_is_enough);  // the limit itself in connections leaves nothing for the rest
}
