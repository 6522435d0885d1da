// The uncached stream (include/drayage/registry/uncached_stream.hpp): one origin transfer to one
// client, verified on the way.
#include "drayage/registry/uncached_stream.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "drayage/cache/cache.hpp"
#include "drayage/registry/byte_range.hpp"
#include "drayage/util/digest.hpp"

namespace drayage::registry {
namespace {

class UncachedStream : public std::enable_shared_from_this<UncachedStream> {
public:
    UncachedStream(std::shared_ptr<BlobSink> client, std::string digest, std::string range)
        : client_(std::move(client)), digest_(std::move(digest)), range_(std::move(range)) {}

    void start(BlobOrigin& origin, const std::string& repo);

private:
    bool head(const OriginHead& h);
    bool data(std::string_view bytes);
    void done(Status st);
    bool stop_after(bool result);
    void stop();

    std::shared_ptr<BlobSink> client_;
    std::string digest_;
    std::string range_;
    std::shared_ptr<OriginTransfer> transfer_;
    std::optional<digest::Sha256> hash_;
    std::optional<std::uint64_t> size_;  // as the origin announced it
    std::uint64_t first_ = 0;            // the client's span: [first_, end_)
    std::optional<std::uint64_t> end_;   // nullopt: to the end, wherever that is
    std::uint64_t pos_ = 0;              // bytes received from the origin
    char held_ = 0;                      // the span's last byte received, not yet sent
    bool holding_ = false;
    bool stopped_ = false;
};

void UncachedStream::start(BlobOrigin& origin, const std::string& repo) {
    auto self = shared_from_this();
    hash_ = digest::Sha256::start();
    if (!hash_) return client_->send_unavailable("out of memory for a sha256 context");
    client_->on_closed([self] { self->stop(); });
    client_->on_writable([self] {
        if (self->transfer_) self->transfer_->resume();
    });
    OriginSink sink;
    sink.on_head = [self](const OriginHead& h) { return self->head(h); };
    sink.on_data = [self](std::string_view b) { return self->data(b); };
    sink.on_done = [self](Status st) { self->done(st); };
    transfer_ = origin.get(repo, digest_, std::move(sink));
}

bool UncachedStream::head(const OriginHead& h) {
    if (client_->closed()) return false;
    size_ = h.size;
    if (!size_) {
        if (!client_->delimits_unknown_length()) {
            // HTTP/1.0: only the close would end the body, so a failed digest would look
            // complete.
            client_->send_unavailable("blob of unknown length; retry with HTTP/1.1");
            return stop_after(false);
        }
        client_->send_whole(std::nullopt);
        return true;
    }
    auto pr = parse_range(range_, *size_);
    if (!pr) {
        client_->send_unsatisfiable(*size_);
        return stop_after(false);
    }
    if (*pr) {
        first_ = (*pr)->first;
        end_ = (*pr)->last + 1;
        client_->send_span(**pr, *size_);
    } else {
        end_ = size_;
        client_->send_whole(size_);
    }
    return true;
}

bool UncachedStream::data(std::string_view bytes) {
    if (client_->closed()) return true;  // stop() cancels the transfer
    hash_->update(bytes);
    const std::uint64_t at = pos_;
    pos_ += bytes.size();
    // The span's bytes received so far end at `upto`; the last of them waits, either for
    // more bytes or, at the end, for the digest.
    const std::uint64_t upto = end_ ? std::min(pos_, *end_) : pos_;
    const std::uint64_t from = std::max(first_, at);
    if (upto <= from) return true;  // none of these bytes is in the span
    bool more = true;
    if (holding_) more = client_->write(std::string_view(&held_, 1));  // no longer the last
    if (upto - 1 > from) more = client_->write(bytes.substr(from - at, upto - 1 - from)) && more;
    held_ = bytes[upto - 1 - at];
    holding_ = true;
    return more;
}

void UncachedStream::done(Status st) {
    transfer_.reset();
    if (client_->closed()) return stop();
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
        spdlog::warn("uncached transfer of {} to {} cut: {}", digest_, client_->peer(),
                     st.error().to_string());
        client_->abort(st.error());
        return stop();
    }
    if (holding_) client_->write(std::string_view(&held_, 1));
    client_->finish();
    stop();
}

bool UncachedStream::stop_after(bool result) {
    stop();
    return result;
}

void UncachedStream::stop() {
    if (stopped_) return;
    stopped_ = true;
    client_->on_writable({});
    client_->on_closed({});
    if (auto t = std::move(transfer_)) t->cancel();
}

}  // namespace

void stream_uncached(BlobOrigin& origin, const std::string& repo, const std::string& digest,
                     const std::string& range, std::shared_ptr<BlobSink> client) {
    std::make_shared<UncachedStream>(std::move(client), digest, range)->start(origin, repo);
}

}  // namespace drayage::registry
