// Test helpers for the cache module: temp dirs, digests, a loop pump, a paced source.
#pragma once

#include <event2/event.h>
#include <openssl/evp.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "drayage/cache/cache.hpp"

namespace cachetest {

namespace fs = std::filesystem;

inline std::string sha256_digest(std::string_view bytes) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
    std::string out = "sha256:";
    static const char* digits = "0123456789abcdef";
    for (unsigned int i = 0; i < len; ++i) {
        out.push_back(digits[md[i] >> 4]);
        out.push_back(digits[md[i] & 0xf]);
    }
    return out;
}

inline std::string random_bytes(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; i += 8) {
        std::uint64_t v = rng();
        for (std::size_t j = 0; j < 8 && i + j < n; ++j)
            s[i + j] = static_cast<char>(v >> (8 * j));
    }
    return s;
}

struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "drayage-cache-XXXXXX").string();
        path = ::mkdtemp(tmpl.data());
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

struct Base {
    event_base* base = event_base_new();
    ~Base() { event_base_free(base); }
};

// How long a wait may last before the test calls it a hang. Generous: it bounds a hang, it
// says nothing about speed (the machine is shared and may be slow).
inline constexpr std::chrono::seconds kHangGuard{120};

// Runs the loop until `done()` or until the hang guard trips (returns false then; the caller
// REQUIREs the result, so a hang fails the test instead of blocking CI).
inline bool pump(event_base* base, const std::function<bool()>& done,
                 const std::function<void()>& each = {}) {
    auto tick = [](evutil_socket_t, short, void*) {};
    event* timer = event_new(base, -1, EV_PERSIST, tick, nullptr);
    timeval tv{0, 2000};
    event_add(timer, &tv);
    auto guard = std::chrono::steady_clock::now() + kHangGuard;
    bool ok = true;
    while (!done()) {
        if (std::chrono::steady_clock::now() > guard) {
            ok = false;
            break;
        }
        if (each) each();
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(timer);
    return ok;
}

// Waits (sleeping, not running a loop) until other threads make `done()` true, or until the
// hang guard trips: returns false then, for the caller to check once it has stopped and joined
// its threads.
inline bool wait_for(const std::function<bool()>& done) {
    auto guard = std::chrono::steady_clock::now() + kHangGuard;
    while (!done()) {
        if (std::chrono::steady_clock::now() > guard) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

// Drives bytes into a fill in slices, honouring append()'s false and the resume callback.
struct Source {
    Source(std::shared_ptr<drayage::cache::CacheFill> f, std::string d)
        : fill(std::move(f)), data(std::move(d)) {}
    std::shared_ptr<drayage::cache::CacheFill> fill;
    std::string data;
    std::size_t slice = 64 * 1024;
    std::size_t sent = 0;
    std::size_t fail_at = std::string::npos;  // fail() once this many bytes were sent
    bool paused = false;
    bool cancelled = false;
    bool finished = false;
    std::uint64_t pauses = 0;

    void attach() {
        fill->set_resume_callback([this] { paused = false; });
        fill->set_cancel_callback([this] { cancelled = true; });
    }
    // One step; returns true when there is nothing more to do.
    bool step() {
        if (finished || cancelled) return true;
        if (paused) return false;
        if (sent >= fail_at) {
            fill->fail(drayage::make_error("test.source", "connection reset"));
            finished = true;
            return true;
        }
        if (sent == data.size()) {
            fill->finish();
            finished = true;
            return true;
        }
        std::size_t n = std::min(slice, data.size() - sent);
        if (fail_at != std::string::npos) n = std::min(n, fail_at - sent);
        bool more = fill->append(std::string_view(data).substr(sent, n));
        sent += n;
        if (!more && !fill->done()) {
            paused = true;
            ++pauses;
        }
        return false;
    }
};

// Reads a reader to its end at a pace of `per_step` bytes per call to step().
struct Sink {
    explicit Sink(std::unique_ptr<drayage::cache::BlobReader> r) : reader(std::move(r)) {}
    std::unique_ptr<drayage::cache::BlobReader> reader;
    std::string got;
    std::size_t per_step = 1 << 20;
    bool ended = false;
    bool failed = false;
    drayage::Error error;
    bool woken = false;

    void attach() {
        reader->on_readable([this] { woken = true; });
    }
    bool done() const { return ended || failed; }
    void step() {
        std::size_t budget = per_step;
        while (!done() && budget > 0) {
            auto r = reader->read(budget);
            using K = drayage::cache::ReadResult::Kind;
            if (r.kind == K::data) {
                got.append(r.bytes);
                budget -= std::min(budget, r.bytes.size());
            } else if (r.kind == K::end) {
                ended = true;
            } else if (r.kind == K::error) {
                failed = true;
                error = r.error;
            } else {
                break;
            }
        }
    }
};

}  // namespace cachetest
