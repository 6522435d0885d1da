// CurlLoop + HttpCall against a real HTTP server (libevent's evhttp) on 127.0.0.1, on the same
// event loop as the client, so every test is one thread and deterministic.
#include "drayage/net/curl_loop.hpp"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

using namespace drayage;
using namespace drayage::net;

namespace {

// Runs `base` until a test callback breaks the loop. Bounded: when that never happens (a call
// whose callback never comes), a guard breaks it after 120 s and the test fails instead of
// hanging. Generous: it bounds a hang, it says nothing about speed.
void dispatch_bounded(event_base* base) {
    struct Guard {
        event_base* base;
        bool tripped = false;
    } g{base};
    event* guard = evtimer_new(
        base,
        [](evutil_socket_t, short, void* arg) {
            auto* self = static_cast<Guard*>(arg);
            self->tripped = true;
            event_base_loopbreak(self->base);
        },
        &g);
    timeval limit{120, 0};
    evtimer_add(guard, &limit);
    event_base_dispatch(base);
    event_free(guard);
    if (g.tripped) FAIL("the loop ran 120 s without the callback the test waits for");
}

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>('a' + (i * 7 + i / 13) % 26);
    }
    return s;
}

// A test server with a few fixed routes; see on_request.
struct TestServer {
    event_base* base;
    evhttp* http;
    int port = 0;
    std::string big = pattern(4 * 1024 * 1024);
    std::string last_method;
    std::string last_body;
    std::string last_authorization;
    std::string last_transfer_encoding;
    int requests = 0;

    explicit TestServer(event_base* b) : base(b), http(evhttp_new(b)) {
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_POST |
                                             EVHTTP_REQ_HEAD | EVHTTP_REQ_DELETE);
        evhttp_set_gencb(http, &TestServer::on_request, this);
        evhttp_bound_socket* sock = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
        REQUIRE(sock != nullptr);
        sockaddr_in addr{};
        socklen_t len = sizeof(addr);
        getsockname(evhttp_bound_socket_get_fd(sock), reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
    }
    ~TestServer() { evhttp_free(http); }
    TestServer(const TestServer&) = delete;
    TestServer& operator=(const TestServer&) = delete;

    std::string url(const std::string& path, const std::string& host = "127.0.0.1") const {
        return "http://" + host + ":" + std::to_string(port) + path;
    }

    static void on_request(evhttp_request* req, void* arg) {
        auto* self = static_cast<TestServer*>(arg);
        ++self->requests;
        std::string uri = evhttp_request_get_uri(req);
        evkeyvalq* in = evhttp_request_get_input_headers(req);
        const char* auth = evhttp_find_header(in, "Authorization");
        self->last_authorization = auth ? auth : "";
        const char* te = evhttp_find_header(in, "Transfer-Encoding");
        self->last_transfer_encoding = te ? te : "";
        switch (evhttp_request_get_command(req)) {
            case EVHTTP_REQ_GET: self->last_method = "GET"; break;
            case EVHTTP_REQ_PUT: self->last_method = "PUT"; break;
            case EVHTTP_REQ_POST: self->last_method = "POST"; break;
            case EVHTTP_REQ_HEAD: self->last_method = "HEAD"; break;
            case EVHTTP_REQ_DELETE: self->last_method = "DELETE"; break;
            default: self->last_method = "?"; break;
        }
        evbuffer* body_in = evhttp_request_get_input_buffer(req);
        self->last_body.resize(evbuffer_get_length(body_in));
        evbuffer_copyout(body_in, self->last_body.data(), self->last_body.size());
        evbuffer* out = evbuffer_new();
        if (uri == "/big") {
            evbuffer_add(out, self->big.data(), self->big.size());
            evhttp_send_reply(req, 200, "OK", out);
        } else if (uri == "/echo") {
            evbuffer_add_printf(out, "%zu", self->last_body.size());
            evhttp_send_reply(req, 201, "Created", out);
        } else if (uri == "/redirect-other-host") {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Location",
                              self->url("/auth", "localhost").c_str());
            evhttp_send_reply(req, 302, "Found", out);
        } else if (uri == "/redirect-same-host") {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/auth");
            evhttp_send_reply(req, 302, "Found", out);
        } else if (uri == "/auth") {
            evbuffer_add_printf(out, "auth=[%s]", self->last_authorization.c_str());
            evhttp_send_reply(req, 200, "OK", out);
        } else if (uri == "/stall") {
            // Head and a few bytes, then nothing: the request is never finished.
            evhttp_send_reply_start(req, 200, "OK");
            evbuffer_add(out, "abc", 3);
            evhttp_send_reply_chunk(req, out);
        } else {
            evhttp_send_reply(req, 404, "Not Found", out);
        }
        evbuffer_free(out);
    }
};

