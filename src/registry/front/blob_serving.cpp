#include "blob_serving.hpp"

#include <event2/buffer.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "drayage/registry/routes.hpp"
#include "drayage/util/metrics.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;

namespace front {
namespace {

constexpr std::size_t kReadPiece = 256 * 1024;

struct EvbufferFree {
    void operator()(evbuffer* b) const { evbuffer_free(b); }
};
using EvbufferPtr = std::unique_ptr<evbuffer, EvbufferFree>;

// ---------------------------------------------------------------------------------------------
// Streams one BlobReader into one Exchange, a chunk at a time, only while the socket has room.
class BlobStreamer : public std::enable_shared_from_this<BlobStreamer> {
public:
    BlobStreamer(std::shared_ptr<Exchange> ex, std::unique_ptr<cache::BlobReader> reader)
        : ex_(std::move(ex)), reader_(std::move(reader)) {}

    void start() {
        auto self = shared_from_this();
        ex_->on_closed([self] { self->stop(); });
        ex_->on_writable([self] { self->pump(); });
        reader_->on_readable([self] { self->pump(); });
        pump();
    }

private:
    void pump() {
        if (done_) return;
        while (true) {
            cache::ReadResult r = reader_->read(kReadPiece);
            switch (r.kind) {
                case cache::ReadResult::Kind::data:
                    if (!write(r)) {
                        if (ex_->closed()) return stop();
                        return;  // on_writable resumes
                    }
                    break;
                case cache::ReadResult::Kind::would_block: return;  // on_readable resumes
                case cache::ReadResult::Kind::end: ex_->finish(); return stop();
                case cache::ReadResult::Kind::error:
                    // Never let a client take a cut transfer for a whole blob.
                    spdlog::warn("blob transfer to {} cut: {}", ex_->request().peer,
                                 r.error.to_string());
                    ex_->set_outcome("cut:" + r.error.code);
                    ex_->abort();
                    return stop();
            }
        }
    }

    // Queues the bytes by reference when the cache says who owns them: the socket's buffer
    // holds the chunk until the kernel has taken it, saving a copy of every byte.
    bool write(const cache::ReadResult& r) {
        if (!r.owner) return ex_->write(r.bytes);
        if (!piece_) piece_.reset(evbuffer_new());
        auto* keep = new std::shared_ptr<const void>(r.owner);
        if (evbuffer_add_reference(
                piece_.get(), r.bytes.data(), r.bytes.size(),
                [](const void*, std::size_t, void* arg) {
                    delete static_cast<std::shared_ptr<const void>*>(arg);
                },
                keep) != 0) {
            delete keep;
            return ex_->write(r.bytes);
        }
        bool ok = ex_->write(piece_.get());
        // Whatever the exchange did not take (it closed) is dropped here, not sent later.
        evbuffer_drain(piece_.get(), evbuffer_get_length(piece_.get()));
        return ok;
    }

    void stop() {
        if (done_) return;
        done_ = true;
        // Break the callback cycles; the reader is released (unpinning the blob).
        ex_->on_writable({});
        ex_->on_closed({});
        reader_->on_readable({});
        reader_.reset();
    }

