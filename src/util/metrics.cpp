#include "drayage/util/metrics.hpp"

#include <fmt/format.h>

#include <cstdlib>

namespace drayage::metrics {
namespace {

std::string escape_label(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

std::string render_labels(const Labels& labels) {
    if (labels.empty()) return {};
    std::string out = "{";
    for (size_t i = 0; i < labels.size(); ++i) {
        if (i) out += ',';
        out += labels[i].first + "=\"" + escape_label(labels[i].second) + "\"";
    }
    return out + "}";
}

}  // namespace

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
    std::lock_guard lock(mu_);
    auto [it, inserted] = families_.try_emplace(name);
    Family& f = it->second;
    if (inserted) {
        f.help = help;
        f.is_counter = true;
    } else if (!f.is_counter) {
        std::abort();
    }
    auto& slot = f.counters[labels];
    if (!slot) slot = std::make_unique<Counter>();
    return *slot;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
    std::lock_guard lock(mu_);
    auto [it, inserted] = families_.try_emplace(name);
    Family& f = it->second;
    if (inserted) {
        f.help = help;
        f.is_counter = false;
    } else if (f.is_counter) {
        std::abort();
    }
    auto& slot = f.gauges[labels];
    if (!slot) slot = std::make_unique<Gauge>();
    return *slot;
}

std::string Registry::render() const {
    std::lock_guard lock(mu_);
    std::string out;
    for (const auto& [name, f] : families_) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, f.help, name,
                           f.is_counter ? "counter" : "gauge");
        if (f.is_counter) {
            for (const auto& [labels, c] : f.counters)
                out += fmt::format("{}{} {}\n", name, render_labels(labels), c->value());
        } else {
            for (const auto& [labels, g] : f.gauges)
                out += fmt::format("{}{} {}\n", name, render_labels(labels), g->value());
        }
    }
    return out;
}

Registry& global() {
    static Registry r;
    return r;
}

}  // namespace drayage::metrics
