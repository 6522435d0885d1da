// Blob upload sessions into the S3 bucket: open, cancel, expiry, streaming a body into a
// session, start-up cleanup, and BlobUploads itself. The contract is in
// include/drayage/registry/push.hpp; push_impl.hpp says which file does the rest.
#include <event2/event.h>
#include <spdlog/spdlog.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "drayage/registry/api.hpp"
#include "drayage/registry/bucket_origin.hpp"
#include "push_impl.hpp"

namespace drayage::registry::push {

void send_storage_error(http::Exchange& ex, const Error& e) {
    api::send_error(ex, 503, "UNAVAILABLE", "storage unavailable: " + e.to_string());
}

bool is_not_found(const Error& e) {
    return e.status == 404 || e.code == "NoSuchKey" || e.code == "NotFound";
}

metrics::Counter& blobs_counter(std::string_view outcome) {
    return metrics::global().counter("drayage_push_blobs_total",
                                     "Blob pushes finished, by outcome.",
                                     {{"outcome", std::string(outcome)}});
}
metrics::Counter& bytes_counter() {
    return metrics::global().counter("drayage_push_bytes_total",
                                     "Blob bytes received from pushing clients.");
}

}  // namespace drayage::registry::push

namespace drayage::registry {

using api::send_error;
using http::Exchange;
using namespace push;  // NOLINT(google-build-using-namespace): the push path's own parts

namespace {

// How often idle sessions are checked for expiry and paused writers for a failed uploader.
constexpr std::chrono::seconds kSweepInterval{1};

std::string sanitize_node(std::string_view node) {
    std::string out;
    for (char c : node) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        out.push_back(ok ? c : '_');
    }
    return out.empty() ? "node" : out;
}

metrics::Gauge& sessions_gauge() {
    return metrics::global().gauge("drayage_push_sessions", "Open blob upload sessions.");
}
metrics::Counter& expired_counter() {
    return metrics::global().counter("drayage_push_sessions_expired_total",
                                     "Upload sessions cancelled because they were idle too long.");
}

}  // namespace

BlobUploads::Impl::Impl(event_base* b, s3::Client& c, cache::Cache* ca, std::shared_ptr<Fetcher> f,
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

void BlobUploads::Impl::start_timer() {
    sweep_timer.reset(event_new(base, -1, EV_PERSIST, &Impl::sweep_cb, this));
    timeval tv{static_cast<time_t>(kSweepInterval.count()), 0};
    event_add(sweep_timer.get(), &tv);
}

void BlobUploads::Impl::sweep_cb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->sweep();
}

std::shared_ptr<Session> BlobUploads::Impl::open_session(const std::string& repo, std::string key,
                                                         bool direct, std::uint64_t expected_size) {
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

void BlobUploads::Impl::add_session(const std::shared_ptr<Session>& s) {
    sessions[s->uuid] = s;
    sessions_gauge().set(static_cast<std::int64_t>(sessions.size()));
}

void BlobUploads::Impl::drop_session(const std::shared_ptr<Session>& s) {
    auto it = sessions.find(s->uuid);
    if (it != sessions.end() && it->second == s) sessions.erase(it);
    sessions_gauge().set(static_cast<std::int64_t>(sessions.size()));
}

void BlobUploads::Impl::cancel(const std::shared_ptr<Session>& s, std::string_view why) {
    if (s->ended) return;
    s->ended = true;
    drop_session(s);
    s->writer.reset();
    spdlog::info("upload {} of {} cancelled ({}), {} bytes received", s->uuid, s->repo, why,
                 s->offset);
    std::string key = s->key;
    s->upload->abort([key](Status st) {
        if (!st) spdlog::warn("abort of the upload to {} failed: {}", key, st.error().to_string());
    });
}

void BlobUploads::Impl::sweep() {
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

void BlobUploads::Impl::stream_body(const std::shared_ptr<Session>& s,
                                    const std::shared_ptr<Exchange>& ex,
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

void BlobUploads::Impl::blobs_counter_for_error() {
    blobs_counter("client_error").inc();
}

void BlobUploads::Impl::storage_failed(const std::shared_ptr<Session>& s,
                                       const std::shared_ptr<Exchange>& ex) {
    blobs_counter("storage_error").inc();
    cancel(s, "storage failed");
    send_error(*ex, 503, "UNAVAILABLE", "storage unavailable: an upload part failed");
}

bool BlobUploads::Impl::removable(const std::string& key, std::string_view when) const {
    if (key.rfind(node_prefix, 0) == 0) return true;
    auto t = parse_s3_time(when);
    if (!t) return false;
    auto age = std::chrono::seconds(std::time(nullptr) - *t);
    return age > 2 * options.session_ttl;
}

void BlobUploads::Impl::recover(std::function<void(Status)> done) {
    auto self = shared_from_this();
    client.list_multipart_uploads(uploads_prefix, [self,
                                                   done](Result<std::vector<s3::UploadInfo>> ups) {
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
                            spdlog::warn("delete of {} failed: {}", key, st.error().to_string());
                    });
                }
                done(Status{});
            });
    });
}

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
