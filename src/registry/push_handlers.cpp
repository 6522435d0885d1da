// The push path's requests: routing of /blobs/uploads/, POST (new session, monolithic, mount),
// PATCH, PUT, status and cancel. The contract is in include/drayage/registry/push.hpp.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "drayage/registry/api.hpp"
#include "drayage/util/query.hpp"
#include "push_impl.hpp"

namespace drayage::registry {

using api::send_error;
using http::Exchange;
using http::HeaderList;
using namespace push;  // NOLINT(google-build-using-namespace): the push path's own parts

void BlobUploads::Impl::handle(const std::shared_ptr<Exchange>& ex, const Route& r) {
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

void BlobUploads::Impl::busy(Exchange& ex) {
    send_error(ex, 409, "BLOB_UPLOAD_INVALID",
               "another request is writing to this upload; send them one at a time");
}

std::string BlobUploads::Impl::upload_location(const Session& s) {
    return "/v2/" + s.repo + "/blobs/uploads/" + s.uuid;
}

HeaderList BlobUploads::Impl::session_headers(const Session& s) {
    HeaderList h = api::headers();
    h.emplace_back("Location", upload_location(s));
    h.emplace_back("Range", upload_range_header(s.offset));
    h.emplace_back("Docker-Upload-UUID", s.uuid);
    return h;
}

void BlobUploads::Impl::respond_created(Exchange& ex, const std::string& repo,
                                        const BlobDigest& d) {
    HeaderList h = api::headers();
    h.emplace_back("Location", "/v2/" + repo + "/blobs/" + d.str());
    h.emplace_back("Docker-Content-Digest", d.str());
    ex.respond(201, std::move(h), "");
}

void BlobUploads::Impl::post(const std::shared_ptr<Exchange>& ex, const Route& r) {
    const std::string& q = ex->request().query;
    if (auto mount = query::param(q, "mount")) {
        auto d = BlobDigest::parse(*mount);
        // An unusable mount request falls back to an upload, as Distribution does.
        if (d) return mount_blob(ex, r, *d, query::param(q, "from").value_or(""));
    }
    post_upload(ex, r);
}

void BlobUploads::Impl::post_upload(const std::shared_ptr<Exchange>& ex, const Route& r) {
    if (auto digest = query::param(ex->request().query, "digest"))
        return post_monolithic(ex, r, *digest);
    start_session(ex, r);
}

void BlobUploads::Impl::start_session(const std::shared_ptr<Exchange>& ex, const Route& r) {
    if (sessions.size() >= options.max_sessions)
        return send_error(*ex, 429, "TOOMANYREQUESTS",
                          "too many open uploads; finish or cancel some first");
    auto s = open_session(r.name, {}, false, 0);
    if (!s) return send_error(*ex, 500, "UNKNOWN", "cannot create an upload id");
    add_session(s);
    ex->send_head(202, session_headers(*s), 0);
    ex->finish();
}

void BlobUploads::Impl::mount_blob(const std::shared_ptr<Exchange>& ex, const Route& r,
                                   const BlobDigest& d, const std::string& from) {
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

void BlobUploads::Impl::post_monolithic(const std::shared_ptr<Exchange>& ex, const Route& r,
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

void BlobUploads::Impl::verify_then_link(const std::shared_ptr<Exchange>& ex,
                                         const std::string& repo, const BlobDigest& d) {
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

void BlobUploads::Impl::refuse_digest(Exchange& ex) {
    blobs_counter("digest_invalid").inc();
    ex.set_outcome("digest_invalid");
    send_error(ex, 400, "DIGEST_INVALID", "the uploaded content does not match the digest");
}

bool BlobUploads::Impl::chunk_follows_on(Exchange& ex, const Session& s) {
    const http::Request& req = ex.request();
    Status st = check_chunk_range(req.header("Content-Range"), req.content_length, s.offset);
    if (st) return true;
    // Where the upload stands, as a status GET would say: the client continues from there.
    HeaderList extra = session_headers(s);
    extra.erase(extra.begin());  // send_error adds the API header
    send_error(ex, 416, "RANGE_INVALID", st.error().message, std::move(extra));
    return false;
}

void BlobUploads::Impl::patch(const std::shared_ptr<Exchange>& ex,
                              const std::shared_ptr<Session>& s) {
    if (s->busy) return busy(*ex);
    if (!chunk_follows_on(*ex, *s)) return;
    stream_body(s, ex, [s, ex] {
        ex->send_head(202, session_headers(*s), 0);
        ex->finish();
    });
}

void BlobUploads::Impl::put(const std::shared_ptr<Exchange>& ex,
                            const std::shared_ptr<Session>& s) {
    if (s->busy) return busy(*ex);
    auto digest_text = query::param(ex->request().query, "digest");
    if (!digest_text) return send_error(*ex, 400, "DIGEST_INVALID", "the final PUT needs ?digest=");
    auto d = BlobDigest::parse(*digest_text);
    if (!d) return send_error(*ex, 400, "DIGEST_INVALID", d.error().message);
    // The last chunk may come with the PUT, under the same rule as a PATCH's.
    if (!chunk_follows_on(*ex, *s)) return;
    BlobDigest digest = *d;
    auto self = shared_from_this();
    stream_body(s, ex, [self, s, ex, digest] { self->finalize(s, ex, digest); });
}

}  // namespace drayage::registry
