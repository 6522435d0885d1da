// libFuzzer target: random bytes into RequestParser, split at fuzzer-chosen points, with pauses
// and body limits along the way. Finds crashes, hangs and sanitizer reports; and checks the
// invariants the server relies on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "drayage/http/parser.hpp"

namespace {

struct Callbacks : drayage::http::RequestParser::Callbacks {
    drayage::http::RequestParser* parser = nullptr;
    std::uint8_t mode = 0;
    std::uint64_t heads = 0;
    std::uint64_t completes = 0;
    bool in_message = false;

    void on_request_head(drayage::http::Request&& r) override {
        // Framing is never ambiguous once the head is accepted.
        if (r.chunked && r.content_length) std::abort();
        // No line structure leaks into a field: no CR, LF or NUL in a name or value.
        for (const auto& [name, value] : r.headers) {
            static constexpr std::string_view kLineBytes("\r\n\0", 3);
            if (name.find_first_of(kLineBytes) != std::string::npos ||
                value.find_first_of(kLineBytes) != std::string::npos) {
                std::abort();
            }
        }
        if (in_message) std::abort();
        in_message = true;
        ++heads;
        if (mode & 1) parser->pause();
        if (mode & 2) parser->set_body_limit(16);
    }
    void on_body(std::string_view data) override {
        if (!in_message || data.empty()) std::abort();
        if (mode & 4) parser->pause();
    }
    void on_message_complete() override {
        if (!in_message) std::abort();
        in_message = false;
        ++completes;
        if (mode & 8) parser->pause();
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    drayage::config::HttpLimits limits;
    limits.max_request_line = 64 + data[0];
    limits.max_header_bytes = 256 + 8 * data[0];
    limits.max_headers = 4 + (data[0] & 15);
    Callbacks cb;
    cb.mode = data[1];
    drayage::http::RequestParser parser(limits, cb);
    cb.parser = &parser;
    std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
    // Split points come from the input itself so the fuzzer controls them.
    std::size_t step = 1 + (data[0] % 7);
    while (!in.empty() && !parser.failed()) {
        std::size_t n = parser.feed(in.substr(0, step));
        if (n > step) std::abort();
        in.remove_prefix(n);
        if (parser.paused()) {
            parser.resume();
        } else if (n == 0 && !parser.failed()) {
            std::abort();  // neither paused nor failed, yet nothing consumed: a hang
        }
        step = 1 + (step * 31 + n) % 113;
    }
    if (parser.failed()) {
        int status = parser.error()->status;
        if (status < 400 || status > 599) std::abort();
    }
    if (cb.completes > cb.heads) std::abort();
    (void)parser.finish();
    return 0;
}
