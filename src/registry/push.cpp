// Blob upload sessions into the S3 bucket. The contract is in include/drayage/registry/push.hpp.
#include "drayage/registry/push.hpp"

#include <event2/event.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "drayage/registry/api.hpp"
#include "drayage/registry/bucket_origin.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/s3/multipart.hpp"
#include "drayage/s3/retry.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/query.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using http::Exchange;
using http::HeaderList;
using Clock = std::chrono::steady_clock;

// How often idle sessions are checked for expiry and paused writers for a failed uploader.
constexpr std::chrono::seconds kSweepInterval{1};

using api::send_error;

// An S3 failure as the pushing client sees it: 503 makes docker and skopeo retry the push.
void send_storage_error(Exchange& ex, const Error& e) {
    send_error(ex, 503, "UNAVAILABLE", "storage unavailable: " + e.to_string());
}

bool is_not_found(const Error& e) {
    return e.status == 404 || e.code == "NoSuchKey" || e.code == "NotFound";
}

std::string sanitize_node(std::string_view node) {
    std::string out;
    for (char c : node) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        out.push_back(ok ? c : '_');
    }
    return out.empty() ? "node" : out;
}

struct EventDeleter {
    void operator()(event* e) const { event_free(e); }
};

metrics::Counter& blobs_counter(std::string_view outcome) {
    return metrics::global().counter("drayage_push_blobs_total",
                                     "Blob pushes finished, by outcome.",
                                     {{"outcome", std::string(outcome)}});
}
metrics::Counter& bytes_counter() {
    return metrics::global().counter("drayage_push_bytes_total",
                                     "Blob bytes received from pushing clients.");
}
metrics::Gauge& sessions_gauge() {
    return metrics::global().gauge("drayage_push_sessions", "Open blob upload sessions.");
}
metrics::Counter& expired_counter() {
    return metrics::global().counter("drayage_push_sessions_expired_total",
                                     "Upload sessions cancelled because they were idle too long.");
}
metrics::Counter& fills_counter(std::string_view outcome) {
    return metrics::global().counter("drayage_push_cache_fills_total",
                                     "Pushed blobs read back from the bucket into the cache.",
                                     {{"outcome", std::string(outcome)}});
}

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
    std::shared_ptr<Exchange> writer;  // the request whose body streams in now
    bool paused = false;               // writer's body paused for the uploader
    bool busy = false;                 // a body is streaming, or the blob is being placed
    bool ended = false;                // cancelled, expired or finalized: no more bytes
};

}  // namespace

// ---------------------------------------------------------------------------------------------
struct BlobUploads::Impl : std::enable_shared_from_this<BlobUploads::Impl> {
    event_base* base;
    s3::Client& client;
    cache::Cache* cache;
    UploadOptions options;
    s3::BucketLayout layout;
    std::string uploads_prefix;  // <root>_drayage/uploads/
    std::string node_prefix;     // <root>_drayage/uploads/<node>/
    std::shared_ptr<BlobOrigin> bucket;
    std::map<std::string, std::shared_ptr<Session>> sessions;
    std::unique_ptr<event, EventDeleter> sweep_timer;

    // Read-backs of pushed blobs into the cache (null: none), from the bucket alone.
    std::shared_ptr<Fetcher> fetcher;
    OriginSet from_bucket;

    Impl(event_base* b, s3::Client& c, cache::Cache* ca, std::shared_ptr<Fetcher> f,
         UploadOptions o)
        : base(b),
          client(c),
          cache(ca),
          options(std::move(o)),
          layout(c.config().rootdirectory),
          uploads_prefix(layout.root_prefix() + "_drayage/uploads/"),
          node_prefix(uploads_prefix + sanitize_node(options.node) + "/"),
          bucket(make_bucket_origin(c, c.config().rootdirectory)),
          fetcher(std::move(f)),
          from_bucket{{{bucket, false}}} {}

    void start_timer() {
        sweep_timer.reset(event_new(base, -1, EV_PERSIST, &Impl::sweep_cb, this));
        timeval tv{static_cast<time_t>(kSweepInterval.count()), 0};
        event_add(sweep_timer.get(), &tv);
    }

    static void sweep_cb(evutil_socket_t, short, void* arg) {
        auto* self = static_cast<Impl*>(arg);
        self->sweep();
    }