    std::shared_ptr<Exchange> ex_;
    std::unique_ptr<cache::BlobReader> reader_;
    EvbufferPtr piece_;  // staging for by-reference writes
    bool done_ = false;
};

// The headers of a blob response, formatted ("Name: value\r\n" lines, see
// Exchange::send_head_lines): they go out with every cache hit.
void append_blob_head_lines(std::string& h, std::string_view digest) {
    h += "Docker-Distribution-API-Version: registry/2.0\r\n"
         "Content-Type: application/octet-stream\r\n"
         "Docker-Content-Digest: ";
    h += digest;
    h += "\r\nETag: \"";
    h += digest;
    h += "\"\r\n"
         "Accept-Ranges: bytes\r\n"
         "Cache-Control: max-age=31536000\r\n";
}

}  // namespace

std::string blob_head_lines(std::string_view digest) {
    std::string h;
    h.reserve(256);
    append_blob_head_lines(h, digest);
    return h;
}

// The Content-Range line of a 206, appended to blob_head_lines.
void add_content_range(std::string& lines, const ByteSpan& span, std::uint64_t size) {
    lines += "Content-Range: ";
    lines += content_range(span, size);
    lines += "\r\n";
}

namespace {

// Whole GETs of complete blobs up to this size are answered from one read straight into the
// response's output (Cache::read_small), without a reader and a streamer. That machinery (a
// pin, two read transactions, a chunk buffer, callbacks) was most of a 16 KiB hit's cost.
constexpr std::uint64_t kSmallBlob = 64 * 1024;

enum class SmallHit { served, larger, unlinked, not_served };

// Serves a GET without Range of `digest` when it is a complete small blob, and, given `proof`,
// linked to its repository (looked up in the same read transaction: the proof costs a hit one
// key lookup, not a transaction of its own). larger: complete (and linked) but larger, for a
// reader to stream. unlinked: the repository is not known to hold it. not_served: not cached,
// still filling, or the read failed: the streaming path takes it and reports errors.
SmallHit serve_small_hit(Exchange& ex, cache::Cache& cache, const std::string& digest,
                         const cache::Cache::LinkProof* proof) {
    // One per thread (the loop and each hit worker); it is always empty between requests.
    static thread_local EvbufferPtr staging(evbuffer_new());
    evbuffer* body = staging.get();
    if (body == nullptr) return SmallHit::not_served;
    evbuffer_iovec vec{};
    auto size = cache.read_small(
        digest, kSmallBlob,
        [&](std::size_t n) -> char* {
            if (evbuffer_reserve_space(body, static_cast<ev_ssize_t>(n), &vec, 1) != 1)
                return nullptr;
            vec.iov_len = n;
            return static_cast<char*>(vec.iov_base);
        },
        proof);
    if (!size) {
        return size.error().code == cache::kErrNotLinked ? SmallHit::unlinked
                                                         : SmallHit::not_served;
    }
    if (!*size) return SmallHit::larger;
    if (**size > 0 && evbuffer_commit_space(body, &vec, 1) != 0) return SmallHit::not_served;
    ex.set_outcome("hit");                 // before finish(), which logs the request
    static thread_local std::string head;  // its capacity is kept from hit to hit
    head.clear();
    append_blob_head_lines(head, digest);
    ex.send_head_lines(200, head, **size);
    ex.write(body);
    ex.finish();
    // Whatever the exchange did not take (it closed) is dropped here.
    evbuffer_drain(body, evbuffer_get_length(body));
    return SmallHit::served;
}

// Answers a GET of a cached (or filling) blob with `reader`, opened on the whole blob, honouring
// `range`: the size the reader reports resolves the range, and the same reader is narrowed to it
// (one reader per request). A filling blob whose size is not known yet is served whole.
void respond_from_cache(const std::shared_ptr<Exchange>& ex, const std::string& digest,
                        const std::string& range,
                        Result<std::unique_ptr<cache::BlobReader>> reader) {
    if (!reader) {
        if (reader.error().code == cache::kErrNotFound)
            return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
        return send_error(*ex, 503, "UNAVAILABLE", reader.error().message);
    }
    std::optional<std::uint64_t> size = (*reader)->blob_size();
    std::optional<ByteSpan> span;
    if (size && !range.empty()) {
        auto pr = parse_range(range, *size);
        if (!pr) return send_range_not_satisfiable(*ex, *size);
        span = *pr;
    }
    std::string h = blob_head_lines(digest);
    if (span) {
        const std::uint64_t len = span->last - span->first + 1;
        (*reader)->narrow(span->first, len);
        add_content_range(h, *span, *size);
        ex->send_head_lines(206, h, len);
    } else if (!size && !ex->delimits_unknown_length()) {
        // HTTP/1.0: only the close would end the body, so a failed digest would look complete.
        return send_error(*ex, 503, "UNAVAILABLE", "blob still being fetched; retry shortly");
    } else {
        ex->send_head_lines(200, h, size);
    }
    std::make_shared<BlobStreamer>(ex, std::move(*reader))->start();
}

enum class WholeHit { served, unlinked, not_served };

// The loop's answer to a GET without Range of a cached blob: one read for a small blob, a reader
// for a larger one. Given `proof`, only when its repository links the blob. not_served: not
// cached, still filling, evicted meanwhile, or a read failed: the caller looks the blob up.
WholeHit serve_whole_hit(const std::shared_ptr<Exchange>& ex, cache::Cache& cache,
                         const std::string& digest, const cache::Cache::LinkProof* proof) {
    static metrics::Counter& hits = outcome_counter("blob", "hit");
    switch (serve_small_hit(*ex, cache, digest, proof)) {
        case SmallHit::served: hits.inc(); return WholeHit::served;
        case SmallHit::larger: {  // known complete: no second lookup
            auto whole = cache.open_reader(digest, 0, std::nullopt);
            if (!whole && whole.error().code == cache::kErrNotFound) return WholeHit::not_served;
            ex->set_outcome("hit");
            hits.inc();
            respond_from_cache(ex, digest, {}, std::move(whole));
            return WholeHit::served;
        }
        case SmallHit::unlinked: return WholeHit::unlinked;
        case SmallHit::not_served: return WholeHit::not_served;
    }
    return WholeHit::not_served;
}

// A hit worker's answer to a blob GET or HEAD; false: not served here (the loop takes it). The
// same checks as the loop's: with auth, the client may pull the repository; always, the blob is
// known to belong to it, by the committed links only (the loop keeps the ones still queued, and
// proves the rest through an origin).
bool serve_worker_hit(const std::shared_ptr<Exchange>& ex, cache::Cache& cache,
                      const Authenticator* auth) {
    const http::Request& req = ex->request();
    auto route = parse_route(req.path);
    if (!route || route->endpoint != Endpoint::blob) return false;
    std::optional<Authenticator::HitAdmission> adm;
    if (auth != nullptr) {
        adm = auth->admit_hit(req, route->name);
        if (!adm) return false;
        if (!adm->user.empty()) ex->set_user(adm->user);  // before the response logs it
    }
    const std::string& repo = adm ? adm->repo : route->name;
    const std::string& digest = route->reference;
    // Looked up once: the registry's lookups take a lock, and two loops share it.
    static metrics::Counter& hits = outcome_counter("blob", "hit");
    static metrics::Counter& served = metrics::global().counter(
        "drayage_http_worker_hits_total",
        "Cache hits served by hit workers (http.workers), not the main loop.");
    if (req.method == "GET" && req.header("Range").empty()) {
        const cache::Cache::LinkProof proof{repo, false};
        switch (serve_small_hit(*ex, cache, digest, &proof)) {
            case SmallHit::served:
                hits.inc();
                served.inc();
                return true;
            case SmallHit::larger: break;  // proven: a reader streams it
            case SmallHit::unlinked:
            case SmallHit::not_served: return false;
        }
    } else if (auto linked = cache.store().is_linked(repo, digest); !linked || !*linked) {
        return false;
    }
    auto whole = cache.open_complete_reader(digest, 0, std::nullopt);
    if (!whole) return false;
    ex->set_outcome("hit");
    hits.inc();
    served.inc();
    if (req.method == "HEAD") {
        ex->send_head_lines(200, blob_head_lines(digest), (*whole)->blob_size());
        ex->finish();
        return true;
    }
    respond_from_cache(ex, digest, std::string(req.header("Range")), std::move(whole));
    return true;
}

}  // namespace

void stream_from_cache(const std::shared_ptr<Exchange>& ex, cache::Cache& cache,
                       const std::string& digest, const std::string& range) {
    respond_from_cache(ex, digest, range, cache.open_reader(digest, 0, std::nullopt));
}

}  // namespace front

