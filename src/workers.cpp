// Hit workers: see workers.hpp.
#include "workers.hpp"

#include <event2/thread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "drayage/registry/front.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage {

struct HitWorkers::Worker {
    HitWorkers* owner = nullptr;
    event_base* base = nullptr;
    std::unique_ptr<http::Server> server;
    event* stop_ev = nullptr;
    std::atomic<long long> grace_ms{0};
    bool stopping = false;  // worker thread only
    std::thread thread;
};

HitWorkers::HitWorkers(event_base* main_base, http::Server& main, cache::Cache& cache,
                       const registry::Authenticator* auth)
    : main_base_(main_base), main_(main), cache_(cache), auth_(auth) {
    handoff_ev_ = event_new(main_base_, -1, 0, &HitWorkers::handoff_cb, this);
    stopped_ev_ = event_new(main_base_, -1, 0, &HitWorkers::stopped_cb, this);
}

HitWorkers::~HitWorkers() {
    request_stop(std::chrono::milliseconds(0));
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
        w->server.reset();  // closes what is left, before the loop goes
        event_free(w->stop_ev);
        event_base_free(w->base);
    }
    event_free(handoff_ev_);
    event_free(stopped_ev_);
    for (Handoff& h : handoffs_)
        ::close(h.fd);
}

Status HitWorkers::start(int count, http::ServerOptions options) {
    options.reuse_port = true;
    options.on_handoff = [this](int fd, std::string replay, std::string peer) {
        {
            std::lock_guard lock(mu_);
            handoffs_.push_back(Handoff{fd, std::move(replay), std::move(peer)});
        }
        event_active(handoff_ev_, EV_READ, 0);  // thread-safe: evthread_use_pthreads()
    };
    for (int i = 0; i < count; ++i) {
        auto w = std::make_unique<Worker>();
        w->base = event_base_new();
        if (w->base == nullptr) return make_error("http.workers", "cannot create an event loop");
        w->server = std::make_unique<http::Server>(w->base, options,
                                                   registry::make_hit_handler(cache_, auth_));
        if (auto st = w->server->listen(); !st) {
            event_base_free(w->base);
            return st;
        }
        Worker* raw = w.get();
        raw->owner = this;
        w->stop_ev = event_new(
            w->base, -1, 0,
            [](evutil_socket_t, short, void* arg) {
                auto* self = static_cast<Worker*>(arg);
                const bool first = !self->stopping;
                self->stopping = true;
                // A second request (the destructor's, grace 0) only shortens the grace.
                self->server->shutdown(std::chrono::milliseconds(self->grace_ms.load()),
                                       [self, first] {
                                           event_base_loopexit(self->base, nullptr);
                                           if (first && --self->owner->running_ == 0) {
                                               event_active(self->owner->stopped_ev_, EV_READ, 0);
                                           }
                                       });
            },
            raw);
        workers_.push_back(std::move(w));
        ++running_;
    }
    // Signals belong to the main loop: the workers run with all of them blocked.
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (auto& w : workers_) {
        Worker* raw = w.get();
        raw->thread = std::thread([raw] {
            // Keeps running while nothing happens: the stop event ends it.
            event_base_loop(raw->base, EVLOOP_NO_EXIT_ON_EMPTY);
        });
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    spdlog::info("http: {} hit worker(s) serve cached blobs beside the main loop", count);
    return {};
}

void HitWorkers::stop(std::chrono::milliseconds grace, std::function<void()> done) {
    if (running_.load() == 0) {
        if (done) done();
        return;
    }
    on_stopped_ = std::move(done);
    request_stop(grace);
}

void HitWorkers::request_stop(std::chrono::milliseconds grace) {
    for (auto& w : workers_) {
        if (!w->thread.joinable()) continue;
        w->grace_ms = grace.count();
        event_active(w->stop_ev, EV_READ, 0);
    }
}

void HitWorkers::stopped_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<HitWorkers*>(arg);
    if (auto done = std::move(self->on_stopped_)) done();
}

void HitWorkers::handoff_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<HitWorkers*>(arg);
    std::deque<Handoff> batch;
    {
        std::lock_guard lock(self->mu_);
        batch.swap(self->handoffs_);
    }
    static metrics::Counter& handed = metrics::global().counter(
        "drayage_http_handoffs_total",
        "Connections a hit worker handed to the main loop (a request it does not serve).");
    for (Handoff& h : batch) {
        handed.inc();
        self->main_.adopt(h.fd, std::move(h.replay), std::move(h.peer));
    }
}

}  // namespace drayage
