#include "drayage/net/defer.hpp"

#include <event2/event.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <utility>

namespace drayage::net {

void defer(event_base* base, std::chrono::milliseconds delay, std::function<void()> fn) {
    auto* heap = new std::function<void()>(std::move(fn));
    timeval tv{static_cast<time_t>(delay.count() / 1000),
               static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
    int rc = event_base_once(
        base, -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* arg) {
            std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
            (*f)();
        },
        heap, &tv);
    if (rc != 0) {
        // Only when libevent cannot allocate; there is no way to deliver the callback later.
        spdlog::critical("event_base_once failed; a deferred callback is lost");
        delete heap;
    }
}

}  // namespace drayage::net
