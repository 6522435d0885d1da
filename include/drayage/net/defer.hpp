// Running a callback on a later turn of a libevent loop.
#pragma once

#include <chrono>
#include <functional>

struct event_base;

namespace drayage::net {

// Runs `fn` on `base`'s loop on its next turn (or after `delay`): so a callback never runs inside
// the call that started an operation (curl refuses new transfers from inside its callbacks), and
// a retry waits without blocking. Logged and dropped only if libevent cannot allocate.
void defer(event_base* base, std::chrono::milliseconds delay, std::function<void()> fn);

}  // namespace drayage::net
