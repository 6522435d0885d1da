// HttpCall: one streaming HTTP exchange on the CurlLoop (curl_loop.hpp): curl options from
// CallOptions, the head, the body in both directions with pausing, and the end of the call.
#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "curl_global.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/util/text.hpp"

namespace drayage::net {

namespace {

using text::iequals;

}  // namespace

using detail::ensure_curl_global;

std::string_view find_header(const HeaderList& headers, std::string_view name) {
    for (const auto& [k, v] : headers) {
        if (iequals(k, name)) {
            return v;
        }
    }
    return {};
}

namespace {

// URLs reach curl from peers too (a token realm in a 401 challenge, a Location of a redirect), and
// curl speaks gopher, ftp, smtp, dict, file... by default: a hostile upstream could make drayage
// send arbitrary bytes to any host and port it can reach, or read local files. Every handle speaks
// HTTP(S) only, also after redirects; anything else fails with CURLE_UNSUPPORTED_PROTOCOL before a
// connection is made.
void restrict_to_http(CURL* easy) {
#if LIBCURL_VERSION_NUM >= 0x075500  // 7.85.0: the _STR options; the bitmask ones are deprecated
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS,
                     static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
}

}  // namespace

struct HttpCall::Impl {
    CurlLoop* loop = nullptr;
    CURL* easy = nullptr;
    curl_slist* header_list = nullptr;
    CallOptions options;
    CallHandlers handlers;
    CallResponse response;
    std::shared_ptr<HttpCall> keepalive;  // set while registered with the loop
    std::size_t body_offset = 0;          // next byte of options.body to send
    bool head_delivered = false;
    bool download_paused = false;
    bool upload_paused = false;
    bool aborted_by_head = false;
    bool cancelled = false;
    bool finished = false;
    int in_callback = 0;  // > 0 while curl is inside one of this transfer's callbacks
    char errbuf[CURL_ERROR_SIZE] = {};

    // The head is delivered once the final response is known: on the first body byte (curl
    // skips bodies of redirects it follows) or at the end for bodyless responses.
    bool deliver_head() {
        if (head_delivered) {
            return !aborted_by_head;
        }
        head_delivered = true;
        char* url = nullptr;
        if (curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK && url != nullptr) {
            response.effective_url = url;
        }
        if (handlers.on_head && !handlers.on_head(response)) {
            aborted_by_head = true;
            return false;
        }
        return true;
    }

    static std::size_t on_header(char* data, std::size_t size, std::size_t n, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        std::size_t len = size * n;
        if (self->cancelled) {
            return 0;
        }
        std::string_view line(data, len);
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
            line.remove_suffix(1);
        }
        if (line.rfind("HTTP/", 0) == 0) {
            // A new response starts (1xx, a followed redirect, or the final one).
            self->response.headers.clear();
            auto sp = line.find(' ');
            self->response.status = sp == std::string_view::npos
                                        ? 0
                                        : std::atoi(std::string(line.substr(sp + 1, 3)).c_str());
            return len;
        }
        auto colon = line.find(':');
        if (colon == std::string_view::npos) {
            return len;
        }
        std::string_view value = text::trim_ows(line.substr(colon + 1));
        self->response.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
        return len;
    }

    struct CallbackScope {
        explicit CallbackScope(Impl* i) : impl(i) { ++impl->in_callback; }
        ~CallbackScope() { --impl->in_callback; }
        CallbackScope(const CallbackScope&) = delete;
        CallbackScope& operator=(const CallbackScope&) = delete;
        Impl* impl;
    };

    static std::size_t on_write(char* data, std::size_t size, std::size_t n, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        CallbackScope scope(self);
        std::size_t len = size * n;
        if (self->cancelled) {
            return 0;
        }
        if (self->download_paused) {
            return CURL_WRITEFUNC_PAUSE;  // curl keeps the bytes and offers them again on resume
        }
        if (!self->deliver_head()) {
            return 0;
        }
        if (self->cancelled) {
            return 0;
        }
        self->response.body_bytes += len;
        bool more = !self->handlers.on_body || self->handlers.on_body(std::string_view(data, len));
        if (self->cancelled) {
            return 0;
        }
        if (!more) {
            self->download_paused = true;
        }
        return len;
    }

