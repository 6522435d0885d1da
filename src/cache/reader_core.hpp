// ReaderCore: the state behind one BlobReader, shared by the reader (fill.cpp), the fill that
// wakes it, and Cache::open_reader (cache.cpp), which sets it up. Loop thread only, except for
// readers of complete blobs opened by open_complete_reader (one thread each).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "cache_impl.hpp"
#include "drayage/cache/cache.hpp"

namespace drayage::cache {

// ---------------------------------------------------------------------------------------------
// ReaderCore: the state of one BlobReader. Fills keep weak pointers to it to wake it.

struct ReaderCore : std::enable_shared_from_this<ReaderCore> {
    Cache::Impl* impl = nullptr;
    std::string digest;
    std::shared_ptr<CacheFill> fill;  // null: a complete blob
    std::uint64_t blob_id = 0;        // complete blobs
    std::uint64_t blob_size = 0;      // complete blobs
    std::uint64_t pos = 0;
    std::optional<std::uint64_t> req_end;  // offset + len when a len was given
    // One chunk copied out of the store. A new buffer per chunk: the last one may still be
    // queued on a socket (ReadResult::owner).
    std::shared_ptr<ChunkBuffer> buf;
    std::int64_t buf_index = -1;
    std::function<void()> callback;
    bool waiting = false;
    bool failed = false;
    Error error;

    std::optional<std::uint64_t> end() const {
        if (!fill) return req_end ? std::min(*req_end, blob_size) : blob_size;
        std::optional<std::uint64_t> total;
        if (fill->state_ == CacheFill::State::finishing ||
            fill->state_ == CacheFill::State::complete) {
            total = fill->received_;
        } else if (fill->expected_size_) {
            total = fill->expected_size_;
        }
        if (req_end && total) return std::min(*req_end, *total);
        if (req_end) return req_end;
        return total;
    }

    ReadResult fail(Error e) {
        failed = true;
        error = std::move(e);
        return ReadResult{ReadResult::Kind::error, {}, {}, error};
    }

    ReadResult block() {
        if (fill && !waiting) {
            waiting = true;
            fill->waiters_.push_back(weak_from_this());
        }
        return ReadResult{ReadResult::Kind::would_block, {}, {}, {}};
    }

    // Bytes [pos, pos+limit) of chunk `index` out of the store, keeping the chunk for the next
    // read.
    ReadResult from_store(std::uint64_t id, std::uint32_t index, std::uint64_t off,
                          std::uint64_t limit) {
        if (buf_index != static_cast<std::int64_t>(index) || !buf) {
            buf = std::make_shared<ChunkBuffer>();
            if (auto st = impl->store->read_chunk(id, index, *buf); !st) {
                buf_index = -1;
                if (st.error().code == kErrNotFound) {
                    return fail(
                        make_error(kErrGone, "blob " + digest + " was dropped while being read"));
                }
                return fail(st.error());
            }
            buf_index = index;
        }
        if (off + limit > buf->size()) {
            return fail(make_error(kErrStore, "chunk shorter than its blob says: " + digest));
        }
        pos += limit;
        return ReadResult{ReadResult::Kind::data, buf->view().substr(off, limit), buf, {}};
    }

    ReadResult read(std::size_t max_bytes) {
        if (failed) return ReadResult{ReadResult::Kind::error, {}, {}, error};
        if (max_bytes == 0) return ReadResult{ReadResult::Kind::would_block, {}, {}, {}};
        const std::uint64_t cs = impl->store->chunk_size();
        std::optional<std::uint64_t> e = end();
        if (!fill) {
            if (pos >= *e) return ReadResult{ReadResult::Kind::end, {}, {}, {}};
            auto index = static_cast<std::uint32_t>(pos / cs);
            std::uint64_t off = pos % cs;
            std::uint64_t limit = std::min<std::uint64_t>({max_bytes, cs - off, *e - pos});
            return from_store(blob_id, index, off, limit);
        }
        CacheFill& f = *fill;
        if (f.state_ == CacheFill::State::failed) return fail(f.error_);
        const bool verified = f.state_ == CacheFill::State::complete;
        if (e && pos >= *e) {
            if (verified) return ReadResult{ReadResult::Kind::end, {}, {}, {}};
            return block();
        }
        if (pos >= f.received_) {
            if (f.state_ != CacheFill::State::running) {
                return fail(make_error(kErrRange, "range starts past the end of " + digest, 416));
            }
            return block();
        }
        auto index = static_cast<std::uint32_t>(pos / cs);
        std::uint64_t off = pos % cs;
        std::uint64_t limit = std::min<std::uint64_t>({max_bytes, cs - off, f.received_ - pos});
        if (e) limit = std::min(limit, *e - pos);
        if (!verified && e && pos + limit >= *e) {
            // Hold back the last byte until the digest checks out.
            limit = *e - pos - 1;
            if (limit == 0) return block();
        }
        if (index < f.committed_) return from_store(f.blob_id_, index, off, limit);
        auto it = f.in_flight_.find(index);
        if (it != f.in_flight_.end()) {
            pos += limit;
            return ReadResult{ReadResult::Kind::data,
                              std::string_view(*it->second).substr(off, limit),
                              it->second,
                              {}};
        }
        if (index == f.next_index_ && off + limit <= f.tail_.size()) {
            // The chunk being assembled: copy, the source appends to it.
            auto copy = std::make_shared<std::string>(f.tail_, off, limit);
            pos += limit;
            return ReadResult{ReadResult::Kind::data, std::string_view(*copy), copy, {}};
        }
        return fail(make_error(kErrStore, "fill bookkeeping lost a chunk of " + digest));
    }
};

}  // namespace drayage::cache
