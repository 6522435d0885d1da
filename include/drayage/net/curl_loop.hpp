// libcurl's multi interface driven by a libevent event_base, and one streaming HTTP call on top.
//
// Everything here runs on the loop thread: callbacks are invoked from libevent callbacks, never
// from another thread, and no function blocks. Used by the S3 client and the upstream registry
// client alike.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drayage/util/result.hpp"

struct event_base;
typedef void CURL;  // matches <curl/curl.h>

namespace drayage::net {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// Case-insensitive lookup of the first header named `name`; empty when absent.
std::string_view find_header(const HeaderList& headers, std::string_view name);

// Owns a CURLM and the libevent events that drive it (CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION).
// Destroying it cancels every transfer still registered without calling their callbacks.
class CurlLoop {
public:
    explicit CurlLoop(event_base* base);
    ~CurlLoop();
    CurlLoop(const CurlLoop&) = delete;
    CurlLoop& operator=(const CurlLoop&) = delete;

    event_base* base() const { return base_; }

    // Registers `easy` (configured by the caller, who keeps ownership) and starts it. `done` runs
    // once on the loop with the transfer's CURLcode (as int) after curl finished it; the handle
    // is already removed from the multi then, so `done` may free or re-add it. `abandoned` (may be
    // empty) runs instead of `done` when the loop is destroyed with the transfer still registered,
    // so the owner can release what it kept alive for `done`.
    void add(CURL* easy, std::function<void(int curl_code)> done,
             std::function<void()> abandoned = {});

    // Removes a running transfer without calling its `done`. No-op for an unknown handle.
    void remove(CURL* easy);

    // Resumes a transfer paused by a callback returning CURL_*FUNC_PAUSE (curl_easy_pause(CONT)
    // plus a kick of the multi so the transfer is not left waiting for a socket event). Deferred
    // to the next loop iteration, so it is safe to call from inside a curl callback.
    void unpause(CURL* easy);

    std::size_t running() const;

private:
    struct Impl;
    event_base* base_;
    std::unique_ptr<Impl> impl_;
};

// How one HTTP request is made. Only http:// and https:// URLs are followed, the first one and
// every redirect alike (any other scheme fails the call with a "transport" error, curl code 1,
// before anything is sent), so a URL a peer hands us cannot make drayage speak another protocol.
struct CallOptions {
    std::string method = "GET";
    std::string url;
    HeaderList headers;  // sent as given (no Expect: 100-continue is added)

    // Request body. Either `body` (small, owned, sent with Content-Length) or `body_source`
    // (streamed; with `body_size` >= 0 sent with Content-Length, else chunked). `body_source`
    // fills up to `cap` bytes into `buf` and returns how many; 0 means end of body; returning
    // kBodyPause pauses the upload until HttpCall::resume_upload().
    std::string body;
    // Same as `body` but shared, not copied: callers that keep a body for retries (S3 parts of
    // many MiB) pass it here. Takes precedence over `body` when set.
    std::shared_ptr<const std::string> shared_body;
    std::function<std::size_t(char* buf, std::size_t cap)> body_source;
    std::int64_t body_size = -1;

    bool follow_redirects = false;  // 3xx followed; Authorization is never sent to another host
    int max_redirects = 5;
    bool verify_tls = true;
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds total_timeout{0};       // 0: none (streams may be long)
    std::chrono::milliseconds stall_timeout{30'000};  // fewer than 1 byte/s for this long: abort
                                                      // (curl counts whole seconds, rounded up)
};

constexpr std::size_t kBodyPause = static_cast<std::size_t>(-1);

// The response, as far as it has arrived.
struct CallResponse {
    int status = 0;
    HeaderList headers;
    std::string effective_url;     // after redirects
    int curl_code = 0;             // CURLcode of a failed transfer (28 timeout, 56 reset, ...)
    std::uint64_t body_bytes = 0;  // response body bytes delivered to on_body so far
};

struct CallHandlers {
    // Response head (final, after redirects). Return false to abort the call (on_done then gets
    // an "aborted" error).
    std::function<bool(const CallResponse&)> on_head;
    // A piece of the response body. Return false to pause delivery: no more on_body until
    // HttpCall::resume_download(); the bytes passed in this call have been consumed. While paused
    // the socket is not read, so the peer is slowed by TCP flow control; the stall timeout does
    // not count paused time. on_done may still arrive while paused (the body had fully arrived).
    std::function<bool(std::string_view)> on_body;
    // Exactly once, last. ok() when the exchange completed (any HTTP status); an Error with code
    // "transport" (message from curl: reset, timeout, TLS, DNS...) otherwise.
    std::function<void(Status, const CallResponse&)> on_done;
};

// One streaming HTTP exchange. Keep the shared_ptr while you need control of it; the call keeps
// itself alive until on_done has run. cancel() ends it without calling on_done; it may be called
// from inside the call's own handlers. A call must not outlive its CurlLoop's event_base; when the
// CurlLoop is destroyed first, the call is cancelled (no on_done) and its self-reference released.
class HttpCall : public std::enable_shared_from_this<HttpCall> {
public:
    static std::shared_ptr<HttpCall> start(CurlLoop& loop, CallOptions options,
                                           CallHandlers handlers);
    ~HttpCall();

    void resume_download();
    void resume_upload();
    void cancel();
    bool finished() const;

    struct Impl;
    explicit HttpCall(std::unique_ptr<Impl> impl);

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace drayage::net