    // ----- routing ---------------------------------------------------------------------------
    void handle(const std::shared_ptr<Exchange>& ex, const Route& r) {
        const std::string& m = ex->request().method;
        if (r.endpoint == Endpoint::upload_start) {
            if (m == "POST") return post(ex, r);
            return send_error(*ex, 405, "UNSUPPORTED", "method not allowed on an upload");
        }
        auto it = sessions.find(r.reference);
        if (it == sessions.end() || it->second->repo != r.name) {
            return send_error(*ex, 404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry");
        }
        std::shared_ptr<Session> s = it->second;
        if (m == "GET" || m == "HEAD") {
            ex->send_head(204, session_headers(*s), 0);
            return ex->finish();
        }
        if (m == "DELETE") {
            if (s->busy) return busy(*ex);
            cancel(s, "cancelled by the client");
            HeaderList h = api::headers();
            ex->send_head(204, std::move(h), 0);
            return ex->finish();
        }
        if (m == "PATCH") return patch(ex, s);
        if (m == "PUT") return put(ex, s);
        send_error(*ex, 405, "UNSUPPORTED", "method not allowed on an upload");
    }

    static void busy(Exchange& ex) {
        send_error(ex, 409, "BLOB_UPLOAD_INVALID",
                   "another request is writing to this upload; send them one at a time");
    }

    static std::string upload_location(const Session& s) {
        return "/v2/" + s.repo + "/blobs/uploads/" + s.uuid;
    }

    static HeaderList session_headers(const Session& s) {
        HeaderList h = api::headers();
        h.emplace_back("Location", upload_location(s));
        h.emplace_back("Range", upload_range_header(s.offset));
        h.emplace_back("Docker-Upload-UUID", s.uuid);
        return h;
    }

    static void respond_created(Exchange& ex, const std::string& repo, const BlobDigest& d) {
        HeaderList h = api::headers();
        h.emplace_back("Location", "/v2/" + repo + "/blobs/" + d.str());
        h.emplace_back("Docker-Content-Digest", d.str());
        ex.respond(201, std::move(h), "");
    }

    // ----- sessions --------------------------------------------------------------------------
    std::shared_ptr<Session> open_session(const std::string& repo, std::string key, bool direct,
                                          std::uint64_t expected_size) {
        auto s = std::make_shared<Session>();
        s->uuid = new_upload_uuid();
        if (s->uuid.empty()) return nullptr;
        s->repo = repo;
        s->direct = direct;
        s->key = key.empty() ? node_prefix + s->uuid + "/data" : std::move(key);
        s->sha = digest::Sha256::start();
        if (!s->sha) return nullptr;
        s3::MultipartUpload::Options mo;
        mo.key = s->key;
        mo.expected_size = expected_size;
        std::weak_ptr<Session> weak = s;
        mo.on_writable = [weak] {
            auto sp = weak.lock();
            if (!sp || !sp->paused || !sp->writer) return;
            sp->paused = false;
            sp->writer->resume_body();
        };
        s->upload = s3::MultipartUpload::start(client, std::move(mo));
        return s;
    }

    void add_session(const std::shared_ptr<Session>& s) {
        sessions[s->uuid] = s;
        sessions_gauge().set(static_cast<std::int64_t>(sessions.size()));
    }

    void drop_session(const std::shared_ptr<Session>& s) {
        auto it = sessions.find(s->uuid);
        if (it != sessions.end() && it->second == s) sessions.erase(it);
        sessions_gauge().set(static_cast<std::int64_t>(sessions.size()));
    }

    // Ends a session without a blob: its multipart upload is aborted (nothing stays in S3).
    void cancel(const std::shared_ptr<Session>& s, std::string_view why) {
        if (s->ended) return;
        s->ended = true;
        drop_session(s);
        s->writer.reset();
        spdlog::info("upload {} of {} cancelled ({}), {} bytes received", s->uuid, s->repo, why,
                     s->offset);
        std::string key = s->key;
        s->upload->abort([key](Status st) {
            if (!st)
                spdlog::warn("abort of the upload to {} failed: {}", key, st.error().to_string());
        });
    }

    void sweep() {
        auto now = Clock::now();
        std::vector<std::shared_ptr<Session>> expired, failed;
        for (auto& [id, s] : sessions) {
            if (s->writer && s->upload->failed()) {
                failed.push_back(s);
            } else if (!s->busy && now - s->touched > options.session_ttl) {
                expired.push_back(s);
            }
        }
        for (auto& s : expired) {
            expired_counter().inc();
            blobs_counter("expired").inc();
            cancel(s, "expired");
        }
        for (auto& s : failed) {
            // The uploader gave up (its error is logged); a paused client would otherwise wait
            // for the body timeout.
            auto ex = s->writer;
            blobs_counter("storage_error").inc();
            cancel(s, "storage failed");
            send_error(*ex, 503, "UNAVAILABLE", "storage unavailable: an upload part failed");
        }
    }

    // Streams the request body into the session, then calls `on_end` (not called on failure: the
    // session is cancelled and the client answered or gone).
    void stream_body(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                     std::function<void()> on_end) {
        s->busy = true;
        s->writer = ex;
        s->touched = Clock::now();
        auto self = shared_from_this();
        http::BodyHandlers h;
        h.on_data = [self, s, ex](std::string_view data) {
            if (s->ended) return;
            if (s->upload->failed()) return self->storage_failed(s, ex);
            s->sha->update(data);
            s->offset += data.size();
            s->touched = Clock::now();
            bytes_counter().inc(data.size());
            if (!s->upload->write(data)) {
                if (s->upload->failed()) return self->storage_failed(s, ex);
                s->paused = true;
                ex->pause_body();
            }
        };
        h.on_end = [self, s, ex, on_end = std::move(on_end)] {
            if (s->ended) return;
            if (s->upload->failed()) return self->storage_failed(s, ex);
            s->writer.reset();
            s->paused = false;
            s->busy = false;
            s->touched = Clock::now();
            on_end();
        };
        h.on_error = [self, s](const Error& e) {
            // The client went away or timed out mid-body: it cannot know how much arrived, and
            // Docker/OCI clients restart from the POST, so the session is of no further use.
            self->blobs_counter_for_error();
            self->cancel(s, "body broken: " + e.to_string());
        };
        ex->read_body(std::move(h));
    }

    static void blobs_counter_for_error() { blobs_counter("client_error").inc(); }

    void storage_failed(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex) {
        blobs_counter("storage_error").inc();
        cancel(s, "storage failed");
        send_error(*ex, 503, "UNAVAILABLE", "storage unavailable: an upload part failed");
    }

    // ----- POST ------------------------------------------------------------------------------
    // mount= is acted on first, as the front's access check (check_mount) reads the request: a
    // usable mount= is what that check vetted. digest= is vetted by the body itself.
    void post(const std::shared_ptr<Exchange>& ex, const Route& r) {
        const std::string& q = ex->request().query;
        if (auto mount = query::param(q, "mount")) {
            auto d = BlobDigest::parse(*mount);
            // An unusable mount request falls back to an upload, as Distribution does.
            if (d) return mount_blob(ex, r, *d, query::param(q, "from").value_or(""));
        }
        post_upload(ex, r);
    }

    // POST without a mount: a monolithic upload with ?digest=, else a new session.
    void post_upload(const std::shared_ptr<Exchange>& ex, const Route& r) {
        if (auto digest = query::param(ex->request().query, "digest"))
            return post_monolithic(ex, r, *digest);
        start_session(ex, r);
    }

    void start_session(const std::shared_ptr<Exchange>& ex, const Route& r) {
        if (sessions.size() >= options.max_sessions)
            return send_error(*ex, 429, "TOOMANYREQUESTS",
                              "too many open uploads; finish or cancel some first");
        auto s = open_session(r.name, {}, false, 0);
        if (!s) return send_error(*ex, 500, "UNKNOWN", "cannot create an upload id");
        add_session(s);
        ex->send_head(202, session_headers(*s), 0);
        ex->finish();
    }

    // Links the blob into r.name when `from` links it in the bucket and its data is there, as
    // Distribution's mount does; otherwise the request is an upload (post_upload).
    void mount_blob(const std::shared_ptr<Exchange>& ex, const Route& r, const BlobDigest& d,
                    const std::string& from) {
        if (!is_valid_repository_name(from)) return post_upload(ex, r);
        auto self = shared_from_this();
        auto exists = [self, ex, r](const std::string& key, std::function<void()> then) {
            self->client.head(key, [self, ex, r, then](Result<s3::ObjectInfo> info) {
                if (ex->closed()) return;
                if (info) return then();
                if (is_not_found(info.error())) return self->post_upload(ex, r);
                send_storage_error(*ex, info.error());
            });
        };
        exists(layout.layer_link_key(from, d), [self, ex, r, d, exists] {
            exists(self->layout.blob_data_key(d), [self, ex, r, d] {
                self->write_link(r.name, d, [self, ex, r, d](Status st) {
                    if (!st) return send_storage_error(*ex, st.error());
                    blobs_counter("mounted").inc();
                    ex->set_outcome("mounted");
                    respond_created(*ex, r.name, d);
                });
            });
        });
    }

    // POST ?digest=: the body is the whole blob and its digest is known from the start.
    void post_monolithic(const std::shared_ptr<Exchange>& ex, const Route& r,
                         const std::string& digest_text) {
        auto d = BlobDigest::parse(digest_text);
        if (!d) return send_error(*ex, 400, "DIGEST_INVALID", d.error().message);
        if (d->algorithm() != DigestAlgorithm::sha256)
            return send_error(*ex, 400, "DIGEST_INVALID", "only sha256 digests can be pushed");
        // The declared length may let the parts grow (never faster than the bytes arrive), but
        // one that no S3 upload holds is refused before a byte is read.
        std::uint64_t size = ex->request().content_length.value_or(0);
        std::uint64_t chunksize = client.config().chunksize;
        if (!s3::UploadPartSizes::plan(chunksize, size)) {
            ex->set_outcome("size_invalid");
            return send_error(
                *ex, 413, "SIZE_INVALID",
                fmt::format("a blob of {} bytes cannot be stored in the bucket: one S3 upload "
                            "holds at most {} bytes with storage.s3.chunksize {}",
                            size, s3::UploadPartSizes::max_object_size(chunksize), chunksize));
        }
        auto self = shared_from_this();
        BlobDigest digest = *d;
        client.head(
            layout.blob_data_key(digest), [self, ex, r, digest, size](Result<s3::ObjectInfo> info) {
                if (ex->closed()) return;
                if (info) return self->verify_then_link(ex, r.name, digest);
                if (!is_not_found(info.error())) return send_storage_error(*ex, info.error());
                auto s = self->open_session(r.name, self->layout.blob_data_key(digest), true, size);
                if (!s) return send_error(*ex, 500, "UNKNOWN", "cannot start the upload");
                // Not in the session table: nobody can address it by id.
                self->stream_body(s, ex, [self, s, ex, digest] { self->finalize(s, ex, digest); });
            });
    }

    // The blob is in the bucket already: the body is hashed but not stored again, and the blob is
    // linked only when the body is the blob. A digest is not a credential: knowing the digest of
    // a blob in a repository one cannot read must not make it readable under one's own.
    void verify_then_link(const std::shared_ptr<Exchange>& ex, const std::string& repo,
                          const BlobDigest& d) {
        auto started = digest::Sha256::start();
        if (!started) return send_error(*ex, 500, "UNKNOWN", "cannot hash the upload");
        auto sha = std::make_shared<digest::Sha256>(std::move(*started));
        auto received = std::make_shared<std::uint64_t>(0);
        auto self = shared_from_this();
        http::BodyHandlers h;
        h.on_data = [sha, received](std::string_view data) {
            sha->update(data);
            *received += data.size();
            bytes_counter().inc(data.size());
        };
        h.on_end = [self, ex, repo, d, sha, received] {
            std::string hex = sha->finish_hex();
            if (hex != d.hex()) {
                spdlog::info(
                    "monolithic upload to {}: digest {} (in the bucket) given, sha256:{} "
                    "received ({} bytes): not linked",
                    repo, d.str(), hex, *received);
                return refuse_digest(*ex);
            }
            self->write_link(repo, d, [self, ex, repo, d](Status st) {
                if (!st) return send_storage_error(*ex, st.error());
                blobs_counter("exists").inc();
                ex->set_outcome("exists");
                respond_created(*ex, repo, d);
                self->fill_cache(repo, d);
            });
        };
        h.on_error = [](const Error&) {};  // the client is gone or answered: nothing was linked
        ex->read_body(std::move(h));
    }

    static void refuse_digest(Exchange& ex) {
        blobs_counter("digest_invalid").inc();
        ex.set_outcome("digest_invalid");
        send_error(ex, 400, "DIGEST_INVALID", "the uploaded content does not match the digest");
    }

    // ----- PATCH / PUT -----------------------------------------------------------------------
    void patch(const std::shared_ptr<Exchange>& ex, const std::shared_ptr<Session>& s) {
        if (s->busy) return busy(*ex);
        std::string_view cr = ex->request().header("Content-Range");
        if (!cr.empty()) {
            auto range = parse_upload_range(cr);
            if (!range || range->first != s->offset) {
                HeaderList extra = session_headers(*s);
                extra.erase(extra.begin());  // send_error adds the API header
                return send_error(*ex, 416, "RANGE_INVALID",
                                  fmt::format("the upload continues at byte {}", s->offset),
                                  std::move(extra));
            }
        }
        stream_body(s, ex, [s, ex] {
            ex->send_head(202, session_headers(*s), 0);
            ex->finish();
        });
    }

    void put(const std::shared_ptr<Exchange>& ex, const std::shared_ptr<Session>& s) {
        if (s->busy) return busy(*ex);
        auto digest_text = query::param(ex->request().query, "digest");
        if (!digest_text)
            return send_error(*ex, 400, "DIGEST_INVALID", "the final PUT needs ?digest=");
        auto d = BlobDigest::parse(*digest_text);
        if (!d) return send_error(*ex, 400, "DIGEST_INVALID", d.error().message);
        BlobDigest digest = *d;
        auto self = shared_from_this();
        stream_body(s, ex, [self, s, ex, digest] { self->finalize(s, ex, digest); });
    }

    // All bytes are in: verify, then place the blob and link it.
    void finalize(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                  const BlobDigest& digest) {
        s->busy = true;
        s->ended = true;  // from here on the session cannot be written, expired or cancelled
        drop_session(s);
        std::string hex = s->sha->finish_hex();
        if (digest.algorithm() != DigestAlgorithm::sha256 || hex != digest.hex()) {
            spdlog::info("upload {} of {}: digest {} given, sha256:{} received ({} bytes)", s->uuid,
                         s->repo, digest.str(), hex, s->offset);
            s->upload->abort([](Status) {});
            return refuse_digest(*ex);
        }
        auto self = shared_from_this();
        if (s->direct) {
            // Verified before completion: the data key only ever shows the right bytes.
            s->upload->finish([self, s, ex, digest](Result<std::string> etag) {
                if (!etag) return self->place_failed(ex, etag.error());
                self->link_and_respond(s, ex, digest, "stored");
            });
            return;
        }
        std::string data_key = layout.blob_data_key(digest);
        client.head(data_key, [self, s, ex, digest, data_key](Result<s3::ObjectInfo> info) {
            if (info) {
                // Already stored (pushed before, or by the registry): keep it, drop ours.
                s->upload->abort([](Status) {});
                return self->link_and_respond(s, ex, digest, "exists");
            }
            if (!is_not_found(info.error())) {
                s->upload->abort([](Status) {});
                return self->place_failed(ex, info.error());
            }
            s->upload->finish([self, s, ex, digest, data_key](Result<std::string> etag) {
                if (!etag) return self->place_failed(ex, etag.error());
                s3::MultipartCopy::start(
                    self->client, s->key, data_key, s->offset,
                    [self, s, ex, digest](Result<std::string> copied) {
                        self->client.remove(s->key, [self, s, ex, digest, copied](Status st) {
                            if (!st)
                                spdlog::warn("temporary upload object {} not deleted: {}", s->key,
                                             st.error().to_string());
                            if (!copied) return self->place_failed(ex, copied.error());
                            self->link_and_respond(s, ex, digest, "stored");
                        });
                    });
            });
        });
    }

    void place_failed(const std::shared_ptr<Exchange>& ex, const Error& e) {
        spdlog::warn("placing a pushed blob failed: {}", e.to_string());
        blobs_counter("storage_error").inc();
        ex->set_outcome("storage_error");
        send_storage_error(*ex, e);
    }

    void link_and_respond(const std::shared_ptr<Session>& s, const std::shared_ptr<Exchange>& ex,
                          const BlobDigest& digest, std::string outcome) {
        auto self = shared_from_this();
        write_link(s->repo, digest, [self, s, ex, digest, outcome](Status st) {
            if (!st) return self->place_failed(ex, st.error());
            blobs_counter(outcome).inc();
            ex->set_outcome(outcome);
            spdlog::debug("pushed {} to {} ({} bytes, {})", digest.str(), s->repo, s->offset,
                          outcome);
            respond_created(*ex, s->repo, digest);
            self->fill_cache(s->repo, digest);
        });
    }

    void write_link(const std::string& repo, const BlobDigest& d,
                    std::function<void(Status)> done) {
        auto body = std::make_shared<const std::string>(s3::link_content(d));
        s3::PutOptions po;
        auto c = cache;
        client.put(layout.layer_link_key(repo, d), std::move(body), po,
                   [c, repo, d, done = std::move(done)](Result<std::string> etag) {
                       if (!etag) return done(etag.error());
                       if (c) c->link(repo, d.str());
                       done(Status{});
                   });
    }

    // ----- the cache -------------------------------------------------------------------------
    void fill_cache(const std::string& repo, const BlobDigest& d) {
        if (!cache || !fetcher) return;
        auto lookup = cache->lookup(d.str());
        if (!lookup || lookup->presence != cache::Presence::absent) return;
        // Through the fetch layer, from the bucket only: a pull of the same digest that is
        // already being fetched is joined, not fetched a second time.
        fetcher->fetch(repo, d.str(), from_bucket, [](const FetchOutcome& o) {
            using Kind = FetchOutcome::Kind;
            if (o.kind != Kind::filling) {
                // Not cacheable (too large for the cache, cache not writable), or the bucket
                // could not give it back.
                bool refused = o.kind == Kind::uncached || o.error.code == "CACHE_REFUSED";
                return fills_counter(refused ? "skipped" : "failed").inc();
            }
            if (!o.started) return fills_counter("joined").inc();
            o.fill->on_end([](const Status& verified) {
                fills_counter(verified ? "complete" : "failed").inc();
            });
        });
    }

    // ----- start-up cleanup ------------------------------------------------------------------
    // Whether a leftover under the uploads prefix may be removed: ours, or old enough that no
    // live node can still be writing it.
    bool removable(const std::string& key, std::string_view when) const {
        if (key.rfind(node_prefix, 0) == 0) return true;
        auto t = parse_s3_time(when);
        if (!t) return false;
        auto age = std::chrono::seconds(std::time(nullptr) - *t);
        return age > 2 * options.session_ttl;
    }

    void recover(std::function<void(Status)> done) {
        auto self = shared_from_this();
        client.list_multipart_uploads(uploads_prefix, [self, done](
                                                          Result<std::vector<s3::UploadInfo>> ups) {
            if (!ups) return done(ups.error());
            for (const auto& u : *ups) {
                if (!self->removable(u.key, u.initiated)) continue;
                spdlog::info("aborting leftover upload {} of {}", u.upload_id, u.key);
                metrics::global()
                    .counter("drayage_push_leftovers_removed_total",
                             "Leftover multipart uploads and temporary objects removed.")
                    .inc();
                self->client.abort_multipart(u.key, u.upload_id, [key = u.key](Status st) {
                    if (!st)
                        spdlog::warn("abort of leftover upload {} failed: {}", key,
                                     st.error().to_string());
                });
            }
            self->client.list_objects(
                self->uploads_prefix, [self, done](Result<std::vector<s3::ObjectEntry>> objs) {
                    if (!objs) return done(objs.error());
                    for (const auto& o : *objs) {
                        if (!self->removable(o.key, o.last_modified)) continue;
                        spdlog::info("deleting leftover temporary object {}", o.key);
                        metrics::global()
                            .counter("drayage_push_leftovers_removed_total",
                                     "Leftover multipart uploads and temporary objects removed.")
                            .inc();
                        self->client.remove(o.key, [key = o.key](Status st) {
                            if (!st)
                                spdlog::warn("delete of {} failed: {}", key,
                                             st.error().to_string());
                        });
                    }
                    done(Status{});
                });
        });
    }
};

BlobUploads::BlobUploads(event_base* base, s3::Client& client, cache::Cache* cache,
                         std::shared_ptr<Fetcher> fetcher, UploadOptions options)
    : impl_(std::make_shared<Impl>(base, client, cache, std::move(fetcher), std::move(options))) {
    impl_->start_timer();
}

BlobUploads::~BlobUploads() {
    impl_->sweep_timer.reset();
}

void BlobUploads::handle(std::shared_ptr<http::Exchange> exchange, const Route& route) {
    impl_->handle(exchange, route);
}

void BlobUploads::recover(std::function<void(Status)> done) {
    impl_->recover(std::move(done));
}

const std::string& BlobUploads::node_prefix() const {
    return impl_->node_prefix;
}

std::size_t BlobUploads::sessions() const {
    return impl_->sessions.size();
}

}  // namespace drayage::registry
