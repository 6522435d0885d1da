// libcurl's multi interface on a libevent loop: curl tells us which sockets and timeout it wants
// (SOCKETFUNCTION/TIMERFUNCTION), libevent tells curl when they fire (curl_multi_socket_action).
// One streaming call on it (HttpCall) is http_call.cpp.
#include "drayage/net/curl_loop.hpp"

#include <curl/curl.h>
#include <event2/event.h>
#include <spdlog/spdlog.h>

#include <map>
#include <set>

#include "curl_global.hpp"
#include "drayage/net/defer.hpp"

namespace drayage::net {

namespace detail {

// curl needs curl_global_init once before any other call; C++ static init makes it once.
struct CurlGlobal {
    CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};
void ensure_curl_global() {
    static CurlGlobal global;
}

}  // namespace detail

using detail::ensure_curl_global;

// ---------------------------------------------------------------------------------------------
// CurlLoop

struct CurlLoop::Impl {
    // One per socket curl watches; freed on CURL_POLL_REMOVE or with the loop.
    struct SocketWatch {
        Impl* impl = nullptr;
        curl_socket_t fd = CURL_SOCKET_BAD;
        event* ev = nullptr;
    };
    struct Transfer {
        std::function<void(int)> done;
        std::function<void()> abandoned;
    };

    event_base* base = nullptr;
    CURLM* multi = nullptr;
    event* timer = nullptr;
    event* kick = nullptr;  // runs deferred unpauses
    std::map<CURL*, Transfer> transfers;
    std::set<CURL*> to_unpause;
    std::set<SocketWatch*> watches;
    int still_running = 0;

    static int on_socket(CURL* /*easy*/, curl_socket_t fd, int what, void* userp, void* socketp) {
        auto* self = static_cast<Impl*>(userp);
        auto* watch = static_cast<SocketWatch*>(socketp);
        if (what == CURL_POLL_REMOVE) {
            if (watch != nullptr) {
                self->free_watch(watch);
            }
            return 0;
        }
        if (watch == nullptr) {
            watch = new SocketWatch{self, fd, nullptr};
            self->watches.insert(watch);
            curl_multi_assign(self->multi, fd, watch);
        }
        if (watch->ev != nullptr) {
            event_free(watch->ev);
        }
        short kinds = EV_PERSIST;
        if (what & CURL_POLL_IN) {
            kinds |= EV_READ;
        }
        if (what & CURL_POLL_OUT) {
            kinds |= EV_WRITE;
        }
        watch->ev = event_new(self->base, fd, kinds, &Impl::on_event, watch);
        event_add(watch->ev, nullptr);
        return 0;
    }

    void free_watch(SocketWatch* watch) {
        if (watch->ev != nullptr) {
            event_free(watch->ev);
        }
        curl_multi_assign(multi, watch->fd, nullptr);
        watches.erase(watch);
        delete watch;
    }