    static std::size_t on_read(char* buf, std::size_t size, std::size_t n, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        CallbackScope scope(self);
        std::size_t cap = size * n;
        if (self->cancelled) {
            return CURL_READFUNC_ABORT;
        }
        if (self->options.body_source) {
            std::size_t got = self->options.body_source(buf, cap);
            if (self->cancelled) {
                return CURL_READFUNC_ABORT;
            }
            if (got == kBodyPause) {
                self->upload_paused = true;
                return CURL_READFUNC_PAUSE;
            }
            return got;
        }
        std::string_view body = self->owned_body();
        std::size_t take = std::min(cap, body.size() - self->body_offset);
        std::memcpy(buf, body.data() + self->body_offset, take);
        self->body_offset += take;
        return take;
    }

    // curl rewinds the body when it must resend it (a reused connection that turned out dead, a
    // redirect of a request with a body). Only an owned body can be rewound.
    static int on_seek(void* arg, curl_off_t offset, int origin) {
        auto* self = static_cast<Impl*>(arg);
        if (self->options.body_source || origin != SEEK_SET || offset < 0 ||
            static_cast<std::size_t>(offset) > self->owned_body().size()) {
            return CURL_SEEKFUNC_CANTSEEK;
        }
        self->body_offset = static_cast<std::size_t>(offset);
        return CURL_SEEKFUNC_OK;
    }

    std::string_view owned_body() const {
        return options.shared_body ? std::string_view(*options.shared_body)
                                   : std::string_view(options.body);
    }

    void configure() {
        curl_easy_setopt(easy, CURLOPT_URL, options.url.c_str());
        restrict_to_http(easy);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &Impl::on_header);
        curl_easy_setopt(easy, CURLOPT_HEADERDATA, this);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Impl::on_write);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, this);
        // 256 KiB reads instead of curl's 16 KiB: a cold 1 GiB pull made 65k recv() calls, and
        // the ACKs and wake-ups behind each one cost more than the copy.
        curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 256L * 1024);
        curl_easy_setopt(easy, CURLOPT_READFUNCTION, &Impl::on_read);
        curl_easy_setopt(easy, CURLOPT_READDATA, this);
        curl_easy_setopt(easy, CURLOPT_SEEKFUNCTION, &Impl::on_seek);
        curl_easy_setopt(easy, CURLOPT_SEEKDATA, this);
        // Bodies are passed through untouched (blob bytes are hashed by the caller).
        curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
        curl_easy_setopt(easy, CURLOPT_HTTP_TRANSFER_DECODING, 1L);

        const std::string& m = options.method;
        bool has_body = !owned_body().empty() || static_cast<bool>(options.body_source);
        if (m == "HEAD") {
            curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
        } else if (has_body || m == "PUT" || m == "POST") {
            // Upload mode sends the body through on_read, with Content-Length when known and
            // chunked otherwise; the method line is set explicitly for anything but PUT.
            curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
            curl_off_t size = options.body_source ? static_cast<curl_off_t>(options.body_size)
                                                  : static_cast<curl_off_t>(owned_body().size());
            if (size >= 0) {
                curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE, size);
            }
            if (m != "PUT") {
                curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, m.c_str());
            }
        } else if (m != "GET") {
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, m.c_str());
        }

        bool has_expect = false;
        for (const auto& [k, v] : options.headers) {
            std::string line = v.empty() ? k + ";" : k + ": " + v;
            header_list = curl_slist_append(header_list, line.c_str());
            has_expect = has_expect || iequals(k, "Expect");
        }
        if (!has_expect) {
            // curl would add "Expect: 100-continue" to large uploads and wait for the answer.
            header_list = curl_slist_append(header_list, "Expect:");
        }
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, header_list);

        if (options.follow_redirects) {
            curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);
            curl_easy_setopt(easy, CURLOPT_MAXREDIRS, static_cast<long>(options.max_redirects));
            // curl (>= 7.58) sends a custom Authorization header only to the original host (and,
            // since 7.83, port and scheme); keep it that way explicitly.
            curl_easy_setopt(easy, CURLOPT_UNRESTRICTED_AUTH, 0L);
        }
        long verify = options.verify_tls ? 1L : 0L;
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, verify);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, options.verify_tls ? 2L : 0L);
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                         static_cast<long>(options.connect_timeout.count()));
        if (options.total_timeout.count() > 0) {
            curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                             static_cast<long>(options.total_timeout.count()));
        }
        if (options.stall_timeout.count() > 0) {
            long secs = static_cast<long>((options.stall_timeout.count() + 999) / 1000);
            curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
            curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, secs);
        }
        curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    }

    void on_finished(int code) {
        finished = true;
        std::shared_ptr<HttpCall> self = std::move(keepalive);
        keepalive.reset();
        if (cancelled) {
            return;
        }
        if (code == CURLE_OK) {
            if (!deliver_head()) {
                code = CURLE_WRITE_ERROR;
            }
        }
        if (cancelled) {
            return;
        }
        response.curl_code = code;
        if (code == CURLE_OK) {
            long status = 0;
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
            response.status = static_cast<int>(status);
            if (handlers.on_done) {
                handlers.on_done(Status{}, response);
            }
            return;
        }
        Error error;
        if (aborted_by_head) {
            error = make_error("aborted", "call aborted by its response-head handler");
        } else {
            std::string detail = errbuf[0] != '\0'
                                     ? std::string(errbuf)
                                     : curl_easy_strerror(static_cast<CURLcode>(code));
            error = make_error("transport", fmt::format("{} {}: {} (curl {})", options.method,
                                                        redacted_url(), detail, code));
        }
        if (handlers.on_done) {
            handlers.on_done(std::move(error), response);
        }
    }

    // The URL without its query (presigned URLs carry credentials there).
    std::string redacted_url() const {
        auto q = options.url.find('?');
        return q == std::string::npos ? options.url : options.url.substr(0, q) + "?...";
    }
};