struct Fixture {
    event_base* base = event_base_new();
    std::unique_ptr<TestServer> server = std::make_unique<TestServer>(base);
    std::unique_ptr<CurlLoop> loop = std::make_unique<CurlLoop>(base);
    ~Fixture() {
        loop.reset();
        server.reset();
        event_base_free(base);
    }
    Fixture() = default;
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;
    void run() { dispatch_bounded(base); }
    void stop() { event_base_loopbreak(base); }
};

struct Outcome {
    bool done = false;
    Status status;
    CallResponse response;
    std::string body;
};

}  // namespace

TEST_CASE("GET streams the body and reports status and headers", "[net]") {
    Fixture f;
    Outcome o;
    CallOptions opt;
    opt.url = f.server->url("/big");
    auto call = HttpCall::start(*f.loop, opt,
                                CallHandlers{[&](const CallResponse& r) {
                                                 CHECK(r.status == 200);
                                                 return true;
                                             },
                                             [&](std::string_view piece) {
                                                 o.body.append(piece);
                                                 return true;
                                             },
                                             [&](Status s, const CallResponse& r) {
                                                 o.done = true;
                                                 o.status = s;
                                                 o.response = r;
                                                 f.stop();
                                             }});
    f.run();
    REQUIRE(o.done);
    REQUIRE(o.status.ok());
    CHECK(o.response.status == 200);
    CHECK(find_header(o.response.headers, "content-length") ==
          std::to_string(f.server->big.size()));
    CHECK(o.body == f.server->big);
    CHECK(call->finished());
    CHECK(f.loop->running() == 0);
}

TEST_CASE("a paused download delivers nothing until resumed, then the rest", "[net]") {
    Fixture f;
    Outcome o;
    std::shared_ptr<HttpCall> call;
    int pauses = 0;
    bool paused = false;
    event* resume_timer = nullptr;
    CallOptions opt;
    opt.url = f.server->url("/big");
    call = HttpCall::start(*f.loop, opt,
                           CallHandlers{{},
                                        [&](std::string_view piece) {
                                            REQUIRE_FALSE(paused);  // nothing while paused
                                            o.body.append(piece);
                                            // Pause after every piece; a timer resumes us later.
                                            paused = true;
                                            ++pauses;
                                            timeval tv{0, 1000};
                                            evtimer_add(resume_timer, &tv);
                                            return false;
                                        },
                                        [&](Status s, const CallResponse&) {
                                            o.done = true;
                                            o.status = s;
                                            f.stop();
                                        }});
    resume_timer = event_new(
        f.base, -1, 0,
        [](evutil_socket_t, short, void* arg) {
            auto* ctx = static_cast<std::pair<bool*, std::shared_ptr<HttpCall>*>*>(arg);
            *ctx->first = false;
            (*ctx->second)->resume_download();
        },
        new std::pair<bool*, std::shared_ptr<HttpCall>*>(&paused, &call));
    f.run();
    delete static_cast<std::pair<bool*, std::shared_ptr<HttpCall>*>*>(
        event_get_callback_arg(resume_timer));
    event_free(resume_timer);
    REQUIRE(o.done);
    REQUIRE(o.status.ok());
    CHECK(pauses > 1);
    CHECK(o.body == f.server->big);
}

