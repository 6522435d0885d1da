// Human sizes and durations as the config file writes them.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::config {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;

// "512MiB", "50GiB", "10MB", "5242880", "1.5GiB", "64k": binary (KiB, MiB, GiB, TiB, PiB, the
// Kubernetes-style Ki/Mi/Gi/Ti/Pi and the one-letter k/m/g/t/p) and decimal (KB, MB, GB, TB, PB)
// units, case-insensitive, optional space before the unit, surrounding blanks ignored. A fraction
// is allowed with a unit ("1.5GiB") and is truncated to whole bytes; a plain number must be whole.
// Errors (Error.code "config.size", message says which): empty, negative, no digits, unknown
// unit, fractional bytes, more than 2^64-1 bytes.
Result<std::uint64_t> parse_size(std::string_view text);

// "250ms", "30s", "5m", "1h", "2h30m", "1.5s", "2h 30m", or a plain integer of seconds. Units are
// h, m, s and ms (Go's time.ParseDuration spelling, so values copied from Distribution configs
// work); components may come in any order and are summed. Errors (Error.code "config.duration"):
// empty, negative, unknown unit (including us/ns: drayage times in milliseconds), a fraction
// finer than a millisecond, overflow.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

// The shortest exact spelling parse_size reads back to the same value: "10GiB", "5MiB", or plain
// bytes ("1000") when no binary unit divides the value.
std::string format_size(std::uint64_t bytes);

// The exact spelling parse_duration reads back: "5m", "1m30s", "1s500ms", "0s".
std::string format_duration(std::chrono::milliseconds duration);

}  // namespace drayage::config