HttpCall::HttpCall(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpCall::~HttpCall() {
    if (!impl_->finished && impl_->loop != nullptr) {
        impl_->loop->remove(impl_->easy);
    }
    if (impl_->easy != nullptr) {
        curl_easy_cleanup(impl_->easy);
    }
    curl_slist_free_all(impl_->header_list);
}

std::shared_ptr<HttpCall> HttpCall::start(CurlLoop& loop, CallOptions options,
                                          CallHandlers handlers) {
    ensure_curl_global();
    auto impl = std::make_unique<Impl>();
    Impl* raw = impl.get();
    raw->loop = &loop;
    raw->options = std::move(options);
    raw->handlers = std::move(handlers);
    raw->easy = curl_easy_init();
    auto call = std::make_shared<HttpCall>(std::move(impl));
    raw->configure();
    raw->keepalive = call;
    loop.add(
        raw->easy, [raw](int code) { raw->on_finished(code); },
        [raw] {
            // The loop is going away: nothing will drive this transfer any more.
            raw->finished = true;
            raw->cancelled = true;
            raw->loop = nullptr;
            auto self = std::move(raw->keepalive);
        });
    return call;
}

void HttpCall::resume_download() {
    if (impl_->finished || !impl_->download_paused) {
        return;
    }
    impl_->download_paused = false;
    impl_->loop->unpause(impl_->easy);
}

void HttpCall::resume_upload() {
    if (impl_->finished || !impl_->upload_paused) {
        return;
    }
    impl_->upload_paused = false;
    impl_->loop->unpause(impl_->easy);
}

void HttpCall::cancel() {
    if (impl_->finished || impl_->cancelled) {
        return;
    }
    impl_->cancelled = true;
    // Removing the handle inside one of its own curl callbacks is not allowed: there the callback
    // sees `cancelled` and aborts the transfer, and on_finished then stays silent. Outside
    // callbacks the handle is removed at once.
    std::shared_ptr<HttpCall> self = impl_->keepalive;
    if (impl_->in_callback == 0) {
        impl_->loop->remove(impl_->easy);
        impl_->finished = true;
        impl_->keepalive.reset();
    }
}

bool HttpCall::finished() const {
    return impl_->finished;
}

}  // namespace drayage::net
