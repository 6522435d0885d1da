#include "drayage/util/log.hpp"

#include <fcntl.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/sink.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

namespace drayage::log {
namespace {

// Lines are queued in memory by whoever logs and written by one thread of the sink's own, in
// batches: at once for warnings and errors, else every kFlushEvery or when kBatch bytes wait.
// Measured on a 16 KiB cache hit with the access log on: a write() per line, under a mutex the
// loops shared, cost about 4 us of a 9 us request, much of it waiting for that mutex. And the
// loops never block on the destination: past kMaxQueued bytes waiting (a stuck pipe), new lines
// are dropped and counted, and the count is logged once lines go out again.
class BatchSink final : public spdlog::sinks::sink {
public:
    static constexpr std::chrono::milliseconds kFlushEvery{100};
    static constexpr std::size_t kBatch = 256 * 1024;
    static constexpr std::size_t kMaxQueued = 16 * 1024 * 1024;
    // At exit, how long the last lines may take to go out. A destination that takes no more
    // (a full disk under a blocking log driver) must not keep the process from exiting.
    static constexpr std::chrono::seconds kExitGrace{3};

    // Writes to `fd`, closed at the end when `owned`.
    BatchSink(int fd, bool owned) : shared_(std::make_shared<Shared>()) {
        shared_->fd = fd;
        shared_->owned = owned;
        std::thread([s = shared_] { s->run(); }).detach();  // ends when told to, or at exit
    }
    ~BatchSink() override {
        std::unique_lock lock(shared_->mu);
        shared_->stopping = true;
        shared_->wake.notify_one();
        // Waits for what is left to be written, within the grace. Past it the thread is left
        // blocked in write(): it holds its own state, and the process exit ends it.
        shared_->done_cv.wait_for(lock, kExitGrace, [&] { return shared_->done; });
    }

    // From the next batch on, writes go to `fd` (owned), and the current destination is closed
    // if owned: how reopen() moves to a new log file without replacing the logger, which
    // other threads may be using at that moment.
    void switch_to(int fd) {
        Shared& s = *shared_;
        {
            std::lock_guard lock(s.mu);
            if (s.next_fd >= 0) ::close(s.next_fd);  // an earlier switch not made yet: skip it
            s.next_fd = fd;
            // What was logged before the switch still goes to the old destination.
            s.before_switch += s.queued;
            s.queued.clear();
        }
        s.wake.notify_one();
    }

    void log(const spdlog::details::log_msg& msg) override {
        Shared& s = *shared_;
        std::lock_guard lock(s.mu);
        if (s.queued.size() + s.before_switch.size() >= kMaxQueued) {
            ++s.dropped;
            return;
        }
        spdlog::memory_buf_t line;
        formatter_->format(msg, line);
        s.queued.append(line.data(), line.size());
        if (msg.level >= spdlog::level::warn || s.queued.size() >= kBatch) s.wake.notify_one();
    }
    void flush() override {
        // Asks for a write now; the destination is never waited for by the caller.
        shared_->wake.notify_one();
    }
    void set_pattern(const std::string& pattern) override {
        std::lock_guard lock(shared_->mu);
        formatter_ = std::make_unique<spdlog::pattern_formatter>(pattern);
    }
    void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
        std::lock_guard lock(shared_->mu);
        formatter_ = std::move(formatter);
    }

private:
    // Shared by the sink and its writer thread, which may outlive the sink (see ~BatchSink).
    struct Shared {
        std::mutex mu;
        std::condition_variable wake;
        std::condition_variable done_cv;
        // Under mu:
        std::string queued;
        std::string before_switch;  // lines for the destination being left
        int next_fd = -1;           // switch_to()
        std::uint64_t dropped = 0;
        bool stopping = false;
        bool done = false;
        // The writer thread's own:
        int fd = -1;
        bool owned = false;

        void run() {
            std::string out;
            std::string old_out;
            for (;;) {
                std::uint64_t lost = 0;
                bool last = false;
                int next = -1;
                {
                    std::unique_lock lock(mu);
                    wake.wait_for(lock, kFlushEvery, [&] {
                        return stopping || next_fd >= 0 || queued.size() >= kBatch;
                    });
                    out.swap(queued);
                    lost = std::exchange(dropped, 0);
                    last = stopping;
                    next = std::exchange(next_fd, -1);
                    old_out.swap(before_switch);
                }
                if (lost > 0) {
                    out += "drayage: " + std::to_string(lost) +
                           " log lines dropped: the log destination did not keep up\n";
                }
                if (next >= 0) {
                    write_all(old_out);
                    old_out.clear();
                    if (owned) ::close(fd);
                    fd = next;
                    owned = true;
                }
                write_all(out);
                out.clear();
                if (last) break;
            }
            if (owned) ::close(fd);
            std::lock_guard lock(mu);
            done = true;
            done_cv.notify_all();
        }

        void write_all(std::string_view bytes) const {
            while (!bytes.empty()) {
                ssize_t n = ::write(fd, bytes.data(), bytes.size());
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) return;  // the destination failed: this batch is lost, not retried
                bytes.remove_prefix(static_cast<std::size_t>(n));
            }
        }
    };

    std::shared_ptr<Shared> shared_;
    std::unique_ptr<spdlog::formatter> formatter_ =  // under shared_->mu
        std::make_unique<spdlog::pattern_formatter>();
};

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
    std::shared_ptr<BatchSink> sink;
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

// The file of `options`, opened for appending: its descriptor, or the error.
Result<int> open_log_file(const Options& options) {
    int fd = ::open(options.file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        return make_error("log.file",
                          "cannot open log file " + options.file + ": " + std::strerror(errno));
    }
    return fd;
}

Result<std::shared_ptr<BatchSink>> make_sink(const Options& options) {
    if (options.file.empty()) return std::make_shared<BatchSink>(STDERR_FILENO, false);
    auto fd = open_log_file(options);
    if (!fd) return fd.error();
    return std::make_shared<BatchSink>(*fd, true);
}

std::shared_ptr<spdlog::logger> make_logger(const Options& options,
                                            const std::shared_ptr<BatchSink>& sink) {
    sink->set_formatter(make_formatter(options.json));
    auto logger = std::make_shared<spdlog::logger>("drayage", sink);
    spdlog::level::level_enum level = spdlog::level::info;
    parse_level(options.level, level);
    logger->set_level(level);
    logger->flush_on(spdlog::level::warn);  // the sink writes warnings at once anyway
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
    auto sink = make_sink(options);
    if (!sink) return sink.error();
    auto logger = make_logger(options, *sink);
    State& s = state();
    std::lock_guard lock(s.mu);
    s.options = options;
    s.sink = *sink;
    s.logger = logger;
    spdlog::set_default_logger(s.logger);
    return {};
}

Status reopen() {
    State& s = state();
    std::unique_lock lock(s.mu);
    if (s.options.file.empty() || !s.sink) return {};
    auto fd = open_log_file(s.options);
    if (!fd) {
        lock.unlock();
        spdlog::error("log reopen failed, keeping the old file: {}", fd.error().message);
        return fd.error();
    }
    s.sink->switch_to(*fd);
    lock.unlock();
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
