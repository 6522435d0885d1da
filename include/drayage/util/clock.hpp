// Clock readings shared by the modules: wall-clock unix seconds (stored and compared across
// restarts) and steady-clock nanoseconds (for deadlines kept in an atomic).
#pragma once

#include <chrono>
#include <cstdint>

namespace drayage::clock {

inline std::int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

inline std::int64_t steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace drayage::clock
