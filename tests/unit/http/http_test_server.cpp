// http_test_server: the real http::Server with routes for the integration tests.
//
//   http_test_server PORT [--name=value ...]     (PORT 0: any; the bound port goes to stdout)
//
// Options (all optional): --header-timeout-ms --idle-timeout-ms --body-timeout-ms
// --send-timeout-ms --max-connections --max-request-line --max-header-bytes --max-headers
// --max-body --grace-ms --high-wm --low-wm --read-buffer --log-level
//
// Routes:
//   /sink[?rate=B]     reads the body (at most B bytes/s when given), answers
//                      {"bytes":N,"sha256":"<hex>"}
//   /source?bytes=N    streams N bytes, byte i = i % 251, respecting the watermarks;
//                      &chunked=1 sends it chunked (close-delimited to an HTTP/1.0 client);
//                      &abort_at=K aborts the exchange after K bytes
//   /limited           like /sink with a route body limit of 1 MiB
//   /echo              answers with the request target (ordering checks)
//   /metrics           metrics::global() in Prometheus text format
//   /v2/               200 {}; other /v2/... paths 404 with a Registry API error
// SIGTERM / SIGINT start a graceful shutdown (--grace-ms); the exit status is 0 once it is done.
#include <event2/event.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "drayage/http/errors.hpp"
#include "drayage/http/server.hpp"
#include "drayage/util/log.hpp"
#include "drayage/util/metrics.hpp"

namespace http = drayage::http;

namespace {

std::string query_param(const std::string& query, const std::string& name) {
    std::size_t pos = 0;
    while (pos <= query.size()) {
        std::size_t amp = query.find('&', pos);
        std::string kv =
            query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
        std::size_t eq = kv.find('=');
        if (kv.substr(0, eq) == name) return eq == std::string::npos ? "" : kv.substr(eq + 1);
        if (amp == std::string::npos) break;
        pos = amp + 1;
    }
    return {};
}

std::uint64_t to_u64(const std::string& s) {
    return std::strtoull(s.c_str(), nullptr, 10);
}

// Reads a request body, hashing it; optionally no faster than `rate` bytes/s (pausing the body,
// which is the backpressure path under test).
struct Sink : std::enable_shared_from_this<Sink> {
    std::shared_ptr<http::Exchange> ex;
    event_base* base = nullptr;
    std::uint64_t rate = 0;
    std::uint64_t bytes = 0;
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md{EVP_MD_CTX_new(), &EVP_MD_CTX_free};
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    event* resume_timer = nullptr;

    ~Sink() {
        if (resume_timer != nullptr) event_free(resume_timer);
    }

    void begin() {
        EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
        std::weak_ptr<Sink> weak = shared_from_this();
        // The handlers hold the sink; the exchange drops them when it finishes or closes.
        auto self = shared_from_this();
        ex->read_body(http::BodyHandlers{
            [self](std::string_view d) { self->on_data(d); },
            [self] { self->on_end(); },
            [](const drayage::Error&) {},
        });
    }

    void on_data(std::string_view d) {
        EVP_DigestUpdate(md.get(), d.data(), d.size());
        bytes += d.size();
        if (rate == 0) return;
        auto due = start + std::chrono::microseconds(bytes * 1'000'000 / rate);
        auto now = std::chrono::steady_clock::now();
        if (due > now) {
            ex->pause_body();
            auto wait = std::chrono::duration_cast<std::chrono::microseconds>(due - now);
            timeval tv{static_cast<time_t>(wait.count() / 1'000'000),
                       static_cast<suseconds_t>(wait.count() % 1'000'000)};
            if (resume_timer == nullptr) {
                resume_timer = evtimer_new(base, &Sink::resume_cb, this);
            }
            evtimer_add(resume_timer, &tv);
        }
    }

    static void resume_cb(evutil_socket_t, short, void* arg) {
        static_cast<Sink*>(arg)->ex->resume_body();
    }

    void on_end() {
        unsigned char digest[32];
        unsigned int len = 0;
        EVP_DigestFinal_ex(md.get(), digest, &len);
        std::string hex;
        for (unsigned int i = 0; i < len; ++i)
            hex += fmt::format("{:02x}", digest[i]);
        if (resume_timer != nullptr) evtimer_del(resume_timer);
        ex->respond(200, {{"Content-Type", "application/json"}},
                    fmt::format(R"({{"bytes":{},"sha256":"{}"}})", bytes, hex));
    }
};

// Streams `total` bytes of the i % 251 pattern, only while write() says there is room; with
// `abort_at`, aborts the exchange once that many bytes are queued (a source failing mid-way).
struct Source {
    std::shared_ptr<http::Exchange> ex;
    std::uint64_t total = 0;
    std::uint64_t abort_at = 0;
    std::uint64_t sent = 0;
    std::string block;

    Source() {
        // 251 * 261 bytes: every block starts at pattern offset 0.
        block.resize(251 * 261);
        for (std::size_t i = 0; i < block.size(); ++i)
            block[i] = static_cast<char>(i % 251);
    }

