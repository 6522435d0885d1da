#include "uncached_stream.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "blob_serving.hpp"
#include "drayage/cache/cache.hpp"
#include "drayage/registry/front.hpp"
#include "responses.hpp"

namespace drayage::registry::front {

UncachedStream::UncachedStream(std::shared_ptr<http::Exchange> ex, std::string digest,
                               std::string range, std::string head_lines)
    : ex_(std::move(ex)),
      digest_(std::move(digest)),
      range_(std::move(range)),
      head_lines_(std::move(head_lines)) {}

void UncachedStream::start(BlobOrigin& origin, const std::string& repo) {
    auto self = shared_from_this();
    hash_ = digest::Sha256::start();
    if (!hash_) return send_error(*ex_, 503, "UNAVAILABLE", "out of memory for a sha256 context");
    ex_->on_closed([self] { self->stop(); });
    ex_->on_writable([self] {
        if (self->transfer_) self->transfer_->resume();
    });
    OriginSink sink;
    sink.on_head = [self](const OriginHead& h) { return self->head(h); };
    sink.on_data = [self](std::string_view b) { return self->data(b); };
    sink.on_done = [self](Status st) { self->done(st); };
    transfer_ = origin.get(repo, digest_, std::move(sink));
}

bool UncachedStream::head(const OriginHead& h) {
    if (ex_->closed()) return false;
    size_ = h.size;
    if (!size_) {
        if (!ex_->delimits_unknown_length()) {
            // HTTP/1.0: only the close would end the body, so a failed digest would look
            // complete.
            send_error(*ex_, 503, "UNAVAILABLE", "blob of unknown length; retry with HTTP/1.1");
            return stop_after(false);
        }
        ex_->send_head_lines(200, head_lines_, std::nullopt);
        return true;
    }
    auto pr = parse_range(range_, *size_);
    if (!pr) {
        send_range_not_satisfiable(*ex_, *size_);
        return stop_after(false);
    }
    if (*pr) {
        first_ = (*pr)->first;
        end_ = (*pr)->last + 1;
        add_content_range(head_lines_, **pr, *size_);
        ex_->send_head_lines(206, head_lines_, *end_ - first_);
    } else {
        end_ = size_;
        ex_->send_head_lines(200, head_lines_, size_);
    }
    return true;
}

bool UncachedStream::data(std::string_view bytes) {
    if (ex_->closed()) return true;  // stop() cancels the transfer
    hash_->update(bytes);
    const std::uint64_t at = pos_;
    pos_ += bytes.size();
    // The span's bytes received so far end at `upto`; the last of them waits, either for
    // more bytes or, at the end, for the digest.
    const std::uint64_t upto = end_ ? std::min(pos_, *end_) : pos_;
    const std::uint64_t from = std::max(first_, at);
    if (upto <= from) return true;  // none of these bytes is in the span
    bool more = true;
    if (holding_) more = ex_->write(std::string_view(&held_, 1));  // no longer the last
    if (upto - 1 > from) more = ex_->write(bytes.substr(from - at, upto - 1 - from)) && more;
    held_ = bytes[upto - 1 - at];
    holding_ = true;
    return more;
}

void UncachedStream::done(Status st) {
    transfer_.reset();
    if (ex_->closed()) return stop();
    if (st && size_ && pos_ != *size_) {
        st = make_error("UNKNOWN", "origin sent " + std::to_string(pos_) + " of " +
                                       std::to_string(*size_) + " bytes");
    }
    if (st) {
        std::string got = "sha256:" + hash_->finish_hex();
        if (got != digest_) {
            st = make_error(cache::kErrDigestMismatch, "bytes of " + digest_ + " hash to " + got);
        }
    }
    if (!st) {
        spdlog::warn("uncached transfer of {} to {} cut: {}", digest_, ex_->request().peer,
                     st.error().to_string());
        ex_->set_outcome("cut:" + st.error().code);
        ex_->abort();
        return stop();
    }
    if (holding_) ex_->write(std::string_view(&held_, 1));
    ex_->finish();
    stop();
}

bool UncachedStream::stop_after(bool result) {
    stop();
    return result;
}

void UncachedStream::stop() {
    if (stopped_) return;
    stopped_ = true;
    ex_->on_writable({});
    ex_->on_closed({});
    if (auto t = std::move(transfer_)) t->cancel();
}

}  // namespace drayage::registry::front