    static int on_timer_change(CURLM* /*multi*/, long timeout_ms, void* userp) {
        auto* self = static_cast<Impl*>(userp);
        if (timeout_ms < 0) {
            evtimer_del(self->timer);
            return 0;
        }
        timeval tv{timeout_ms / 1000, static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
        evtimer_add(self->timer, &tv);
        return 0;
    }

    static void on_event(evutil_socket_t fd, short kinds, void* arg) {
        auto* watch = static_cast<SocketWatch*>(arg);
        Impl* self = watch->impl;  // `watch` may be freed inside socket_action
        int action = 0;
        if (kinds & EV_READ) {
            action |= CURL_CSELECT_IN;
        }
        if (kinds & EV_WRITE) {
            action |= CURL_CSELECT_OUT;
        }
        curl_multi_socket_action(self->multi, fd, action, &self->still_running);
        self->reap();
    }

    static void on_timeout(evutil_socket_t /*fd*/, short /*kinds*/, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        curl_multi_socket_action(self->multi, CURL_SOCKET_TIMEOUT, 0, &self->still_running);
        self->reap();
    }

    static void on_kick(evutil_socket_t /*fd*/, short /*kinds*/, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        std::set<CURL*> pending;
        pending.swap(self->to_unpause);
        for (CURL* easy : pending) {
            if (self->transfers.count(easy) != 0) {
                curl_easy_pause(easy, CURLPAUSE_CONT);
            }
        }
        // curl_easy_pause may have delivered buffered data and set a timeout; let the multi act
        // on it now rather than waiting for a socket event that may never come.
        curl_multi_socket_action(self->multi, CURL_SOCKET_TIMEOUT, 0, &self->still_running);
        self->reap();
    }

    // Hands finished transfers to their owners. Runs outside any curl callback, so `done` may
    // add, remove or free handles.
    void reap() {
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            CURL* easy = msg->easy_handle;
            int code = static_cast<int>(msg->data.result);
            curl_multi_remove_handle(multi, easy);
            to_unpause.erase(easy);
            auto it = transfers.find(easy);
            if (it == transfers.end()) {
                continue;
            }
            auto done = std::move(it->second.done);
            transfers.erase(it);
            if (done) {
                done(code);
            }
        }
    }
};

CurlLoop::CurlLoop(event_base* base) : base_(base), impl_(std::make_unique<Impl>()) {
    ensure_curl_global();
    impl_->base = base;
    impl_->multi = curl_multi_init();
    impl_->timer = evtimer_new(base, &Impl::on_timeout, impl_.get());
    impl_->kick = evtimer_new(base, &Impl::on_kick, impl_.get());
    curl_multi_setopt(impl_->multi, CURLMOPT_SOCKETFUNCTION, &Impl::on_socket);
    curl_multi_setopt(impl_->multi, CURLMOPT_SOCKETDATA, impl_.get());
    curl_multi_setopt(impl_->multi, CURLMOPT_TIMERFUNCTION, &Impl::on_timer_change);
    curl_multi_setopt(impl_->multi, CURLMOPT_TIMERDATA, impl_.get());
}

CurlLoop::~CurlLoop() {
    auto transfers = std::move(impl_->transfers);
    impl_->transfers.clear();
    for (auto& [easy, transfer] : transfers) {
        curl_multi_remove_handle(impl_->multi, easy);
    }
    for (auto& [easy, transfer] : transfers) {
        if (transfer.abandoned) {
            transfer.abandoned();
        }
    }
    curl_multi_cleanup(impl_->multi);
    for (auto* watch : std::set<Impl::SocketWatch*>(impl_->watches)) {
        if (watch->ev != nullptr) {
            event_free(watch->ev);
        }
        delete watch;
    }
    event_free(impl_->timer);
    event_free(impl_->kick);
}

void CurlLoop::add(CURL* easy, std::function<void(int)> done, std::function<void()> abandoned) {
    impl_->transfers[easy] = Impl::Transfer{std::move(done), std::move(abandoned)};
    CURLMcode rc = curl_multi_add_handle(impl_->multi, easy);
    if (rc != CURLM_OK) {
        // Only on misuse (handle already added) or out of memory; report as a failed transfer on
        // the next loop turn so `done` never runs inside add().
        spdlog::error("curl_multi_add_handle: {}", curl_multi_strerror(rc));
        auto it = impl_->transfers.find(easy);
        auto failed = std::move(it->second.done);
        impl_->transfers.erase(it);
        defer(base_, std::chrono::milliseconds(0), [failed = std::move(failed)] {
            if (failed) failed(CURLE_FAILED_INIT);
        });
    }
}

void CurlLoop::remove(CURL* easy) {
    if (impl_->transfers.erase(easy) == 0) {
        return;
    }
    impl_->to_unpause.erase(easy);
    curl_multi_remove_handle(impl_->multi, easy);
}

void CurlLoop::unpause(CURL* easy) {
    if (impl_->transfers.count(easy) == 0) {
        return;
    }
    impl_->to_unpause.insert(easy);
    timeval zero{0, 0};
    evtimer_add(impl_->kick, &zero);
}

std::size_t CurlLoop::running() const {
    return impl_->transfers.size();
}

}  // namespace drayage::net
