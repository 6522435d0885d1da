// Human sizes and durations as the config file writes them.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "drayage/util/result.hpp"

namespace drayage::config {

// "512MiB", "50GiB", "10MB", "5242880", "1.5GiB", "64k": binary (KiB, MiB, GiB, TiB, and the
// one-letter k/m/g/t) and decimal (KB, MB, GB, TB) units, optional space before the unit.
// Errors: empty, negative, unknown unit, overflow.
Result<std::uint64_t> parse_size(std::string_view text);

// "250ms", "30s", "5m", "1h", "2h30m", or a plain integer of seconds.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace drayage::config