using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

http::Handler make_hit_handler(cache::Cache& cache, const Authenticator* auth) {
    return [&cache, auth](std::shared_ptr<Exchange> ex) {
        const http::Request& req = ex->request();
        if ((req.method == "GET" || req.method == "HEAD") && serve_worker_hit(ex, cache, auth))
            return;
        // Everything else (misses, fills, manifests, pushes, errors) is the main loop's.
        if (!ex->hand_off())
            send_error(*ex, 503, "UNAVAILABLE", "request could not be handed over");
    };
}

// ----- RegistryFront::Impl: blobs ----------------------------------------------------------
// Every mirror, open or not, serves a blob for <name> only once it knows <name> holds it, as
// the registry would (prove_blob): /v2/<other>/blobs/<digest> of a cached blob is a 404.
void RegistryFront::Impl::serve_blob(const std::shared_ptr<Exchange>& ex, const Route& r) {
    const http::Request& req = ex->request();
    std::optional<bool> linked;
    if (req.method == "GET" && req.header("Range").empty()) {
        // The hit path: the link is looked up with the blob, in one read transaction.
        const cache::Cache::LinkProof proof{r.name, true};
        switch (serve_whole_hit(ex, *deps.cache, r.reference, &proof)) {
            case WholeHit::served: return;
            case WholeHit::unlinked: linked = false; break;
            case WholeHit::not_served: break;  // not cached, filling, or the read failed
        }
    }
    if (!linked) {
        auto known = deps.cache->is_linked(r.name, r.reference);
        linked = known && *known;
    }
    if (*linked) return serve_proven_blob(ex, r);
    auto self = shared_from_this();
    prove_blob(ex, r, [self, ex, r] { self->serve_proven_blob(ex, r); });
}

