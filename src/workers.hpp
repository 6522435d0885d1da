// Hit workers (`http.workers`): extra event-loop threads, each with its own listening socket on
// http.addr (SO_REUSEPORT, so the kernel spreads new connections over all of them), that serve
// GET and HEAD of blobs complete in the cache themselves and hand every other request, with its
// connection, to the main loop (registry::make_hit_handler, Exchange::hand_off, Server::adopt).
// With auth, a worker serves a hit only when it can admit the request itself (no credentials or
// a Bearer token, through Authenticator::admit_hit, and a committed link of the blob to the
// repository); Basic credentials and refusals go to the main loop. Plain HTTP only: serve()
// (wiring.cpp) starts no workers with TLS, since a TLS session cannot follow a hand-off.
//
// Why: one loop thread spends most of its time in the kernel's TCP code when serving small blobs,
// and a second one doubles what a two-core machine can serve. The main loop keeps everything
// that has state (fills, origins, pushes, manifests); workers use only the parts that are safe
// from any thread: Cache::read_small, Cache::open_complete_reader and its readers, the store's
// is_linked, and Authenticator::admit_hit.
#pragma once

#include <event2/event.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "drayage/cache/cache.hpp"
#include "drayage/http/server.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/util/result.hpp"

namespace drayage {

class HitWorkers {
public:
    // `main` is the main loop's server (already listening, with reuse_port); `main_base` its loop.
    // `auth` (may be null: an open mirror) must outlive the workers.
    HitWorkers(event_base* main_base, http::Server& main, cache::Cache& cache,
               const registry::Authenticator* auth);
    ~HitWorkers();  // stop() and join
    HitWorkers(const HitWorkers&) = delete;
    HitWorkers& operator=(const HitWorkers&) = delete;

    // Starts `count` workers listening with `options` (its addr, limits; reuse_port is set).
    Status start(int count, http::ServerOptions options);
    // Graceful: each worker stops accepting and lets its requests finish within `grace`;
    // `done` runs on the main loop once every worker's server has finished (at once without
    // workers). Returns at once; the destructor joins. Connections handed off meanwhile go to the
    // main server (which is shutting down too, so it closes them).
    void stop(std::chrono::milliseconds grace, std::function<void()> done);

private:
    struct Worker;
    static void handoff_cb(evutil_socket_t fd, short what, void* arg);
    static void stopped_cb(evutil_socket_t fd, short what, void* arg);
    void request_stop(std::chrono::milliseconds grace);

    event_base* main_base_;
    http::Server& main_;
    cache::Cache& cache_;
    const registry::Authenticator* auth_;
    std::vector<std::unique_ptr<Worker>> workers_;
    // Connections handed to the main loop: queued by workers, adopted on the main loop.
    struct Handoff {
        int fd;
        std::string replay;
        std::string peer;
    };
    std::mutex mu_;
    std::deque<Handoff> handoffs_;
    event* handoff_ev_ = nullptr;
    // Workers whose server has not finished shutting down; the last one wakes stopped_ev_.
    std::atomic<int> running_{0};
    event* stopped_ev_ = nullptr;
    std::function<void()> on_stopped_;
};

}  // namespace drayage
