#include "drayage/util/log.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <memory>
#include <mutex>

namespace drayage::log {
namespace {

// Writes the message payload JSON-escaped, so a JSON line stays valid whatever a client sent.
class JsonPayloadFlag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&,
                spdlog::memory_buf_t& dest) override {
        std::string escaped = json_escape(std::string_view(msg.payload.data(), msg.payload.size()));
        dest.append(escaped.data(), escaped.data() + escaped.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override {
        return std::make_unique<JsonPayloadFlag>();
    }
};

struct State {
    std::mutex mu;
    Options options;
    std::shared_ptr<spdlog::logger> logger;
};

State& state() {
    static State s;
    return s;
}

std::unique_ptr<spdlog::formatter> make_formatter(bool json) {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    if (json) {
        f->add_flag<JsonPayloadFlag>('*');
        f->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","msg":"%*"})");
    } else {
        f->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %l %v");
    }
    return f;
}

Result<std::shared_ptr<spdlog::logger>> make_logger(const Options& options) {
    spdlog::sink_ptr sink;
    if (options.file.empty()) {
        sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    } else {
        try {
            sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.file, false);
        } catch (const spdlog::spdlog_ex& e) {
            return make_error("log.file", "cannot open log file " + options.file + ": " + e.what());
        }
    }
    sink->set_formatter(make_formatter(options.json));
    auto logger = std::make_shared<spdlog::logger>("drayage", std::move(sink));
    spdlog::level::level_enum level = spdlog::level::info;
    parse_level(options.level, level);
    logger->set_level(level);
    logger->flush_on(spdlog::level::info);
    return logger;
}

}  // namespace

bool parse_level(const std::string& name, spdlog::level::level_enum& out) {
    static const std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
        {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
        {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
        {"error", spdlog::level::err},   {"off", spdlog::level::off},
    };
    for (const auto& [n, l] : kLevels) {
        if (name == n) {
            out = l;
            return true;
        }
    }
    return false;
}

Status init(const Options& options) {
    auto logger = make_logger(options);
    if (!logger) return logger.error();
    State& s = state();
    std::lock_guard lock(s.mu);
    s.options = options;
    s.logger = *logger;
    spdlog::set_default_logger(s.logger);
    return {};
}

Status reopen() {
    State& s = state();
    Options options;
    {
        std::lock_guard lock(s.mu);
        options = s.options;
    }
    if (options.file.empty()) return {};
    auto logger = make_logger(options);
    if (!logger) {
        spdlog::error("log reopen failed, keeping the old file: {}", logger.error().message);
        return logger.error();
    }
    std::lock_guard lock(s.mu);
    s.logger = *logger;
    spdlog::set_default_logger(s.logger);
    spdlog::info("log file reopened");
    return {};
}

std::string json_escape(std::string_view in) {
    std::string out;
    out.reserve(in.size() + 8);
    for (unsigned char c : in) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    static const char* kHex = "0123456789abcdef";
                    out += "\\u00";
                    out += kHex[c >> 4];
                    out += kHex[c & 0xf];
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out;
}

void access(const AccessRecord& r) {
    if (!spdlog::should_log(spdlog::level::info)) return;
    double ms = static_cast<double>(r.duration.count()) / 1000.0;
    // The same fields in both formats; in JSON mode the whole line is escaped into "msg", so keep
    // it key=value shaped to stay greppable and parseable either way.
    spdlog::info(
        "access peer={} method={} path=\"{}\" status={} in={} out={} ms={:.3f} outcome={}{}{}",
        r.peer, r.method, r.path, r.status, r.bytes_in, r.bytes_out, ms,
        r.outcome.empty() ? std::string_view("-") : r.outcome,
        r.user.empty() ? std::string_view() : std::string_view(" user="), r.user);
}

}  // namespace drayage::log
