#include "drayage/s3/multipart.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "drayage/s3/retry.hpp"

namespace drayage::s3 {

// ---------------------------------------------------------------------------------------------
// MultipartUpload

std::shared_ptr<MultipartUpload> MultipartUpload::start(Client& client, Options options) {
    auto up = std::make_shared<MultipartUpload>(client, std::move(options));
    if (!up->sizes_) {
        // Fails before any request: there is nothing to abort, and finish() reports it.
        std::uint64_t chunksize = client.config().chunksize;
        up->fail(make_error("EntityTooLarge",
                            fmt::format("{}: {} bytes cannot be uploaded in {} parts; at most {} "
                                        "with chunksize {}",
                                        up->options_.key, up->options_.expected_size, kMaxParts,
                                        UploadPartSizes::max_object_size(chunksize), chunksize)));
    }
    return up;
}

MultipartUpload::MultipartUpload(Client& client, Options options)
    : client_(client),
      options_(std::move(options)),
      sizes_(UploadPartSizes::plan(client_.config().chunksize, options_.expected_size)),
      part_size_(sizes_ ? sizes_->at(0) : 0) {}

std::string MultipartUpload::take_buffer() {
    std::string b;
    if (!spare_->empty()) {
        b = std::move(spare_->back());
        spare_->pop_back();
    }
    b.reserve(part_size_);  // one allocation: growth by doubling would copy whole parts
    return b;
}

bool MultipartUpload::write(std::string_view data) {
    if (failed_ || finishing_) {
        return false;
    }
    while (!data.empty() && !failed_) {
        if (current_.empty()) {
            // A new part: its size follows the plan, and its buffer is taken only now that it
            // has bytes to hold.
            part_size_ = sizes_->at(bytes_written_);
            if (current_.capacity() < part_size_) {
                current_ = take_buffer();
            }
        }
        std::size_t take = std::min<std::size_t>(data.size(), part_size_ - current_.size());
        current_.append(data.substr(0, take));
        data.remove_prefix(take);
        bytes_written_ += take;
        if (current_.size() == part_size_) {
            seal_current();
        }
    }
    // (concurrency + 1) part slots: each part in flight or waiting takes one, and the part being
    // filled needs one. No slot left for it: the producer waits.
    auto sealed = static_cast<std::size_t>(in_flight_) + queued_.size();
    bool room =
        !failed_ && sealed <= static_cast<std::size_t>(client_.config().multipart.concurrency);
    if (!room) {
        writable_pending_ = true;
    }
    return room;
}

void MultipartUpload::seal_current() {
    if (next_part_number_ > kMaxParts) {
        fail(make_error("EntityTooLarge",
                        fmt::format("{}: more than {} parts of {} bytes; pass the expected size so "
                                    "the part size can grow",
                                    options_.key, kMaxParts, part_size_)));
        return;
    }
    // The part's buffer goes back to `spare_` when the last reference to it (the UploadPart
    // request, kept for retries) is dropped, and is refilled as a later part: a long upload
    // reuses the same (concurrency + 1) part-sized buffers instead of allocating and freeing a
    // multi-MiB block per part, so what stays resident is exactly the budget.
    std::weak_ptr<std::vector<std::string>> pool = spare_;
    auto* raw = new std::string(std::move(current_));
    std::shared_ptr<const std::string> bytes(raw, [pool](const std::string* s) {
        std::unique_ptr<std::string> own(const_cast<std::string*>(s));  // allocated non-const
        if (auto spare = pool.lock()) {
            own->clear();
            spare->push_back(std::move(*own));
        }
    });
    Part part{next_part_number_++, std::move(bytes)};
    current_ = std::string();  // the next write() takes a buffer, once there is room for one
    queued_.push_back(std::move(part));
    ensure_created();
    pump();
}

void MultipartUpload::ensure_created() {
    if (!upload_id_.empty() || creating_ || failed_) {
        return;
    }
    creating_ = true;
    auto self = shared_from_this();
    client_.create_multipart(options_.key, options_.put, [self](Result<std::string> id) {
        self->creating_ = false;
        if (!id) {
            self->fail(id.error());
            return;
        }
        self->upload_id_ = std::move(*id);
        if (self->failed_) {
            self->fail(self->error_);  // aborted while creating: now there is something to abort
            return;
        }
        self->pump();
    });
}

void MultipartUpload::pump() {
    if (upload_id_.empty() || failed_) {
        return;
    }
    auto self = shared_from_this();
    while (in_flight_ < client_.config().multipart.concurrency && !queued_.empty()) {
        Part part = std::move(queued_.front());
        queued_.erase(queued_.begin());
        ++in_flight_;
        int number = part.number;
        client_.upload_part(options_.key, upload_id_, number, std::move(part.bytes),
                            [self, number](Result<std::string> etag) {
                                self->on_part_done(number, std::move(etag));
                            });
    }
}

void MultipartUpload::on_part_done(int number, Result<std::string> etag) {
    --in_flight_;
    if (!etag) {
        fail(etag.error());
        return;
    }
    if (failed_) {
        fail(error_);  // one fewer in flight: maybe now the abort can go out
        return;
    }
    completed_.push_back(CompletedPart{number, std::move(*etag)});
    pump();
    auto sealed = static_cast<std::size_t>(in_flight_) + queued_.size();
    if (writable_pending_ &&
        sealed <= static_cast<std::size_t>(client_.config().multipart.concurrency)) {
        writable_pending_ = false;
        if (options_.on_writable) {
            options_.on_writable();
        }
    }
    maybe_complete();
}

void MultipartUpload::finish(std::function<void(Result<std::string>)> done) {
    done_ = std::move(done);
    if (failed_) {
        if (failure_reported_) {
            finish_failure(error_);
        } else {
            fail(error_);  // reported once the abort is through
        }
        return;
    }
    finishing_ = true;
    if (next_part_number_ == 1) {
        // Never reached one part: a plain PUT, no multipart upload to manage.
        auto body = std::make_shared<const std::string>(std::move(current_));
        current_ = std::string();
        auto self = shared_from_this();
        client_.put(options_.key, std::move(body), options_.put, [self](Result<std::string> etag) {
            if (!etag) {
                self->failed_ = true;
                self->error_ = etag.error();
            }
            self->done_called_ = true;
            auto cb = std::move(self->done_);
            cb(std::move(etag));
        });
        return;
    }
    if (!current_.empty()) {
        seal_current();  // the last part may be smaller than part_size
    }
    maybe_complete();
}

void MultipartUpload::maybe_complete() {
    if (!finishing_ || failed_ || upload_id_.empty() || in_flight_ > 0 || !queued_.empty() ||
        !current_.empty() || done_called_ ||
        static_cast<int>(completed_.size()) != next_part_number_ - 1) {
        return;
    }
    done_called_ = true;
    auto self = shared_from_this();
    client_.complete_multipart(options_.key, upload_id_, completed_,
                               [self](Result<std::string> etag) {
                                   if (!etag) {
                                       self->done_called_ = false;
                                       self->fail(etag.error());
                                       return;
                                   }
                                   auto cb = std::move(self->done_);
                                   cb(std::move(etag));
                               });
}

void MultipartUpload::abort(std::function<void(Status)> done) {
    if (failure_reported_) {
        done(Status{});  // failed and aborted already: fail() would not report again
        return;
    }
    auto self = shared_from_this();  // replacing done_ may drop the last other owner
    auto user_done = std::move(done);
    done_ = [user_done](Result<std::string> r) {
        // The upload is gone either way; report only a failed Abort itself.
        if (!r && r.error().code == "AbortFailed") {
            user_done(r.error());
            return;
        }
        user_done(Status{});
    };
    fail(make_error("Aborted", "multipart upload of " + options_.key + " aborted by its producer"));
}

// Failure path, re-entered as in-flight work drains: first mark failed and drop buffered bytes,
// then (once no part and no create is in flight) abort the S3 upload, then report.
void MultipartUpload::fail(Error error) {
    if (!failed_) {
        failed_ = true;
        error_ = std::move(error);
        queued_.clear();
        current_ = std::string();
        spare_->clear();
        spdlog::warn("s3 multipart upload of {} failed: {}", options_.key, error_.to_string());
        if (writable_pending_) {
            // A paused producer would otherwise wait forever: wake it so it sees failed().
            writable_pending_ = false;
            if (options_.on_writable) {
                options_.on_writable();
            }
        }
    }
    if (in_flight_ > 0 || creating_ || done_called_) {
        return;
    }
    done_called_ = true;  // from here on: one abort, one report
    auto self = shared_from_this();
    auto report = [self](Status abort_status) {
        Error e = self->error_;
        if (!abort_status) {
            e = make_error("AbortFailed",
                           fmt::format("{}; and aborting upload {} failed: {}", e.to_string(),
                                       self->upload_id_, abort_status.error().to_string()),
                           e.status);
        }
        self->finish_failure(std::move(e));
    };
    if (upload_id_.empty()) {
        report(Status{});
        return;
    }
    client_.abort_multipart(options_.key, upload_id_, report);
}

void MultipartUpload::finish_failure(Error e) {
    error_ = std::move(e);
    failure_reported_ = true;
    if (done_) {
        auto cb = std::move(done_);
        done_ = nullptr;
        cb(error_);
    }
}

// ---------------------------------------------------------------------------------------------
// MultipartCopy

MultipartCopy::MultipartCopy(Client& client, std::string source_key, std::string dest_key,
                             std::function<void(Result<std::string>)> done)
    : client_(client),
      source_key_(std::move(source_key)),
      dest_key_(std::move(dest_key)),
      done_(std::move(done)) {}

void MultipartCopy::start(Client& client, std::string source_key, std::string dest_key,
                          std::uint64_t source_size,
                          std::function<void(Result<std::string>)> done) {
    auto copy = std::make_shared<MultipartCopy>(client, std::move(source_key), std::move(dest_key),
                                                std::move(done));
    if (source_size > 0) {
        copy->run(source_size);
        return;
    }
    client.head(copy->source_key_, [copy](Result<ObjectInfo> info) {
        if (!info) {
            auto cb = std::move(copy->done_);
            cb(info.error());
            return;
        }
        copy->run(info->size);
    });
}

void MultipartCopy::run(std::uint64_t size) {
    size_ = size;
    part_size_ = part_size_for(client_.config().chunksize, size);
    auto self = shared_from_this();
    if (size <= part_size_) {
        client_.copy(source_key_, dest_key_, [self](Result<std::string> etag) {
            auto cb = std::move(self->done_);
            cb(std::move(etag));
        });
        return;
    }
    parts_total_ = static_cast<int>((size + part_size_ - 1) / part_size_);
    client_.create_multipart(dest_key_, PutOptions{}, [self](Result<std::string> id) {
        if (!id) {
            auto cb = std::move(self->done_);
            cb(id.error());
            return;
        }
        self->upload_id_ = std::move(*id);
        self->pump();
    });
}

void MultipartCopy::pump() {
    auto self = shared_from_this();
    while (!failed_ && in_flight_ < client_.config().multipart.concurrency &&
           next_part_ <= parts_total_) {
        int number = next_part_++;
        std::uint64_t first = static_cast<std::uint64_t>(number - 1) * part_size_;
        std::uint64_t last = std::min(size_, first + part_size_) - 1;
        ++in_flight_;
        client_.upload_part_copy(
            dest_key_, upload_id_, number, source_key_, ByteRange{first, last},
            [self, number](Result<std::string> etag) {
                --self->in_flight_;
                if (!etag) {
                    self->fail(etag.error());
                    return;
                }
                if (self->failed_) {
                    self->fail(Error{});
                    return;
                }
                self->completed_.push_back(CompletedPart{number, std::move(*etag)});
                self->pump();
            });
    }
    if (!failed_ && in_flight_ == 0 && static_cast<int>(completed_.size()) == parts_total_) {
        client_.complete_multipart(dest_key_, upload_id_, completed_,
                                   [self](Result<std::string> etag) {
                                       if (!etag) {
                                           self->fail(etag.error());
                                           return;
                                       }
                                       auto cb = std::move(self->done_);
                                       cb(std::move(etag));
                                   });
    }
}

void MultipartCopy::fail(Error error) {
    if (!failed_) {
        failed_ = true;
        error_ = std::move(error);
    }
    if (in_flight_ > 0 || aborting_) {
        return;
    }
    aborting_ = true;
    auto self = shared_from_this();
    client_.abort_multipart(dest_key_, upload_id_, [self](Status abort_status) {
        Error e = self->error_;
        if (!abort_status) {
            e.message += "; and the abort failed: " + abort_status.error().to_string();
        }
        auto cb = std::move(self->done_);
        cb(std::move(e));
    });
}

}  // namespace drayage::s3
