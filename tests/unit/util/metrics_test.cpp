#include "drayage/util/metrics.hpp"

#include <catch2/catch.hpp>

using drayage::metrics::Registry;

TEST_CASE("metrics render counters and gauges in Prometheus text format") {
    Registry r;
    r.counter("drayage_requests_total", "Requests.", {{"method", "GET"}, {"status", "200"}}).inc(3);
    r.counter("drayage_requests_total", "Requests.", {{"method", "HEAD"}, {"status", "404"}}).inc();
    r.gauge("drayage_open_connections", "Open connections.").set(7);
    std::string text = r.render();
    CHECK(text.find("# TYPE drayage_requests_total counter\n") != std::string::npos);
    CHECK(text.find("drayage_requests_total{method=\"GET\",status=\"200\"} 3\n") !=
          std::string::npos);
    CHECK(text.find("drayage_requests_total{method=\"HEAD\",status=\"404\"} 1\n") !=
          std::string::npos);
    CHECK(text.find("# TYPE drayage_open_connections gauge\ndrayage_open_connections 7\n") !=
          std::string::npos);
}

TEST_CASE("the same series is returned on every lookup") {
    Registry r;
    auto& a = r.counter("x_total", "X.", {{"k", "v"}});
    auto& b = r.counter("x_total", "X.", {{"k", "v"}});
    CHECK(&a == &b);
    a.inc(2);
    CHECK(b.value() == 2);
}

TEST_CASE("label values are escaped") {
    Registry r;
    r.counter("y_total", "Y.", {{"path", "a\"b\\c"}}).inc();
    CHECK(r.render().find("y_total{path=\"a\\\"b\\\\c\"} 1") != std::string::npos);
}
