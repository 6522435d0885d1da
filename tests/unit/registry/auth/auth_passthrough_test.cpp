// Unit tests of PassthroughQueue: how many pass-through checks run at once, in all and per client
// address, in which order, and how many may wait.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "drayage/registry/auth.hpp"

using namespace drayage::registry;

namespace {

// Records which jobs started, in order; finish() is the test's to call.
struct Started {
    std::vector<std::string> order;
    PassthroughQueue::Job job(std::string name) {
        return [this, name] { order.push_back(name); };
    }
};

}  // namespace

TEST_CASE("at most `running` checks in all and `running_per_client` per address run at once") {
    PassthroughQueue q(
        {.running = 3, .running_per_client = 2, .waiting = 100, .waiting_per_client = 100});
    Started s;
    for (int i = 0; i < 5; ++i)
        REQUIRE(q.submit("a", s.job("a" + std::to_string(i))));
    CHECK(s.order == std::vector<std::string>{"a0", "a1"});  // a's own limit
    CHECK(q.running() == 2);
    CHECK(q.waiting() == 3);
    REQUIRE(q.submit("b", s.job("b0")));
    REQUIRE(q.submit("b", s.job("b1")));
    CHECK(s.order.back() == "b0");  // the overall limit: b1 waits
    CHECK(q.running() == 3);
    q.finish("b");
    // a has waited longer, but runs 2 already: the slot is b's.
    CHECK(s.order.back() == "b1");
    q.finish("a");
    CHECK(s.order.back() == "a2");
    CHECK(q.running() == 3);
    CHECK(q.waiting() == 2);
}

TEST_CASE("addresses take turns: a single check is not starved by a long queue") {
    PassthroughQueue q(
        {.running = 1, .running_per_client = 1, .waiting = 100, .waiting_per_client = 100});
    Started s;
    for (int i = 0; i < 5; ++i)
        REQUIRE(q.submit("many", s.job("m" + std::to_string(i))));
    REQUIRE(q.submit("one", s.job("o0")));  // after m1..m4
    q.finish("many");
    q.finish("many");
    // one job of "many" (m1, queued before o0), then o0: not after all of m1..m4.
    CHECK(s.order == std::vector<std::string>{"m0", "m1", "o0"});
    q.finish("one");
    q.finish("many");
    CHECK(s.order == std::vector<std::string>{"m0", "m1", "o0", "m2", "m3"});
}

TEST_CASE("beyond the waiting limits a check is refused, not queued") {
    PassthroughQueue q(
        {.running = 1, .running_per_client = 1, .waiting = 3, .waiting_per_client = 2});
    Started s;
    REQUIRE(q.submit("a", s.job("a0")));  // runs
    REQUIRE(q.submit("a", s.job("a1")));
    REQUIRE(q.submit("a", s.job("a2")));
    CHECK_FALSE(q.submit("a", s.job("a3")));  // a has 2 waiting
    REQUIRE(q.submit("b", s.job("b0")));
    CHECK_FALSE(q.submit("c", s.job("c0")));  // 3 waiting in all
    CHECK(q.waiting() == 3);
    q.finish("a");  // a1 runs: 2 waiting now
    REQUIRE(q.submit("c", s.job("c0")));
    CHECK(s.order == std::vector<std::string>{"a0", "a1"});
}

TEST_CASE("a check that ends inside its own turn lets the next ones run") {
    PassthroughQueue q(
        {.running = 1, .running_per_client = 1, .waiting = 100, .waiting_per_client = 100});
    std::vector<int> ran;
    // Each job answers at once (as a cached refusal does) and so finishes within pump().
    for (int i = 0; i < 5; ++i)
        REQUIRE(q.submit("a", [&q, &ran, i] {
            ran.push_back(i);
            q.finish("a");
        }));
    CHECK(ran == std::vector<int>{0, 1, 2, 3, 4});
    CHECK(q.running() == 0);
    CHECK(q.waiting() == 0);
    // A job may also queue another check.
    bool inner = false;
    REQUIRE(q.submit("b", [&] {
        REQUIRE(q.submit("b", [&] {
            inner = true;
            q.finish("b");
        }));
        q.finish("b");
    }));
    CHECK(inner);
    CHECK(q.running() == 0);
}
