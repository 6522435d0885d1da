// BlobUploads::Impl, the push path's state, and which file owns which of its jobs:
//
//   push.cpp           sessions: open, cancel, expiry (the sweep), streaming a request body into
//                      a session, start-up cleanup of leftovers (recover), BlobUploads itself
//   push_handlers.cpp  the requests: routing of /blobs/uploads/, POST (new session, monolithic,
//                      mount), PATCH, PUT, status and cancel
//   push_finish.cpp    an upload's end: the digest check, placing the blob in the bucket, the
//                      repository link and the read-back into the cache
//   push_request.cpp   the pure parts (ids, Content-Range, Range), declared in push.hpp
//
// Everything here runs on the event loop thread. The contract is in
// include/drayage/registry/push.hpp.
#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "drayage/registry/push.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/s3/multipart.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry::push {

using Clock = std::chrono::steady_clock;

// An S3 failure as the pushing client sees it: 503 makes docker and skopeo retry the push.
void send_storage_error(http::Exchange& ex, const Error& e);
bool is_not_found(const Error& e);

metrics::Counter& blobs_counter(std::string_view outcome);
metrics::Counter& bytes_counter();

struct EventDeleter {
    void operator()(event* e) const { event_free(e); }
};

// One upload: the bytes received so far are in `upload` (and hashed into `sha`).
struct Session {
    std::string uuid;
    std::string repo;
    std::string key;  // where `upload` writes: the temporary key, or the blob's data key (direct)
    bool direct = false;
    std::optional<digest::Sha256> sha;
    std::shared_ptr<s3::MultipartUpload> upload;
    std::uint64_t offset = 0;
    Clock::time_point touched = Clock::now();
    std::shared_ptr<http::Exchange> writer;  // the request whose body streams in now
    bool paused = false;                     // writer's body paused for the uploader
    bool busy = false;                       // a body is streaming, or the blob is being placed
    bool ended = false;                      // cancelled, expired or finalized: no more bytes
};

}  // namespace drayage::registry::push

namespace drayage::registry {

struct BlobUploads::Impl : std::enable_shared_from_this<BlobUploads::Impl> {
    using Exchange = http::Exchange;
    using HeaderList = http::HeaderList;
    using Session = push::Session;

    event_base* base;
    s3::Client& client;
    cache::Cache* cache;
    UploadOptions options;
    s3::BucketLayout layout;
    std::string uploads_prefix;  // <root>_drayage/uploads/
    std::string node_prefix;     // <root>_drayage/uploads/<node>/
    std::shared_ptr<BlobOrigin> bucket;
    std::map<std::string, std::shared_ptr<Session>> sessions;
    std::unique_ptr<event, push::EventDeleter> sweep_timer;

    // Read-backs of pushed blobs into the cache (null: none), from the bucket alone.
    std::shared_ptr<Fetcher> fetcher;
    OriginSet from_bucket;

    Impl(event_base* b, s3::Client& c, cache::Cache* ca, std::shared_ptr<Fetcher> f,
         UploadOptions o);

    // ----- the sweep timer ---------------------------------------------------------------
    void start_timer();
    static void sweep_cb(evutil_socket_t, short, void* arg);

    // ----- routing and answers (push_handlers.cpp) ---------------------------------------
    void handle(const std::shared_ptr<Exchange>& ex, const Route& r);
    static void busy(Exchange& ex);
    static std::string upload_location(const Session& s);
    static HeaderList session_headers(const Session& s);
    static void respond_created(Exchange& ex, const std::string& repo, const BlobDigest& d);

    // ----- sessions (push.cpp) -----------------------------------------------------------
    std::shared_ptr<Session> open_session(const std::string& repo, std::string key, bool direct,
                                          std::uint64_t expected_size);
    void add_session(const std::shared_ptr<Session>& s);
    void drop_session(const std::shared_ptr<Session>& s);
    // Ends a session without a blob: its multipart upload is aborted (nothing stays in S3).
    void cancel(const std::shared_ptr<Session>& s, std::string_view why);
    void sweep();
    // Streams the request body into the session, then calls `on_end` (not called on failure: the
    // session is cancelled and the client answered or gone).
    void stream_body(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                     std::function<void()> on_end);
    static void blobs_counter_for_error();
    void storage_failed(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex);

    // ----- POST (push_handlers.cpp) ------------------------------------------------------
    // mount= is acted on first, as the front's access check (check_mount) reads the request: a
    // usable mount= is what that check vetted. digest= is vetted by the body itself.
    void post(const std::shared_ptr<Exchange>& ex, const Route& r);
    // POST without a mount: a monolithic upload with ?digest=, else a new session.
    void post_upload(const std::shared_ptr<Exchange>& ex, const Route& r);
    void start_session(const std::shared_ptr<Exchange>& ex, const Route& r);
    // Links the blob into r.name when `from` links it in the bucket and its data is there, as
    // Distribution's mount does; otherwise the request is an upload (post_upload).
    void mount_blob(const std::shared_ptr<Exchange>& ex, const Route& r, const BlobDigest& d,
                    const std::string& from);
    // POST ?digest=: the body is the whole blob and its digest is known from the start.
    void post_monolithic(const std::shared_ptr<Exchange>& ex, const Route& r,
                         const std::string& digest_text);
    // The blob is in the bucket already: the body is hashed but not stored again, and the blob is
    // linked only when the body is the blob. A digest is not a credential: knowing the digest of
    // a blob in a repository one cannot read must not make it readable under one's own.
    void verify_then_link(const std::shared_ptr<Exchange>& ex, const std::string& repo,
                          const BlobDigest& d);
    static void refuse_digest(Exchange& ex);

    // ----- PATCH / PUT (push_handlers.cpp) -----------------------------------------------
    // check_chunk_range for the request; when it fails, answers 416 RANGE_INVALID with the
    // upload's Range and Location (and returns false).
    static bool chunk_follows_on(Exchange& ex, const Session& s);
    void patch(const std::shared_ptr<Exchange>& ex, const std::shared_ptr<Session>& s);
    void put(const std::shared_ptr<Exchange>& ex, const std::shared_ptr<Session>& s);

    // ----- the end of an upload (push_finish.cpp) ----------------------------------------
    // All bytes are in: verify, then place the blob and link it.
    void finalize(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                  const BlobDigest& digest);
    void place_failed(const std::shared_ptr<Exchange>& ex, const Error& e);
    void link_and_respond(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                          const BlobDigest& digest, std::string outcome);
    void write_link(const std::string& repo, const BlobDigest& d, std::function<void(Status)> done);
    void fill_cache(const std::string& repo, const BlobDigest& d);

    // ----- start-up cleanup (push.cpp) ---------------------------------------------------
    // Whether a leftover under the uploads prefix may be removed: ours, or old enough that no
    // live node can still be writing it.
    bool removable(const std::string& key, std::string_view when) const;
    void recover(std::function<void(Status)> done);
};

}  // namespace drayage::registry
