// The end of an upload: the digest check, placing the blob in the bucket, the repository link,
// and the read-back into the cache. The contract is in include/drayage/registry/push.hpp.
#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "drayage/registry/api.hpp"
#include "push_impl.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace push;  // NOLINT(google-build-using-namespace): the push path's own parts

namespace {

metrics::Counter& fills_counter(std::string_view outcome) {
    return metrics::global().counter("drayage_push_cache_fills_total",
                                     "Pushed blobs read back from the bucket into the cache.",
                                     {{"outcome", std::string(outcome)}});
}

}  // namespace

void BlobUploads::Impl::finalize(const std::shared_ptr<Session>& s,
                                 const std::shared_ptr<Exchange>& ex, const BlobDigest& digest) {
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

void BlobUploads::Impl::place_failed(const std::shared_ptr<Exchange>& ex, const Error& e) {
    spdlog::warn("placing a pushed blob failed: {}", e.to_string());
    blobs_counter("storage_error").inc();
    ex->set_outcome("storage_error");
    send_storage_error(*ex, e);
}

void BlobUploads::Impl::link_and_respond(const std::shared_ptr<Session>& s,
                                         const std::shared_ptr<Exchange>& ex,
                                         const BlobDigest& digest, std::string outcome) {
    auto self = shared_from_this();
    write_link(s->repo, digest, [self, s, ex, digest, outcome](Status st) {
        if (!st) return self->place_failed(ex, st.error());
        blobs_counter(outcome).inc();
        ex->set_outcome(outcome);
        spdlog::debug("pushed {} to {} ({} bytes, {})", digest.str(), s->repo, s->offset, outcome);
        respond_created(*ex, s->repo, digest);
        self->fill_cache(s->repo, digest);
    });
}

void BlobUploads::Impl::write_link(const std::string& repo, const BlobDigest& d,
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

void BlobUploads::Impl::fill_cache(const std::string& repo, const BlobDigest& d) {
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
        o.fill->on_end(
            [](const Status& verified) { fills_counter(verified ? "complete" : "failed").inc(); });
    });
}

}  // namespace drayage::registry
