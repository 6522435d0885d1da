// Process-wide metrics in the Prometheus text exposition format (version 0.0.4).
//
// Families are registered once (name, help, type); series are looked up by their label values and
// live for the process's lifetime, so callers may keep the returned reference. Updates are atomic
// (the LMDB writer thread updates cache metrics); registration and rendering take a mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace drayage::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
public:
    void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> value_{0};
};

class Gauge {
public:
    void add(std::int64_t n) { value_.fetch_add(n, std::memory_order_relaxed); }
    void set(std::int64_t n) { value_.store(n, std::memory_order_relaxed); }
    std::int64_t value() const { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::int64_t> value_{0};
};

class Registry {
public:
    // Returns the series of `name` with `labels`, creating family and series on first use.
    // Calling with the same name but another type is a programming error (aborts).
    Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
    Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});

    // Every family, sorted by name, series sorted by labels.
    std::string render() const;

private:
    struct Family {
        std::string help;
        bool is_counter = true;
        std::map<Labels, std::unique_ptr<Counter>> counters;
        std::map<Labels, std::unique_ptr<Gauge>> gauges;
    };
    mutable std::mutex mu_;
    std::map<std::string, Family> families_;
};

// The registry /metrics renders.
Registry& global();

}  // namespace drayage::metrics