void RegistryFront::Impl::serve_proven_blob(const std::shared_ptr<Exchange>& ex, const Route& r) {
    const http::Request& req = ex->request();
    static metrics::Counter& hits = outcome_counter("blob", "hit");
    if (req.method == "GET" && req.header("Range").empty() &&
        serve_whole_hit(ex, *deps.cache, r.reference, nullptr) == WholeHit::served) {
        return;
    }
    auto lookup = deps.cache->lookup(r.reference);
    if (!lookup) return send_error(*ex, 500, "UNKNOWN", lookup.error().message);
    if (req.method == "HEAD") return head_blob(ex, r, *lookup);
    if (lookup->presence != cache::Presence::absent) {
        static metrics::Counter& joins = outcome_counter("blob", "join");
        const bool hit = lookup->presence == cache::Presence::complete;
        ex->set_outcome(hit ? "hit" : "join");
        (hit ? hits : joins).inc();
        return stream_from_cache(ex, *deps.cache, r.reference, std::string(req.header("Range")));
    }
    serve_miss(ex, r);
}

void RegistryFront::Impl::head_blob(const std::shared_ptr<Exchange>& ex, const Route& r,
                                    const cache::Lookup& l) {
    if (l.presence == cache::Presence::complete) {
        ex->set_outcome("hit");
        outcome_counter("blob", "hit").inc();
        ex->send_head_lines(200, blob_head_lines(r.reference), l.size);
        return ex->finish();
    }
    if (l.presence == cache::Presence::filling) {
        auto reader = deps.cache->open_reader(r.reference, 0, std::nullopt);
        if (reader && (*reader)->blob_size()) {
            ex->set_outcome("join");
            ex->send_head_lines(200, blob_head_lines(r.reference), *(*reader)->blob_size());
            return ex->finish();
        }
    }
    head_from_origin(ex, r, 0);
}

void RegistryFront::Impl::head_from_origin(const std::shared_ptr<Exchange>& ex, const Route& r,
                                           std::size_t i) {
    if (i >= deps.origins.sources.size()) {
        ex->set_outcome("miss:none");
        return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    }
    auto self = shared_from_this();
    deps.origins.sources[i].origin->head(
        r.name, r.reference, [self, ex, r, i](Result<OriginHead> h) {
            if (ex->closed()) return;
            if (!h) {
                if (h.error().code == "NOT_FOUND") return self->head_from_origin(ex, r, i + 1);
                return send_origin_error(*ex, h.error(), "BLOB_UNKNOWN");
            }
            ex->set_outcome("head:" + std::string(self->deps.origins.sources[i].origin->name()));
            ex->send_head_lines(200, blob_head_lines(r.reference), h->size);
            ex->finish();
        });
}

}  // namespace drayage::registry