TEST_CASE("uploads: owned body, streamed with length, streamed chunked, paused source", "[net]") {
    Fixture f;
    std::string payload = pattern(3 * 1024 * 1024 + 17);
    auto run_upload = [&](CallOptions opt) {
        Outcome o;
        opt.url = f.server->url("/echo");
        HttpCall::start(*f.loop, std::move(opt),
                        CallHandlers{{},
                                     [&](std::string_view piece) {
                                         o.body.append(piece);
                                         return true;
                                     },
                                     [&](Status s, const CallResponse& r) {
                                         o.done = true;
                                         o.status = s;
                                         o.response = r;
                                         f.stop();
                                     }});
        f.run();
        return o;
    };

    SECTION("owned body, PUT with Content-Length") {
        CallOptions opt;
        opt.method = "PUT";
        opt.body = payload;
        Outcome o = run_upload(opt);
        REQUIRE(o.status.ok());
        CHECK(o.response.status == 201);
        CHECK(f.server->last_method == "PUT");
        CHECK(f.server->last_body == payload);
        CHECK(f.server->last_transfer_encoding.empty());
    }
    SECTION("POST with an empty body") {
        CallOptions opt;
        opt.method = "POST";
        Outcome o = run_upload(opt);
        REQUIRE(o.status.ok());
        CHECK(f.server->last_method == "POST");
        CHECK(o.body == "0");
    }
    SECTION("streamed source, known size and chunked, pausing now and then") {
        bool chunked = GENERATE(false, true);
        std::size_t offset = 0;
        int calls = 0;
        std::shared_ptr<HttpCall>* self = nullptr;
        CallOptions opt;
        opt.method = "PUT";
        opt.body_size = chunked ? -1 : static_cast<std::int64_t>(payload.size());
        event* resume = nullptr;
        std::shared_ptr<HttpCall> call;
        opt.body_source = [&](char* buf, std::size_t cap) -> std::size_t {
            if (++calls % 3 == 0) {
                timeval tv{0, 500};
                evtimer_add(resume, &tv);
                return kBodyPause;
            }
            std::size_t take = std::min<std::size_t>({cap, payload.size() - offset, 100'000});
            std::memcpy(buf, payload.data() + offset, take);
            offset += take;
            return take;
        };
        self = &call;
        resume = event_new(
            f.base, -1, 0,
            [](evutil_socket_t, short, void* arg) {
                (*static_cast<std::shared_ptr<HttpCall>*>(arg))->resume_upload();
            },
            self);
        Outcome o;
        opt.url = f.server->url("/echo");
        call = HttpCall::start(*f.loop, opt,
                               CallHandlers{{},
                                            [&](std::string_view piece) {
                                                o.body.append(piece);
                                                return true;
                                            },
                                            [&](Status s, const CallResponse& r) {
                                                o.done = true;
                                                o.status = s;
                                                o.response = r;
                                                f.stop();
                                            }});
        f.run();
        event_free(resume);
        REQUIRE(o.status.ok());
        CHECK(calls > 6);
        CHECK(f.server->last_body == payload);
        CHECK(f.server->last_transfer_encoding == (chunked ? "chunked" : ""));
    }
}

TEST_CASE("redirects are followed; Authorization never goes to another host", "[net]") {
    Fixture f;
    auto get = [&](const std::string& path) {
        Outcome o;
        CallOptions opt;
        opt.url = f.server->url(path);
        opt.follow_redirects = true;
        opt.headers = {{"Authorization", "Bearer secret"}};
        HttpCall::start(*f.loop, opt,
                        CallHandlers{{},
                                     [&](std::string_view piece) {
                                         o.body.append(piece);
                                         return true;
                                     },
                                     [&](Status s, const CallResponse& r) {
                                         o.status = s;
                                         o.response = r;
                                         f.stop();
                                     }});
        f.run();
        return o;
    };
    Outcome same = get("/redirect-same-host");
    REQUIRE(same.status.ok());
    CHECK(same.response.status == 200);
    CHECK(same.body == "auth=[Bearer secret]");

    Outcome other = get("/redirect-other-host");
    REQUIRE(other.status.ok());
    CHECK(other.response.status == 200);
    CHECK(other.response.effective_url.find("localhost") != std::string::npos);
    CHECK(other.body == "auth=[]");
}

TEST_CASE("a stalled response ends with a transport error", "[net]") {
    Fixture f;
    Outcome o;
    CallOptions opt;
    opt.url = f.server->url("/stall");
    opt.stall_timeout = std::chrono::milliseconds(1000);
    HttpCall::start(*f.loop, opt,
                    CallHandlers{{},
                                 [&](std::string_view piece) {
                                     o.body.append(piece);
                                     return true;
                                 },
                                 [&](Status s, const CallResponse& r) {
                                     o.done = true;
                                     o.status = s;
                                     o.response = r;
                                     f.stop();
                                 }});
    f.run();
    REQUIRE(o.done);
    REQUIRE_FALSE(o.status.ok());
    CHECK(o.status.error().code == "transport");
    CHECK(o.response.curl_code == 28);  // CURLE_OPERATION_TIMEDOUT
    CHECK(o.body == "abc");
}

TEST_CASE("cancel from inside on_body ends the call without on_done", "[net]") {
    Fixture f;
    bool done_called = false;
    std::size_t got = 0;
    std::shared_ptr<HttpCall> call;
    CallOptions opt;
    opt.url = f.server->url("/big");
    call = HttpCall::start(*f.loop, opt,
                           CallHandlers{{},
                                        [&](std::string_view piece) {
                                            got += piece.size();
                                            call->cancel();
                                            // Let the loop turn once more, then stop.
                                            event_base_loopexit(f.base, nullptr);
                                            return true;
                                        },
                                        [&](Status, const CallResponse&) { done_called = true; }});
    f.run();
    CHECK(got > 0);
    CHECK_FALSE(done_called);
    CHECK(call->finished());
    CHECK(f.loop->running() == 0);
}

TEST_CASE("connection refused is a transport error", "[net]") {
    Fixture f;
    Outcome o;
    CallOptions opt;
    // The server's port plus one is very likely closed; use a just-closed port instead.
    evutil_socket_t fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    evutil_closesocket(fd);
    opt.url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/";
    HttpCall::start(*f.loop, opt, CallHandlers{{}, {}, [&](Status s, const CallResponse& r) {
                                                   o.done = true;
                                                   o.status = s;
                                                   o.response = r;
                                                   f.stop();
                                               }});
    f.run();
    REQUIRE(o.done);
    REQUIRE_FALSE(o.status.ok());
    CHECK(o.status.error().code == "transport");
    CHECK(o.response.curl_code == 7);  // CURLE_COULDNT_CONNECT
}

namespace {

// `openssl s_server -www` with a fresh self-signed certificate: a real TLS peer whose
// certificate no CA vouches for.
struct TlsServer {
    std::string dir;
    pid_t pid = -1;
    int port = 0;

    TlsServer() {
        char tmpl[] = "/tmp/drayage-tls-XXXXXX";
        dir = mkdtemp(tmpl);
        std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -keyout " + dir +
                          "/key.pem -out " + dir +
                          "/cert.pem -subj /CN=127.0.0.1 -days 1 >/dev/null 2>&1";
        REQUIRE(std::system(cmd.c_str()) == 0);
        port = free_port();
        pid = fork();
        if (pid == 0) {
            std::string accept = "127.0.0.1:" + std::to_string(port);
            std::string cert = dir + "/cert.pem";
            std::string key = dir + "/key.pem";
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 1);
            dup2(devnull, 2);
            execlp("openssl", "openssl", "s_server", "-accept", accept.c_str(), "-cert",
                   cert.c_str(), "-key", key.c_str(), "-www", "-quiet",
                   static_cast<char*>(nullptr));
            _exit(127);
        }
        REQUIRE(pid > 0);
        REQUIRE(wait_listening());
    }
    ~TlsServer() {
        if (pid > 0) {
            kill(pid, SIGTERM);
            waitpid(pid, nullptr, 0);
        }
        std::system(("rm -rf " + dir).c_str());
    }
    TlsServer(const TlsServer&) = delete;
    TlsServer& operator=(const TlsServer&) = delete;

    static int free_port() {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
        socklen_t len = sizeof(addr);
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
        close(fd);
        return ntohs(addr.sin_port);
    }

    // Polls until s_server accepts (it needs a moment to start); gives up after ~20 s.
    bool wait_listening() const {
        for (int i = 0; i < 400; ++i) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            addr.sin_port = htons(static_cast<std::uint16_t>(port));
            bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
            close(fd);
            if (ok) {
                return true;
            }
            usleep(50'000);
        }
        return false;
    }
};

}  // namespace

TEST_CASE("TLS verification: on rejects a self-signed peer, off accepts it", "[net][tls]") {
    TlsServer tls;
    Fixture f;
    auto get = [&](bool verify) {
        Outcome o;
        CallOptions opt;
        opt.url = "https://127.0.0.1:" + std::to_string(tls.port) + "/";
        opt.verify_tls = verify;
        HttpCall::start(*f.loop, opt,
                        CallHandlers{{},
                                     [&](std::string_view piece) {
                                         o.body.append(piece);
                                         return true;
                                     },
                                     [&](Status s, const CallResponse& r) {
                                         o.done = true;
                                         o.status = s;
                                         o.response = r;
                                         f.stop();
                                     }});
        f.run();
        return o;
    };
    Outcome verified = get(true);
    REQUIRE(verified.done);
    REQUIRE_FALSE(verified.status.ok());
    CHECK(verified.status.error().code == "transport");
    CHECK(verified.response.curl_code == 60);  // CURLE_PEER_FAILED_VERIFICATION

    Outcome unverified = get(false);
    REQUIRE(unverified.done);
    REQUIRE(unverified.status.ok());
    CHECK(unverified.response.status == 200);
    CHECK(unverified.body.find("s_server") != std::string::npos);
}

TEST_CASE("destroying the loop with a call running cancels it quietly", "[net]") {
    event_base* base = event_base_new();
    {
        TestServer server(base);
        auto loop = std::make_unique<CurlLoop>(base);
        bool done_called = false;
        std::string body;
        CallOptions opt;
        opt.url = server.url("/stall");
        auto call =
            HttpCall::start(*loop, opt,
                            CallHandlers{{},
                                         [&](std::string_view piece) {
                                             body.append(piece);
                                             event_base_loopbreak(base);
                                             return true;
                                         },
                                         [&](Status, const CallResponse&) { done_called = true; }});
        dispatch_bounded(base);
        CHECK(body == "abc");
        CHECK(loop->running() == 1);
        loop.reset();
        CHECK(call->finished());
        CHECK_FALSE(done_called);
        call->cancel();  // harmless after the loop is gone
        call->resume_download();
    }
    event_base_free(base);
}
