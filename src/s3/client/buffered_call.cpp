// BufferedCall: all attempts of one request with a buffered response; retries with backoff.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "client_impl.hpp"
#include "drayage/net/defer.hpp"
#include "drayage/s3/retry.hpp"

namespace drayage::s3 {

using net::defer;

// All attempts of one buffered request.
class BufferedCall : public std::enable_shared_from_this<BufferedCall> {
public:
    BufferedCall(Client::Impl& client, Request request, std::function<void(Result<Response>)> done)
        : client_(client), request_(std::move(request)), done_(std::move(done)) {}

    void attempt() {
        ++attempts_;
        auto options = client_.prepare(request_);
        if (!options) {
            finish(options.error());
            return;
        }
        response_ = Response{};
        auto self = shared_from_this();
        net::CallHandlers h;
        h.on_head = [self](const net::CallResponse& r) {
            self->response_.status = r.status;
            self->response_.headers = r.headers;
            return true;
        };
        h.on_body = [self](std::string_view piece) {
            // Success bodies here are small XML documents; error bodies are capped.
            if (self->response_.status < 300 || self->response_.body.size() < kMaxErrorBody) {
                self->response_.body.append(piece);
            }
            return true;
        };
        h.on_done = [self](Status s, const net::CallResponse& r) { self->on_done(s, r); };
        call_ = net::HttpCall::start(*client_.loop, std::move(*options), std::move(h));
    }

private:
    void on_done(const Status& s, const net::CallResponse& r) {
        call_.reset();
        if (!s.ok()) {
            Error e = s.error();
            retry_or_fail(std::move(e), AttemptFailure{0, "transport", r.curl_code});
            return;
        }
        response_.status = r.status;
        response_.headers = r.headers;
        bool failed =
            r.status >= 300 || (request_.error_in_200 && is_error_document(response_.body));
        if (!failed) {
            finish(std::move(response_));
            return;
        }
        Error e = parse_error(response_.body, r.status);
        AttemptFailure f{r.status, e.code, 0};
        retry_or_fail(std::move(e), f);
    }

    void retry_or_fail(Error e, const AttemptFailure& f) {
        bool retryable = is_retryable(f, request_.idempotent) && !request_.body_source;
        if (retryable && attempts_ < client_.config.retry.max_attempts) {
            auto delay = backoff_delay(attempts_, client_.config.retry.base_delay,
                                       client_.config.retry.max_delay, random64());
            client_.retries.inc();
            spdlog::debug("s3 {} {}: attempt {} failed ({}), retrying in {} ms", request_.op,
                          request_.key, attempts_, e.to_string(), delay.count());
            auto self = shared_from_this();
            defer(client_.loop->base(), delay, [self] { self->attempt(); });
            return;
        }
        if (retryable) {
            e.message += fmt::format(" (gave up after {} attempts)", attempts_);
        }
        client_.log_failure(request_, e);
        finish(std::move(e));
    }

    void finish(Result<Response> result) {
        auto done = std::move(done_);
        auto self = shared_from_this();
        // Always on a later loop turn than the one that started the operation.
        defer(client_.loop->base(), std::chrono::milliseconds(0),
              [self, done = std::move(done), result = std::move(result)]() mutable {
                  done(std::move(result));
              });
    }

    Client::Impl& client_;
    Request request_;
    std::function<void(Result<Response>)> done_;
    int attempts_ = 0;
    Response response_;
    std::shared_ptr<net::HttpCall> call_;
};

void Client::Impl::execute(Request request, std::function<void(Result<Response>)> done) {
    auto call = std::make_shared<BufferedCall>(*this, std::move(request), std::move(done));
    // Start on the next loop turn so every callback is asynchronous.
    defer(loop->base(), std::chrono::milliseconds(0), [call] { call->attempt(); });
}

}  // namespace drayage::s3
