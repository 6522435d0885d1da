// Parallel multipart transfers built on s3::Client: a stream of bytes uploaded as parts in
// parallel (MultipartUpload), and a large object copied server-side in parallel ranges
// (MultipartCopy).
//
// Both run on the loop thread and never block. Both abort the S3 multipart upload on any
// failure, so a failed transfer leaves nothing behind in the bucket (ListMultipartUploads shows
// no upload for the key once the failure was reported).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/s3/client.hpp"
#include "drayage/s3/retry.hpp"
#include "drayage/util/result.hpp"

namespace drayage::s3 {

// Uploads a stream as one object. The producer calls write() with bytes in any sizes; they are
// cut into UploadParts (signed sha256, retried on its own with backoff; the part's bytes stay in
// memory until it succeeded) whose sizes follow UploadPartSizes (retry.hpp): `chunksize`, grown
// only as far as `expected_size` needs and never past 1/64 of the bytes written before the part.
// Up to `storage.s3.multipart.concurrency` parts are in flight.
//
// Flow control: memory is bounded by (concurrency + 1) x the size of the part being filled (so
// by (concurrency + 1) x chunksize for every object up to 10,000 x chunksize, whatever
// `expected_size` says), plus at most one write()'s worth of overshoot. A part's buffer is
// allocated when its first byte arrives. write() returns false when that budget is reached: the
// producer stops and waits for `on_writable`, which runs (on a later loop turn) once a part
// finished and there is room again. After a failure, on_writable runs once more (if the producer
// was waiting) so the producer finds write() returning false with failed() true, and calls finish()
// for the error.
//
// An object smaller than one part is stored with a single PUT (no multipart upload is created
// until the first part is full). The multipart upload itself is created lazily, when the first
// part is full.
class MultipartUpload : public std::enable_shared_from_this<MultipartUpload> {
public:
    struct Options {
        std::string key;
        // Expected object size, when known (0: unknown): lets the parts grow so the object fits
        // in 10,000 parts. A size no plan fits (UploadPartSizes::plan() is nullopt; check it
        // first to refuse such a request) fails the upload at once with EntityTooLarge, before
        // any request to S3. With an unknown size, more than 10,000 x chunksize bytes fail with
        // EntityTooLarge.
        std::uint64_t expected_size = 0;
        PutOptions put;
        std::function<void()> on_writable;
    };

    static std::shared_ptr<MultipartUpload> start(Client& client, Options options);

    // Appends bytes. Returns false when the producer should pause until on_writable (the bytes
    // passed are accepted either way). After a failure, returns false and drops the bytes; the
    // error is reported by finish().
    bool write(std::string_view data);

    // No more data: uploads the last part, waits for all parts and completes the upload (or PUTs
    // the object when it never reached one part). `done` gets the object's ETag, or the first
    // error (after the upload was aborted). Call once.
    void finish(std::function<void(Result<std::string>)> done);

    // Stops, aborts the multipart upload, and calls `done` when S3 has dropped it (at once when
    // the upload had failed and been aborted already).
    void abort(std::function<void(Status)> done);

    // The size of the part being filled (or, between parts, of the last one).
    std::uint64_t part_size() const { return part_size_; }
    std::uint64_t bytes_written() const { return bytes_written_; }
    bool failed() const { return failed_; }

    MultipartUpload(Client& client, Options options);

private:
    struct Part {
        int number = 0;
        std::shared_ptr<const std::string> bytes;
    };
    void seal_current();
    std::string take_buffer();
    void pump();
    void ensure_created();
    void on_part_done(int number, Result<std::string> etag);
    void maybe_complete();
    void fail(Error error);
    void finish_failure(Error error);

    Client& client_;
    Options options_;
    std::optional<UploadPartSizes> sizes_;  // nullopt: expected_size fits no plan (failed)
    std::uint64_t part_size_ = 0;
    std::uint64_t bytes_written_ = 0;
    std::string current_;
    // Part buffers whose upload finished, kept for reuse (at most concurrency + 1 are in use).
    std::shared_ptr<std::vector<std::string>> spare_ = std::make_shared<std::vector<std::string>>();
    std::vector<Part> queued_;
    int in_flight_ = 0;
    int next_part_number_ = 1;
    std::vector<CompletedPart> completed_;
    std::string upload_id_;
    bool creating_ = false;
    bool finishing_ = false;
    bool failed_ = false;
    bool done_called_ = false;
    bool writable_pending_ = false;
    bool failure_reported_ = false;
    Error error_;
    std::function<void(Result<std::string>)> done_;
};

// Copies `source_key` to `dest_key` server-side with UploadPartCopy ranges, `concurrency` in
// flight. The part size is the upload part size for the object (chunksize grown to fit 10,000
// parts, at least 5 MiB). A source of at most one part is copied with a single CopyObject.
class MultipartCopy : public std::enable_shared_from_this<MultipartCopy> {
public:
    // `source_size` 0: HEAD the source first.
    static void start(Client& client, std::string source_key, std::string dest_key,
                      std::uint64_t source_size, std::function<void(Result<std::string>)> done);

    MultipartCopy(Client& client, std::string source_key, std::string dest_key,
                  std::function<void(Result<std::string>)> done);

private:
    void run(std::uint64_t size);
    void pump();
    void fail(Error error);

    Client& client_;
    std::string source_key_;
    std::string dest_key_;
    std::function<void(Result<std::string>)> done_;
    std::uint64_t size_ = 0;
    std::uint64_t part_size_ = 0;
    int parts_total_ = 0;
    int next_part_ = 1;
    int in_flight_ = 0;
    std::string upload_id_;
    std::vector<CompletedPart> completed_;
    bool failed_ = false;
    bool aborting_ = false;
    Error error_;
};

}  // namespace drayage::s3
