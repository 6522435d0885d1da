// StreamedRead: a GET whose body goes to the caller as it arrives; a GET that breaks after
// delivering bytes resumes where it stopped (Client::get).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "client_impl.hpp"
#include "drayage/net/defer.hpp"
#include "drayage/s3/retry.hpp"

namespace drayage::s3 {

namespace {

using net::defer;

std::string content_range_total(std::string_view content_range) {
    // "bytes 0-99/1234"
    auto slash = content_range.rfind('/');
    return slash == std::string_view::npos ? std::string()
                                           : std::string(content_range.substr(slash + 1));
}

}  // namespace

// A streamed GET with transparent resume (see Client::get).
class StreamedRead : public ObjectRead, public std::enable_shared_from_this<StreamedRead> {
public:
    StreamedRead(Client::Impl& client, std::string key, std::optional<ByteRange> range,
                 ReadHandlers handlers)
        : client_(client), key_(std::move(key)), range_(range), handlers_(std::move(handlers)) {}

    void attempt() {
        if (cancelled_) {
            return;
        }
        ++attempts_;
        Request r;
        r.op = "GetObject";
        r.method = "GET";
        r.key = key_;
        if (delivered_ > 0) {
            ByteRange rest{(range_ ? range_->first : 0) + delivered_,
                           range_ ? range_->last : std::nullopt};
            r.headers.emplace_back("Range", range_header(rest));
            if (!info_.etag.empty()) {
                r.headers.emplace_back("If-Match", info_.etag);  // same object, or 412
            }
        } else if (range_) {
            r.headers.emplace_back("Range", range_header(*range_));
        }
        request_ = r;
        auto options = client_.prepare(r);
        if (!options) {
            fail(options.error());
            return;
        }
        status_ = 0;
        error_body_.clear();
        auto self = shared_from_this();
        net::CallHandlers h;
        h.on_head = [self](const net::CallResponse& resp) { return self->on_head(resp); };
        h.on_body = [self](std::string_view piece) { return self->on_body(piece); };
        h.on_done = [self](Status s, const net::CallResponse& resp) { self->on_done(s, resp); };
        call_ = net::HttpCall::start(*client_.loop, std::move(*options), std::move(h));
    }

    void resume() override {
        if (!paused_) {
            return;
        }
        paused_ = false;
        if (call_) {
            call_->resume_download();
        }
    }

    void cancel() override {
        cancelled_ = true;
        if (call_) {
            call_->cancel();
            call_.reset();
        }
    }

    std::uint64_t delivered() const override { return delivered_; }

private:
    bool on_head(const net::CallResponse& resp) {
        status_ = resp.status;
        if (status_ >= 300) {
            return true;  // the error body is collected and parsed in on_done
        }
        if (head_sent_) {
            // A resumed attempt must continue where we were, nothing else.
            if (status_ != 206) {
                mismatch_ = true;
                return false;
            }
            return true;
        }
        info_.status = status_;
        info_.size = to_u64(net::find_header(resp.headers, "Content-Length"));
        info_.total_size = info_.size;
        if (status_ == 206) {
            auto total = content_range_total(net::find_header(resp.headers, "Content-Range"));
            if (!total.empty() && total != "*") {
                info_.total_size = to_u64(total);
            }
        }
        info_.etag = std::string(net::find_header(resp.headers, "ETag"));
        info_.content_type = std::string(net::find_header(resp.headers, "Content-Type"));
        info_.last_modified = std::string(net::find_header(resp.headers, "Last-Modified"));
        head_sent_ = true;
        if (handlers_.on_head) {
            handlers_.on_head(info_);
        }
        return !cancelled_;
    }

    bool on_body(std::string_view piece) {
        if (status_ >= 300) {
            if (error_body_.size() < kMaxErrorBody) {
                error_body_.append(piece);
            }
            return true;
        }
        delivered_ += piece.size();
        bool more = !handlers_.on_body || handlers_.on_body(piece);
        if (!more) {
            paused_ = true;
        }
        return more;
    }

    void on_done(const Status& s, const net::CallResponse& resp) {
        call_.reset();
        if (cancelled_) {
            return;
        }
        if (mismatch_) {
            fail(make_error(
                "ResumeFailed",
                fmt::format("resumed GET of {} answered HTTP {} instead of 206", key_, status_),
                status_));
            return;
        }
        if (!s.ok()) {
            retry_or_fail(s.error(), AttemptFailure{0, "transport", resp.curl_code});
            return;
        }
        if (resp.status >= 300) {
            Error e = parse_error(error_body_, resp.status);
            retry_or_fail(e, AttemptFailure{resp.status, e.code, 0});
            return;
        }
        auto done = std::move(handlers_.on_done);
        if (done) {
            done(Status{});
        }
    }

    void retry_or_fail(Error e, const AttemptFailure& f) {
        if (is_retryable(f, true) && attempts_ < client_.config.retry.max_attempts) {
            auto delay = backoff_delay(attempts_, client_.config.retry.base_delay,
                                       client_.config.retry.max_delay, random64());
            client_.retries.inc();
            spdlog::info(
                "s3 GetObject {}: attempt {} failed after {} bytes ({}); resuming in {} ms", key_,
                attempts_, delivered_, e.to_string(), delay.count());
            auto self = shared_from_this();
            defer(client_.loop->base(), delay, [self] { self->attempt(); });
            return;
        }
        fail(std::move(e));
    }

    void fail(Error e) {
        client_.log_failure(request_, e);
        auto done = std::move(handlers_.on_done);
        auto self = shared_from_this();
        defer(client_.loop->base(), std::chrono::milliseconds(0),
              [self, done = std::move(done), e = std::move(e)]() mutable {
                  if (done && !self->cancelled_) {
                      done(std::move(e));
                  }
              });
    }

    Client::Impl& client_;
    std::string key_;
    std::optional<ByteRange> range_;
    ReadHandlers handlers_;
    Request request_;
    ObjectInfo info_;
    std::shared_ptr<net::HttpCall> call_;
    std::string error_body_;
    std::uint64_t delivered_ = 0;
    int attempts_ = 0;
    int status_ = 0;
    bool head_sent_ = false;
    bool paused_ = false;
    bool cancelled_ = false;
    bool mismatch_ = false;
};

std::shared_ptr<ObjectRead> Client::get(std::string key, std::optional<ByteRange> range,
                                        ReadHandlers handlers) {
    auto read = std::make_shared<StreamedRead>(*impl_, std::move(key), range, std::move(handlers));
    defer(impl_->loop->base(), std::chrono::milliseconds(0), [read] { read->attempt(); });
    return read;
}

}  // namespace drayage::s3