    void pump() {
        const std::uint64_t stop = abort_at > 0 ? std::min(abort_at, total) : total;
        while (sent < stop) {
            std::size_t off = sent % block.size();
            std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(block.size() - off, stop - sent));
            bool more = ex->write(std::string_view(block).substr(off, n));
            if (ex->closed()) return;
            sent += n;
            if (!more) return;  // on_writable calls pump() again
        }
        if (abort_at > 0) {
            ex->abort();
            return;
        }
        ex->finish();
    }
};

struct Options {
    std::uint16_t port = 0;
    http::ServerOptions server;
    std::chrono::milliseconds grace{10'000};
    std::string log_level = "info";
};

bool parse_args(int argc, char** argv, Options& o) {
    if (argc < 2) return false;
    o.port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    auto& l = o.server.limits;
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        std::size_t eq = a.find('=');
        if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
        std::string k = a.substr(2, eq - 2);
        std::string v = a.substr(eq + 1);
        std::uint64_t n = to_u64(v);
        auto ms = std::chrono::milliseconds(n);
        if (k == "header-timeout-ms")
            l.header_timeout = ms;
        else if (k == "idle-timeout-ms")
            l.idle_timeout = ms;
        else if (k == "body-timeout-ms")
            l.body_timeout = ms;
        else if (k == "send-timeout-ms")
            l.send_timeout = ms;
        else if (k == "max-connections")
            l.max_connections = n;
        else if (k == "max-request-line")
            l.max_request_line = n;
        else if (k == "max-header-bytes")
            l.max_header_bytes = n;
        else if (k == "max-headers")
            l.max_headers = n;
        else if (k == "max-body")
            l.max_body = n;
        else if (k == "grace-ms")
            o.grace = ms;
        else if (k == "high-wm")
            o.server.write_high_watermark = n;
        else if (k == "low-wm")
            o.server.write_low_watermark = n;
        else if (k == "read-buffer")
            o.server.read_buffer = n;
        else if (k == "log-level")
            o.log_level = v;
        else
            return false;
    }
    o.server.addr = fmt::format("127.0.0.1:{}", o.port);
    return true;
}

void route(event_base* base, const std::shared_ptr<http::Exchange>& ex) {
    const http::Request& r = ex->request();
    if (r.path == "/sink" || r.path == "/limited") {
        if (r.path == "/limited") ex->set_body_limit(1024 * 1024);
        auto sink = std::make_shared<Sink>();
        sink->ex = ex;
        sink->base = base;
        sink->rate = to_u64(query_param(r.query, "rate"));
        sink->begin();
    } else if (r.path == "/source") {
        auto src = std::make_shared<Source>();
        src->ex = ex;
        src->total = to_u64(query_param(r.query, "bytes"));
        src->abort_at = to_u64(query_param(r.query, "abort_at"));
        bool chunked = query_param(r.query, "chunked") == "1";
        ex->send_head(200, {{"Content-Type", "application/octet-stream"}},
                      chunked ? std::nullopt : std::optional<std::uint64_t>(src->total));
        if (r.method == "HEAD") {
            ex->finish();
            return;
        }
        ex->on_writable([src] { src->pump(); });
        src->pump();
    } else if (r.path == "/echo") {
        ex->respond(200, {{"Content-Type", "text/plain"}}, r.target);
    } else if (r.path == "/metrics") {
        ex->respond(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                    drayage::metrics::global().render());
    } else if (r.path == "/v2/" || r.path == "/v2") {
        ex->respond(200, {{"Content-Type", "application/json"}}, "{}");
    } else if (r.path.rfind("/v2/", 0) == 0) {
        http::respond_registry_error(*ex, 404, "NAME_UNKNOWN", "repository name not known",
                                     R"({"path":")" + drayage::log::json_escape(r.path) + "\"}");
    } else {
        ex->respond(404, {{"Content-Type", "text/plain"}}, "not found\n");
    }
}

struct Shutdown {
    http::Server* server;
    event_base* base;
    std::chrono::milliseconds grace;
};

void on_signal(evutil_socket_t, short, void* arg) {
    auto* s = static_cast<Shutdown*>(arg);
    event_base* base = s->base;
    s->server->shutdown(s->grace, [base] { event_base_loopexit(base, nullptr); });
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    if (!parse_args(argc, argv, o)) {
        std::fprintf(stderr, "usage: %s PORT [--name=value ...]\n", argv[0]);
        return 2;
    }
    drayage::log::Options lo;
    lo.level = o.log_level;
    if (auto st = drayage::log::init(lo); !st) {
        std::fprintf(stderr, "%s\n", st.error().message.c_str());
        return 1;
    }
    std::signal(SIGPIPE, SIG_IGN);
    event_base* base = event_base_new();
    auto server = std::make_unique<http::Server>(
        base, o.server, [base](std::shared_ptr<http::Exchange> ex) { route(base, ex); });
    if (auto st = server->listen(); !st) {
        std::fprintf(stderr, "%s\n", st.error().to_string().c_str());
        return 1;
    }
    std::printf("%u\n", server->port());
    std::fflush(stdout);
    Shutdown sd{server.get(), base, o.grace};
    event* term = evsignal_new(base, SIGTERM, &on_signal, &sd);
    event* intr = evsignal_new(base, SIGINT, &on_signal, &sd);
    event_add(term, nullptr);
    event_add(intr, nullptr);
    event_base_dispatch(base);
    event_free(term);
    event_free(intr);
    server.reset();
    event_base_free(base);
    return 0;
}
