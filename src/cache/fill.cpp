// BlobReader and CacheFill: one fill's bytes on their way to the writer, and the readers that
// follow it (or read a complete blob). The Cache's own side is in cache.cpp.
#include <algorithm>
#include <utility>

#include "cache_impl.hpp"
#include "drayage/cache/cache.hpp"
#include "drayage/util/log.hpp"
#include "reader_core.hpp"

namespace drayage::cache {

// ---------------------------------------------------------------------------------------------
// BlobReader

BlobReader::BlobReader(std::shared_ptr<ReaderCore> core) : core_(std::move(core)) {}

BlobReader::~BlobReader() {
    Cache::Impl* impl = core_->impl;
    if (core_->fill) {
        auto fill = std::move(core_->fill);
        fill->reader_left();
    }
    if (impl != nullptr) impl->unpin(core_->digest);
}

ReadResult BlobReader::read(std::size_t max_bytes) {
    return core_->read(max_bytes);
}

void BlobReader::on_readable(std::function<void()> callback) {
    core_->callback = std::move(callback);
}

std::optional<std::uint64_t> BlobReader::end() const {
    return core_->end();
}

void BlobReader::narrow(std::uint64_t offset, std::uint64_t len) {
    core_->pos = offset;
    core_->req_end = offset + len;
}

std::optional<std::uint64_t> BlobReader::blob_size() const {
    if (!core_->fill) return core_->blob_size;
    if (core_->fill->state_ == CacheFill::State::running) return core_->fill->expected_size_;
    return core_->fill->received_;
}

// ---------------------------------------------------------------------------------------------
// CacheFill

CacheFill::CacheFill(Token, Cache* cache, std::string digest, std::optional<std::uint64_t> expected,
                     std::uint64_t fill_id, std::uint64_t chunk_size)
    : cache_(cache),
      digest_(std::move(digest)),
      expected_size_(expected),
      fill_id_(fill_id),
      chunk_size_(chunk_size) {
    tail_.reserve(chunk_size_);
}

CacheFill::~CacheFill() = default;

bool CacheFill::append(std::string_view bytes) {
    if (state_ != State::running || cache_ == nullptr) return false;
    Cache::Impl& impl = *cache_->impl_;
    if (expected_size_ && received_ + bytes.size() > *expected_size_) {
        end_with(make_error(kErrSizeMismatch, "source sent more than the expected " +
                                                  std::to_string(*expected_size_) + " bytes of " +
                                                  digest_),
                 true);
        return false;
    }
    if (!expected_size_ &&
        impl.blob_charge(received_ + bytes.size()) > impl.options.config.max_size) {
        // A source that sent no length turned out to send more than the cache can hold. Its
        // bytes so far are dropped before they push the cache over max_size; the readers are
        // cut (each held back its last byte, so none took a short body for a whole one), and
        // their retries are streamed uncached (start_or_join_fill remembers the digest).
        impl.remember_too_large(digest_);
        end_with(make_error(kErrTooLarge, digest_ + " sent without a length is larger than "
                                                    "cache.max_size; not cached"),
                 true);
        return false;
    }
    while (!bytes.empty()) {
        std::size_t n = std::min<std::size_t>(chunk_size_ - tail_.size(), bytes.size());
        tail_.append(bytes.data(), n);
        received_ += n;
        bytes.remove_prefix(n);
        if (tail_.size() == chunk_size_) submit_tail(false);
    }
    wake_readers();
    if (impl.queued_bytes > impl.options.queue_high_watermark) {
        if (!paused_) {
            paused_ = true;
            impl.paused.push_back(weak_from_this());
        }
        return false;
    }
    return true;
}

void CacheFill::submit_tail(bool last) {
    if (tail_.empty()) return;
    Cache::Impl& impl = *cache_->impl_;
    auto data = std::make_shared<const std::string>(std::move(tail_));
    tail_ = std::string();
    if (!last) tail_.reserve(chunk_size_);
    in_flight_[next_index_] = data;
    queued_bytes_ += data->size();
    impl.queued_bytes += data->size();
    WriterOp op;
    op.kind = WriterOp::Kind::fill_chunk;
    op.fill_id = fill_id_;
    op.index = next_index_;
    op.data = std::move(data);
    impl.writer->push(std::move(op));
    ++next_index_;
}

void CacheFill::finish() {
    if (state_ != State::running || cache_ == nullptr) return;
    if (expected_size_ && received_ != *expected_size_) {
        end_with(make_error(kErrSizeMismatch, "source ended after " + std::to_string(received_) +
                                                  " of " + std::to_string(*expected_size_) +
                                                  " bytes of " + digest_),
                 true);
        return;
    }
    submit_tail(true);
    state_ = State::finishing;
    WriterOp op;
    op.kind = WriterOp::Kind::fill_finish;
    op.fill_id = fill_id_;
    op.size = received_;
    cache_->impl_->writer->push(std::move(op));
    wake_readers();
}

void CacheFill::fail(Error error) {
    if (state_ != State::running) return;
    if (error.code.empty()) error.code = kErrSourceFailed;
    on_cancel_ = nullptr;  // the source knows
    end_with(std::move(error), true);
}

void CacheFill::set_resume_callback(std::function<void()> cb) {
    on_resume_ = std::move(cb);
}
void CacheFill::set_cancel_callback(std::function<void()> cb) {
    on_cancel_ = std::move(cb);
}
void CacheFill::on_end(std::function<void(const Status&)> cb) {
    on_end_ = std::move(cb);
    if (done()) report_end();
}

void CacheFill::report_end() {
    if (!on_end_) return;
    auto cb = std::move(on_end_);
    on_end_ = nullptr;
    Status outcome;
    if (state_ != State::complete) outcome = error_;
    if (cache_ == nullptr) return cb(outcome);
    cache_->impl_->defer([cb = std::move(cb), outcome] { cb(outcome); });
}

void CacheFill::end_with(Error error, bool tell_writer) {
    if (state_ == State::failed || state_ == State::complete) return;
    state_ = State::failed;
    error_ = std::move(error);
    in_flight_.clear();
    tail_ = std::string();
    if (cache_ == nullptr) return;
    Cache::Impl& impl = *cache_->impl_;
    impl.fills_failed.fetch_add(1);
    impl.forget_fill(*this);
    impl.by_id.erase(fill_id_);  // completions still in flight only release queue bytes
    if (tell_writer) {
        WriterOp op;
        op.kind = WriterOp::Kind::fill_abort;
        op.fill_id = fill_id_;
        impl.writer->push(std::move(op));
    }
    wake_readers();
    if (on_cancel_ && !cancel_sent_) {
        cancel_sent_ = true;
        impl.defer(std::move(on_cancel_));
        on_cancel_ = nullptr;
    }
    on_resume_ = nullptr;
    report_end();
}

void CacheFill::wake_readers() {
    if (waiters_.empty() || cache_ == nullptr) return;
    Cache::Impl& impl = *cache_->impl_;
    for (auto& w : waiters_) {
        impl.defer([w] {
            auto core = w.lock();
            if (!core || !core->waiting) return;
            core->waiting = false;
            if (core->callback) {
                auto cb = core->callback;  // the callback may replace itself or drop the reader
                cb();
            }
        });
    }
    waiters_.clear();
}

void CacheFill::reader_left() {
    if (readers_ > 0) --readers_;
    if (readers_ == 0 && state_ == State::running && cache_ != nullptr &&
        !cache_->impl_->options.config.complete_orphan_fills) {
        end_with(make_error(kErrAbandoned, "every reader of " + digest_ + " left"), true);
    }
}

}  // namespace drayage::cache
