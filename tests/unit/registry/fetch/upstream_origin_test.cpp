// The upstream registry as a BlobOrigin (src/registry/fetch/upstream_origin.cpp) against a real
// HTTP server (libevent's evhttp) on 127.0.0.1, on the test's own event loop: the adapter keeps
// the OriginSink contract (include/drayage/registry/origin.hpp) whatever UpstreamRegistry does
// below it.
#include "drayage/registry/upstream_origin.hpp"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <string>

#include "drayage/net/curl_loop.hpp"
#include "drayage/util/metrics.hpp"
#include "support.hpp"

using namespace drayage;
using namespace drayage::registry;
using cachetest::Base;
using cachetest::pump;

namespace {

const std::string kBlob(256 * 1024, 'b');

// Answers every request with 200 and kBlob.
struct BlobServer {
    evhttp* http;
    int port = 0;

    explicit BlobServer(event_base* base) : http(evhttp_new(base)) {
        evhttp_set_gencb(
            http,
            [](evhttp_request* req, void*) {
                evbuffer* out = evbuffer_new();
                evbuffer_add(out, kBlob.data(), kBlob.size());
                evhttp_send_reply(req, 200, "OK", out);
                evbuffer_free(out);
            },
            nullptr);
        evhttp_bound_socket* sock = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
        REQUIRE(sock != nullptr);
        sockaddr_in addr{};
        socklen_t len = sizeof(addr);
        getsockname(evhttp_bound_socket_get_fd(sock), reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
    }
    ~BlobServer() { evhttp_free(http); }
    BlobServer(const BlobServer&) = delete;
    BlobServer& operator=(const BlobServer&) = delete;
};

// Upstream exchanges of blob GETs that ended without a response (the one a consumer aborts
// counts here, just before UpstreamRegistry would report it).
std::uint64_t blob_gets_ended_in_error() {
    return metrics::global()
        .counter("drayage_upstream_requests_total", "", {{"op", "blob_get"}, {"status", "error"}})
        .value();
}

}  // namespace

// The upstream client on the test's loop, against a BlobServer, as a BlobOrigin.
struct Rig {
    Base b;
    BlobServer server{b.base};
    net::CurlLoop loop{b.base};
    UpstreamRegistry upstream{loop, config(server.port)};
    std::shared_ptr<BlobOrigin> origin = make_upstream_origin(upstream);

    static config::UpstreamConfig config(int port) {
        config::UpstreamConfig cfg;
        cfg.url = "http://127.0.0.1:" + std::to_string(port);
        return cfg;
    }
    std::shared_ptr<OriginTransfer> get(OriginSink sink) {
        return origin->get("a/b", "sha256:" + std::string(64, '0'), std::move(sink));
    }
};

TEST_CASE("a sink that abandons the transfer from on_head gets no on_done", "[fetch]") {
    Rig rig;
    int heads = 0;
    std::size_t data = 0;
    int dones = 0;
    OriginSink sink;
    sink.on_head = [&](const OriginHead& h) {
        ++heads;
        CHECK(h.size == kBlob.size());
        return false;
    };
    sink.on_data = [&](std::string_view bytes) {
        data += bytes.size();
        return true;
    };
    sink.on_done = [&](Status) { ++dones; };
    const std::uint64_t errors_before = blob_gets_ended_in_error();
    auto transfer = rig.get(std::move(sink));
    // The aborted exchange is counted just before the upstream client reports its end: once it
    // is, an on_done passed through would have run.
    REQUIRE(pump(rig.b.base, [&] { return blob_gets_ended_in_error() > errors_before; }));
    CHECK(heads == 1);
    CHECK(data == 0);
    CHECK(dones == 0);
}

TEST_CASE("a sink that takes the transfer gets its bytes and one on_done", "[fetch]") {
    Rig rig;
    std::string got;
    int dones = 0;
    Status last;
    OriginSink sink;
    sink.on_head = [](const OriginHead&) { return true; };
    sink.on_data = [&](std::string_view bytes) {
        got.append(bytes);
        return true;
    };
    sink.on_done = [&](Status st) {
        ++dones;
        last = st;
    };
    auto transfer = rig.get(std::move(sink));
    REQUIRE(pump(rig.b.base, [&] { return dones > 0; }));
    CHECK(last.ok());
    CHECK(got == kBlob);
    CHECK(dones == 1);
}
