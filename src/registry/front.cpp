#include "drayage/registry/front.hpp"

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <string>
#include <utility>

#include "drayage/http/errors.hpp"
#include "drayage/registry/catalog.hpp"
#include "drayage/registry/push.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/registry/routes.hpp"
#include "drayage/s3/layout.hpp"
#include "drayage/s3/multipart.hpp"
#include "drayage/s3/sigv4.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using http::Exchange;
using http::HeaderList;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadPiece = 256 * 1024;

// What clients get when they send no Accept for a manifest: every type drayage passes through.
constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

HeaderList api_headers() {
    return {{"Docker-Distribution-API-Version", "registry/2.0"}};
}

void send_error(Exchange& ex, int status, std::string_view code, std::string_view message) {
    if (ex.request().method == "HEAD") {
        // A HEAD answer has no body; keep the status and the API header.
        ex.send_head(status, api_headers(), 0);
        ex.finish();
        return;
    }
    HeaderList h = api_headers();
    h.emplace_back("Content-Type", "application/json");
    ex.respond(status, std::move(h), http::registry_error_body(code, message));
}

// 416 for a Range outside a blob of `size` bytes.
void send_range_not_satisfiable(Exchange& ex, std::uint64_t size) {
    HeaderList h = api_headers();
    h.emplace_back("Content-Range", "bytes */" + std::to_string(size));
    h.emplace_back("Content-Type", "application/json");
    ex.respond(416, std::move(h),
               http::registry_error_body("RANGE_INVALID", "range not satisfiable"));
}

// The Content-Range of a 206 for `span` of a blob of `size` bytes.
std::string content_range(const ByteSpan& span, std::uint64_t size) {
    return "bytes " + std::to_string(span.first) + "-" + std::to_string(span.last) + "/" +
           std::to_string(size);
}

// An upstream/origin error as the client should see it.
void send_origin_error(Exchange& ex, const Error& e, std::string_view unknown_code) {
    if (e.code == "NOT_FOUND") {
        send_error(
            ex, 404, unknown_code,
            unknown_code == "BLOB_UNKNOWN" ? "blob unknown to registry" : "manifest unknown");
    } else if (e.code == "UNAUTHORIZED" || e.status == 401 || e.status == 403) {
        send_error(ex, e.status == 403 ? 403 : 401, e.status == 403 ? "DENIED" : "UNAUTHORIZED",
                   e.message);
    } else if (e.code == "TOOMANYREQUESTS") {
        send_error(ex, 429, "TOOMANYREQUESTS", e.message);
    } else if (e.code == "UPSTREAM_400") {
        // The upstream registry refused what the client asked for (a page size over its limit,
        // a name it does not accept): a retry would get the same answer, so it is not a 503.
        // (A 400 from S3 is not the client's doing: drayage built that request.)
        send_error(ex, 400, http::registry_code_for_status(400), e.message);
    } else {
        // Unreachable, timeouts, 5xx: a quick 503 lets docker and containerd move on.
        send_error(ex, 503, "UNAVAILABLE", "upstream unavailable: " + e.to_string());
    }
}

metrics::Counter& outcome_counter(std::string_view kind, std::string_view outcome) {
    return metrics::global().counter(
        "drayage_registry_responses_total",
        "Blob and manifest responses by kind and cache outcome.",
        {{"kind", std::string(kind)}, {"outcome", std::string(outcome)}});
}

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

// Whole GETs of complete blobs up to this size are answered from one read straight into the
// response's output (Cache::read_small), without a reader and a streamer. That machinery (a
// pin, two read transactions, a chunk buffer, callbacks) was most of a 16 KiB hit's cost.
constexpr std::uint64_t kSmallBlob = 64 * 1024;

enum class SmallHit { served, larger, not_served };

// Serves a GET without Range of `digest` when it is a complete small blob. larger: complete but
// larger, for a reader to stream. not_served: not cached, still filling, or the read failed: the
// streaming path takes it and reports errors.
SmallHit serve_small_hit(Exchange& ex, cache::Cache& cache, const std::string& digest) {
    // One per thread (the loop and each hit worker); it is always empty between requests.
    static thread_local EvbufferPtr staging(evbuffer_new());
    evbuffer* body = staging.get();
    if (body == nullptr) return SmallHit::not_served;
    evbuffer_iovec vec{};
    auto size = cache.read_small(digest, kSmallBlob, [&](std::size_t n) -> char* {
        if (evbuffer_reserve_space(body, static_cast<ev_ssize_t>(n), &vec, 1) != 1) return nullptr;
        vec.iov_len = n;
        return static_cast<char*>(vec.iov_base);
    });
    if (!size) return SmallHit::not_served;
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

// Answers a GET of a cached (or filling) blob, honouring `range`. `whole` is the reader of the
// whole blob; `open(offset, len)` opens another for a range: Cache::open_reader on the loop,
// Cache::open_complete_reader on a hit worker.
template <typename Open>
void respond_from_cache(const std::shared_ptr<Exchange>& ex, const std::string& digest,
                        const std::string& range, Result<std::unique_ptr<cache::BlobReader>> whole,
                        Open open) {
    if (!whole) {
        if (whole.error().code == cache::kErrNotFound)
            return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
        return send_error(*ex, 503, "UNAVAILABLE", whole.error().message);
    }
    std::optional<std::uint64_t> size = (*whole)->blob_size();
    std::optional<ByteSpan> span;
    if (size && !range.empty()) {
        auto pr = parse_range(range, *size);
        if (!pr) return send_range_not_satisfiable(*ex, *size);
        span = *pr;
    }
    std::unique_ptr<cache::BlobReader> reader;
    if (span) {
        auto rr = open(span->first, std::optional<std::uint64_t>(span->last - span->first + 1));
        if (!rr) return send_error(*ex, 503, "UNAVAILABLE", rr.error().message);
        reader = std::move(*rr);
    } else {
        reader = std::move(*whole);
    }
    std::string h = blob_head_lines(digest);
    if (span) {
        add_content_range(h, *span, *size);
        ex->send_head_lines(206, h, span->last - span->first + 1);
    } else if (!size && !ex->delimits_unknown_length()) {
        // HTTP/1.0: only the close would end the body, so a failed digest would look complete.
        return send_error(*ex, 503, "UNAVAILABLE", "blob still being fetched; retry shortly");
    } else {
        ex->send_head_lines(200, h, size);
    }
    std::make_shared<BlobStreamer>(ex, std::move(reader))->start();
}

}  // namespace

http::Handler make_hit_handler(cache::Cache& cache, const Authenticator* auth) {
    return [&cache, auth](std::shared_ptr<Exchange> ex) {
        const http::Request& req = ex->request();
        if (req.method == "GET" || req.method == "HEAD") {
            auto route = parse_route(req.path);
            bool admitted = route && route->endpoint == Endpoint::blob;
            if (admitted && auth != nullptr) {
                // The same two checks as the loop's: the client may pull the repository, and
                // the blob is known to belong to it (only the committed links: the loop keeps
                // the ones still queued, and proves the rest through an origin).
                auto adm = auth->admit_hit(req, route->name);
                auto linked = adm ? cache.store().is_linked(adm->repo, route->reference)
                                  : Result<bool>(false);
                admitted = linked && *linked;
                if (admitted && !adm->user.empty()) ex->set_user(adm->user);
            }
            if (admitted) {
                const std::string& digest = route->reference;
                // Looked up once: the registry's lookups take a lock, and two loops share it.
                static metrics::Counter& hits = outcome_counter("blob", "hit");
                static metrics::Counter& served = metrics::global().counter(
                    "drayage_http_worker_hits_total",
                    "Cache hits served by hit workers (http.workers), not the main loop.");
                if (req.method == "GET" && req.header("Range").empty() &&
                    serve_small_hit(*ex, cache, digest) == SmallHit::served) {
                    hits.inc();
                    served.inc();
                    return;
                }
                auto whole = cache.open_complete_reader(digest, 0, std::nullopt);
                if (whole) {
                    ex->set_outcome("hit");
                    hits.inc();
                    served.inc();
                    if (req.method == "HEAD") {
                        ex->send_head_lines(200, blob_head_lines(digest), (*whole)->blob_size());
                        return ex->finish();
                    }
                    return respond_from_cache(
                        ex, digest, std::string(req.header("Range")), std::move(whole),
                        [&cache, &digest](std::uint64_t off, std::optional<std::uint64_t> len) {
                            return cache.open_complete_reader(digest, off, len);
                        });
                }
            }
        }
        // Everything else (misses, fills, manifests, pushes, errors) is the main loop's.
        if (!ex->hand_off())
            send_error(*ex, 503, "UNAVAILABLE", "request could not be handed over");
    };
}

namespace {

// ---------------------------------------------------------------------------------------------
// The upstream registry as an origin.
class UpstreamOrigin final : public BlobOrigin {
public:
    explicit UpstreamOrigin(UpstreamRegistry& upstream) : upstream_(upstream) {}
    std::string_view name() const override { return "upstream"; }

    void head(std::string_view repo, std::string_view digest,
              std::function<void(Result<OriginHead>)> done) override {
        upstream_.head_blob(repo, digest, [done](Result<UpstreamBlobHead> r) {
            if (!r) return done(r.error());
            OriginHead h;
            if (r->has_length) h.size = r->length;
            done(h);
        });
    }

    std::shared_ptr<OriginTransfer> get(std::string_view repo, std::string_view digest,
                                        OriginSink sink) override {
        struct Transfer final : OriginTransfer {
            std::shared_ptr<BlobFetch> fetch;
            void resume() override {
                if (fetch) fetch->resume();
            }
            void cancel() override {
                if (fetch) fetch->cancel();
                fetch.reset();
            }
        };
        auto t = std::make_shared<Transfer>();
        BlobHandlers h;
        h.on_head = [on_head = sink.on_head](const UpstreamBlobHead& head) {
            OriginHead oh;
            if (head.has_length) oh.size = head.length;
            return on_head(oh);
        };
        h.on_data = sink.on_data;
        h.on_done = sink.on_done;
        t->fetch = upstream_.get_blob(repo, digest, std::nullopt, std::move(h));
        return t;
    }

private:
    UpstreamRegistry& upstream_;
};

}  // namespace

std::shared_ptr<BlobOrigin> make_upstream_origin(UpstreamRegistry& upstream) {
    return std::make_shared<UpstreamOrigin>(upstream);
}

Result<std::optional<ByteSpan>> parse_range(std::string_view header, std::uint64_t size) {
    if (header.empty()) return std::optional<ByteSpan>{};
    constexpr std::string_view kBytes = "bytes=";
    if (header.substr(0, kBytes.size()) != kBytes) return std::optional<ByteSpan>{};
    std::string_view spec = header.substr(kBytes.size());
    if (spec.find(',') != std::string_view::npos) return std::optional<ByteSpan>{};
    auto dash = spec.find('-');
    if (dash == std::string_view::npos) return std::optional<ByteSpan>{};
    const auto& parse_num = text::parse_u64;
    std::string_view a = spec.substr(0, dash), b = spec.substr(dash + 1);
    std::uint64_t first = 0, last = 0;
    Error unsatisfiable = make_error("RANGE_INVALID", "range not satisfiable", 416);
    if (a.empty()) {  // suffix: the last N bytes
        std::uint64_t n = 0;
        if (!parse_num(b, n)) return std::optional<ByteSpan>{};
        if (n == 0 || size == 0) return unsatisfiable;
        first = n >= size ? 0 : size - n;
        return std::optional<ByteSpan>{ByteSpan{first, size - 1}};
    }
    if (!parse_num(a, first)) return std::optional<ByteSpan>{};
    if (b.empty()) {
        last = size == 0 ? 0 : size - 1;
    } else if (!parse_num(b, last) || last < first) {
        return std::optional<ByteSpan>{};  // syntactically invalid: ignore, per RFC 9110
    }
    if (first >= size) return unsatisfiable;
    if (last >= size) last = size - 1;
    return std::optional<ByteSpan>{ByteSpan{first, last}};
}

// ---------------------------------------------------------------------------------------------
// A blob larger than the whole cache, streamed from an origin to one client without caching it.
// Every byte is hashed on the way, and the last byte of the client's span is held back until the
// digest checks out (as for a reader joined to a fill): a client never completes a transfer of
// bytes that fail verification. A Range request still reads the blob from its start, so it can be
// verified; when the origin sends no length the Range is ignored (200, the whole blob, chunked),
// and the byte held back is the last one received so far. There is no single flight here: each
// client has its own origin transfer.
class PassThrough : public std::enable_shared_from_this<PassThrough> {
public:
    PassThrough(std::shared_ptr<Exchange> ex, std::string digest, std::string range,
                std::string head_lines)
        : ex_(std::move(ex)),
          digest_(std::move(digest)),
          range_(std::move(range)),
          head_lines_(std::move(head_lines)) {}

    void start(BlobOrigin& origin, const std::string& repo) {
        auto self = shared_from_this();
        hash_.reset(EVP_MD_CTX_new());
        EVP_DigestInit_ex(hash_.get(), EVP_sha256(), nullptr);
        ex_->on_closed([self] { self->stop(); });
        ex_->on_writable([self] {
            if (self->transfer_) self->transfer_->resume();
        });
        OriginSink sink;
        sink.on_head = [self](const OriginHead& h) { return self->head(h); };
        sink.on_data = [self](std::string_view b) { return self->data(b); };
        sink.on_done = [self](Status st) { self->done(st); };
        transfer_ = origin.get(repo, digest_, std::move(sink));
    }

private:
    bool head(const OriginHead& h) {
        if (ex_->closed()) return false;
        size_ = h.size;
        if (!size_) {
            if (!ex_->delimits_unknown_length()) {
                // HTTP/1.0: only the close would end the body, so a failed digest would look
                // complete.
                send_error(*ex_, 503, "UNAVAILABLE", "blob of unknown length; retry with HTTP/1.1");
                return stop_after(false);
            }
            ex_->send_head_lines(200, head_lines_, std::nullopt);
            return true;
        }
        auto pr = parse_range(range_, *size_);
        if (!pr) {
            send_range_not_satisfiable(*ex_, *size_);
            return stop_after(false);
        }
        if (*pr) {
            first_ = (*pr)->first;
            end_ = (*pr)->last + 1;
            add_content_range(head_lines_, **pr, *size_);
            ex_->send_head_lines(206, head_lines_, *end_ - first_);
        } else {
            end_ = size_;
            ex_->send_head_lines(200, head_lines_, size_);
        }
        return true;
    }

    bool data(std::string_view bytes) {
        if (ex_->closed()) return true;  // stop() cancels the transfer
        EVP_DigestUpdate(hash_.get(), bytes.data(), bytes.size());
        const std::uint64_t at = pos_;
        pos_ += bytes.size();
        // The span's bytes received so far end at `upto`; the last of them waits, either for
        // more bytes or, at the end, for the digest.
        const std::uint64_t upto = end_ ? std::min(pos_, *end_) : pos_;
        const std::uint64_t from = std::max(first_, at);
        if (upto <= from) return true;  // none of these bytes is in the span
        bool more = true;
        if (holding_) more = ex_->write(std::string_view(&held_, 1));  // no longer the last
        if (upto - 1 > from) more = ex_->write(bytes.substr(from - at, upto - 1 - from)) && more;
        held_ = bytes[upto - 1 - at];
        holding_ = true;
        return more;
    }

    void done(Status st) {
        transfer_.reset();
        if (ex_->closed()) return stop();
        if (st && size_ && pos_ != *size_) {
            st = make_error("UNKNOWN", "origin sent " + std::to_string(pos_) + " of " +
                                           std::to_string(*size_) + " bytes");
        }
        if (st) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int len = 0;
            EVP_DigestFinal_ex(hash_.get(), md, &len);
            std::string got = "sha256:" + s3::hex_encode(std::string_view(
                                              reinterpret_cast<const char*>(md), len));
            if (got != digest_) {
                st = make_error(cache::kErrDigestMismatch,
                                "bytes of " + digest_ + " hash to " + got);
            }
        }
        if (!st) {
            spdlog::warn("uncached transfer of {} to {} cut: {}", digest_, ex_->request().peer,
                         st.error().to_string());
            ex_->set_outcome("cut:" + st.error().code);
            ex_->abort();
            return stop();
        }
        if (holding_) ex_->write(std::string_view(&held_, 1));
        ex_->finish();
        stop();
    }

    bool stop_after(bool result) {
        stop();
        return result;
    }

    void stop() {
        if (stopped_) return;
        stopped_ = true;
        ex_->on_writable({});
        ex_->on_closed({});
        if (auto t = std::move(transfer_)) t->cancel();
    }

    std::shared_ptr<Exchange> ex_;
    std::string digest_;
    std::string range_;
    std::string head_lines_;  // blob_head_lines
    std::shared_ptr<OriginTransfer> transfer_;
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> hash_{nullptr, EVP_MD_CTX_free};
    std::optional<std::uint64_t> size_;  // as the origin announced it
    std::uint64_t first_ = 0;            // the client's span: [first_, end_)
    std::optional<std::uint64_t> end_;   // nullopt: to the end, wherever that is
    std::uint64_t pos_ = 0;              // bytes received from the origin
    char held_ = 0;                      // the span's last byte received, not yet sent
    bool holding_ = false;
    bool stopped_ = false;
};

// ---------------------------------------------------------------------------------------------
struct RegistryFront::Impl : std::enable_shared_from_this<RegistryFront::Impl> {
    FrontDeps deps;

    // A blob miss before its fill exists: the origins are being asked. Requests for the same
    // digest wait here, then all read from the fill.
    struct Waiter {
        std::shared_ptr<Exchange> ex;
        std::string range;
    };
    struct BlobMiss {
        std::string repo;
        std::string digest;
        std::size_t origin = 0;
        std::vector<Waiter> waiters;
        std::shared_ptr<OriginTransfer> transfer;
        std::shared_ptr<cache::CacheFill> fill;
        bool head_seen = false;
        // storage.s3.writethrough: the same bytes go to the bucket. The multipart upload is
        // completed only once our own sha256 of the bytes matches the digest, so a corrupt
        // upstream answer never becomes visible in the shared tier.
        std::shared_ptr<s3::MultipartUpload> bucket_copy;
        std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> hash{nullptr, EVP_MD_CTX_free};
    };
    std::map<std::string, std::shared_ptr<BlobMiss>> misses;

    // Tag -> manifest digest, for revalidation and stale-if-error. Every change is also written
    // to the cache's tag records, so that a restarted mirror knows its tags while the upstream is
    // down; a tag not in this map is looked up there.
    struct TagEntry {
        std::string digest;
        std::string media_type;
        Clock::time_point checked;  // last time upstream confirmed it
    };
    std::map<std::string, TagEntry> tags;

    explicit Impl(FrontDeps d) : deps(std::move(d)) {
        // Records too old to be served stale would only be refetched: drop them, which also
        // bounds how many there are.
        if (deps.cache != nullptr && deps.config != nullptr) {
            deps.cache->drop_tags_checked_before(clock::unix_now() -
                                                 upstream_config().max_stale.count());
        }
    }

    void remember_tag(const std::string& key, const std::string& digest,
                      const std::string& media_type) {
        tags[key] = TagEntry{digest, media_type, Clock::now()};
        deps.cache->put_tag(key, cache::TagRecord{digest, media_type, clock::unix_now()});
    }

    void forget_tag(std::map<std::string, TagEntry>::iterator it) {
        deps.cache->drop_tag(it->first);
        tags.erase(it);
    }

    // A tag this process has not seen, from the records of an earlier run. Its age carries
    // over, so manifest_ttl and max_stale count from when the upstream last confirmed it.
    std::map<std::string, TagEntry>::iterator restore_tag(const std::string& key) {
        auto rec = deps.cache->get_tag(key);
        if (!rec) {
            spdlog::warn("tag record {} unreadable: {}", key, rec.error().to_string());
            return tags.end();
        }
        if (!*rec) return tags.end();
        auto age =
            std::chrono::seconds(std::max<std::int64_t>(0, clock::unix_now() - (*rec)->checked));
        TagEntry e{(*rec)->digest, (*rec)->media_type,
                   Clock::now() - std::chrono::duration_cast<Clock::duration>(age)};
        return tags.emplace(key, std::move(e)).first;
    }

    const config::UpstreamConfig& upstream_config() const { return deps.config->upstream; }

    // ----- routing ---------------------------------------------------------------------------
    void handle(const std::shared_ptr<Exchange>& ex) {
        const http::Request& req = ex->request();
        if (deps.auth && req.path == "/auth/token") return deps.auth->handle_token(ex);
        auto route = parse_route(req.path);
        if (!route) {
            const Error& e = route.error();
            if (e.status == 404 && req.path.substr(0, 4) != "/v2/") {
                ex->respond(404, {{"Content-Type", "text/plain"}}, "not found\n");
                return;
            }
            return send_error(*ex, e.status, e.code == "NOT_FOUND" ? "UNSUPPORTED" : e.code,
                              e.message);
        }
        if (deps.auth) return admit(ex, *route);
        dispatch(ex, *route, Identity{});
    }

    // Serves an admitted request.
    void dispatch(const std::shared_ptr<Exchange>& ex, const Route& r, const Identity& who) {
        const http::Request& req = ex->request();
        bool get_or_head = req.method == "GET" || req.method == "HEAD";
        switch (r.endpoint) {
            case Endpoint::healthz:
                return ex->respond(200, {{"Content-Type", "text/plain"}}, "ok\n");
            case Endpoint::metrics:
                return ex->respond(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                                   metrics::global().render());
            case Endpoint::base:
                if (!get_or_head) break;
                return respond_json(*ex, 200, "{}");
            case Endpoint::blob:
                if (!get_or_head) break;
                return serve_blob(ex, r);
            case Endpoint::manifest:
                if (!get_or_head) break;
                return serve_manifest(ex, r);
            case Endpoint::tags:
                if (req.method != "GET") break;
                return pass_listing(ex, r, who);
            case Endpoint::catalog:
                if (req.method != "GET") break;
                return pass_listing(ex, r, who);
            case Endpoint::upload_start:
            case Endpoint::upload:
                if (deps.uploads && deps.auth && r.endpoint == Endpoint::upload_start)
                    return check_mount(ex, r, who);
                if (deps.uploads) return deps.uploads(ex, r);
                return send_error(*ex, 405, "UNSUPPORTED",
                                  "pushes are not accepted by this drayage");
        }
        if (deps.passthrough) return deps.passthrough(ex);
        send_error(*ex, 405, "UNSUPPORTED", "method not allowed here");
    }

    // ----- access control (deps.auth set) -----------------------------------------------------
    // What a route needs of the client: pull for reads, pull and push for uploads (as
    // Distribution asks), push for everything else that writes.
    static std::vector<Action> needed(const Route& r, std::string_view method) {
        bool read = method == "GET" || method == "HEAD";
        switch (r.endpoint) {
            case Endpoint::blob:
            case Endpoint::manifest:
            case Endpoint::tags:
                if (read) return {Action::pull};
                return {Action::push};
            case Endpoint::upload_start:
            case Endpoint::upload: return {Action::pull, Action::push};
            default: return {Action::push};
        }
    }

    static std::string scope_for(const std::string& repo, const std::vector<Action>& actions) {
        std::string s = "repository:" + repo + ":";
        for (std::size_t i = 0; i < actions.size(); ++i)
            s += std::string(i ? "," : "") + (actions[i] == Action::pull ? "pull" : "push");
        return s;
    }

    // Checks the client against the rules before anything is routed, then dispatches. Normalises
    // r.name (so caching, links and the upstream all see one spelling).
    void admit(const std::shared_ptr<Exchange>& ex, Route r) {
        if (r.endpoint == Endpoint::healthz || r.endpoint == Endpoint::metrics)
            return dispatch(ex, r, Identity{});
        // New Basic credentials are checked off the loop first (bcrypt); the rest at once.
        deps.auth->prepare(ex->request(), [self = shared_from_this(), ex, r](bool ready) mutable {
            if (ex->closed()) return;
            if (!ready) {
                ex->set_outcome("denied:busy");
                return send_error(*ex, 503, "UNAVAILABLE",
                                  "too many password checks in progress; retry shortly");
            }
            Identity who;
            if (self->admit_by_rules(ex, r, who)) self->dispatch(ex, r, who);
        });
    }

    // True when the rules admit the request; false when the exchange has been answered or a
    // pass-through check will dispatch it later.
    bool admit_by_rules(const std::shared_ptr<Exchange>& ex, Route& r, Identity& who) {
        Authenticator& auth = *deps.auth;
        who = auth.identify(ex->request());
        if (!who.principal.user.empty()) ex->set_user(who.principal.user);
        if (who.kind == Identity::Kind::bad_credentials && !r.name.empty()) {
            // A pass-through user is not in drayage's htpasswd: the upstream may still know it.
            auto name = normalize_repository(r.name, auth.policy().docker_hub());
            if (name && auth.policy().is_passthrough(*name)) {
                r.name = std::move(*name);
                admit_passthrough(ex, r);
                return false;
            }
        }
        if (who.kind == Identity::Kind::bad_credentials) {
            spdlog::info("auth: {} refused: {}", ex->request().peer, who.problem);
            ex->set_outcome("denied:credentials");
            auth.challenge(*ex, "", "authentication required");
            return false;
        }
        if (r.endpoint == Endpoint::base) {
            // docker pings /v2/ first and only authenticates when told to here.
            if (who.kind != Identity::Kind::anonymous) return true;
            ex->set_outcome("denied:anonymous");
            auth.challenge(*ex, "", "authentication required");
            return false;
        }
        if (r.endpoint == Endpoint::catalog) {
            bool ok = who.kind == Identity::Kind::basic ||
                      (who.kind == Identity::Kind::bearer &&
                       std::any_of(who.token_access.begin(), who.token_access.end(),
                                   [](const ResourceAccess& a) { return a.type == "registry"; }));
            if (ok) return true;
            ex->set_outcome("denied:catalog");
            auth.challenge(*ex, "registry:catalog:*", "authentication required");
            return false;
        }
        auto name = normalize_repository(r.name, auth.policy().docker_hub());
        if (!name) {
            send_error(*ex, 400, "NAME_INVALID", name.error().message);
            return false;
        }
        r.name = std::move(*name);
        std::vector<Action> actions = needed(r, ex->request().method);
        for (Action a : actions) {
            if (auth.may(who, r.name, a)) continue;
            if (auth.policy().is_passthrough(r.name)) {
                admit_passthrough(ex, r);
                return false;
            }
            ex->set_outcome("denied:rules");
            auth.challenge(*ex, scope_for(r.name, actions), "access to the repository denied");
            return false;
        }
        return true;
    }

    // A cross-repository mount (?mount=<digest>&from=<repo>) copies a blob into r.name: only
    // for a client that may pull `from` and a digest that belongs to `from`, or bytes of a
    // repository it cannot read would become readable under its own.
    void check_mount(const std::shared_ptr<Exchange>& ex, const Route& r, const Identity& who) {
        // Read with the push path's own reader, and mount= before digest= as the push path
        // acts on them: a usable mount= is what is checked here, and the push code places no
        // blob from digest= without hashing the body.
        auto param = [&](std::string_view key) { return query_param(ex->request().query, key); };
        auto mount = param("mount");
        if (!mount) return deps.uploads(ex, r);
        auto digest = BlobDigest::parse(*mount);
        if (!digest) return deps.uploads(ex, r);  // to the push code, an upload like any other
        auto from =
            normalize_repository(param("from").value_or(""), deps.auth->policy().docker_hub());
        if (!from || !deps.auth->may(who, *from, Action::pull)) {
            ex->set_outcome("denied:mount");
            return deps.auth->challenge(
                *ex,
                scope_for(r.name, {Action::pull, Action::push}) + " " +
                    scope_for(from ? *from : std::string("unknown"), {Action::pull}),
                "mount source not readable");
        }
        Route source{Endpoint::blob, *from, digest->str(), true};
        auto self = shared_from_this();
        prove_blob(ex, source, [self, ex, r] { self->deps.uploads(ex, r); });
    }

    // auth.passthrough: reads of these repositories are allowed when the upstream lets the
    // client's own Basic credentials read them (UpstreamAccessCheck; fails closed). Writes are
    // never passed through: they need a rule.
    void admit_passthrough(const std::shared_ptr<Exchange>& ex, const Route& r) {
        Authenticator& auth = *deps.auth;
        std::vector<Action> actions = needed(r, ex->request().method);
        auto creds = basic_credentials(ex->request());
        bool reads = actions.size() == 1 && actions[0] == Action::pull;
        if (!deps.upstream_access || !reads || !creds) {
            // The token endpoint checks such credentials upstream too (Authenticator::grant).
            ex->set_outcome("denied:passthrough");
            return auth.challenge(*ex, scope_for(r.name, actions),
                                  "credentials for the upstream registry required");
        }
        // A tag listing names no manifest: HEAD "latest" (a 404 after the access check still
        // says the repository is readable).
        std::string reference = r.endpoint == Endpoint::tags ? "latest" : r.reference;
        bool blob = r.endpoint == Endpoint::blob;
        auto self = shared_from_this();
        std::string user = creds->first;
        deps.upstream_access->check(
            ex->request().peer, creds->first, creds->second, r.name, reference, blob,
            [self, ex, r, user](PassthroughVerdict verdict) {
                if (ex->closed()) return;
                if (verdict == PassthroughVerdict::busy) {
                    ex->set_outcome("denied:busy");
                    return send_error(*ex, 503, "UNAVAILABLE",
                                      "too many pass-through checks waiting; retry shortly");
                }
                if (verdict != PassthroughVerdict::allowed) {
                    ex->set_outcome("denied:passthrough");
                    return self->deps.auth->challenge_basic(*ex,
                                                            "the upstream registry refused access");
                }
                ex->set_user(user);
                Identity who;
                who.kind = Identity::Kind::basic;
                who.principal = Principal{user, true};
                self->dispatch(ex, r, who);
            });
    }

    void authorize(const std::shared_ptr<Exchange>& ex, std::string_view repo, Action action,
                   std::function<void(bool)> done) {
        if (!deps.auth) return done(true);
        Authenticator& auth = *deps.auth;
        Identity who = auth.identify(ex->request());
        auto name = normalize_repository(repo, auth.policy().docker_hub());
        if (name && auth.may(who, *name, action)) return done(true);
        ex->set_outcome("denied:rules");
        auth.challenge(*ex, name ? scope_for(*name, {action}) : std::string(),
                       "access to the repository denied");
        done(false);
    }

    // The repository/digest proof: `go` runs only when drayage knows `digest` belongs to
    // `repo` — a link recorded by an earlier proof or by a push to `repo`, the repository's
    // layer link in the bucket, or a 200 for a HEAD of the blob in that repository upstream (a
    // manifest of `repo` naming the digest is not proof: see fetch_manifest). Otherwise the
    // client gets 404 BLOB_UNKNOWN (503 when the upstream could not answer), the same as for a
    // blob that does not exist, and never joins a fill.
    void prove_blob(const std::shared_ptr<Exchange>& ex, const Route& r, std::function<void()> go) {
        auto linked = deps.cache->is_linked(r.name, r.reference);
        if (linked && *linked) return go();
        auto self = shared_from_this();
        auto ask_upstream = [self, ex, r, go] {
            if (!self->deps.upstream) return self->refuse_unlinked(*ex, std::nullopt);
            self->deps.upstream->head_blob(r.name, r.reference,
                                           [self, ex, r, go](Result<UpstreamBlobHead> h) {
                                               if (ex->closed()) return;
                                               if (!h) return self->refuse_unlinked(*ex, h.error());
                                               self->deps.cache->link(r.name, r.reference);
                                               go();
                                           });
        };
        const auto& s3cfg = deps.config->storage.s3;
        auto digest = BlobDigest::parse(r.reference);
        if (!deps.bucket || !s3cfg || !digest || digest->algorithm() != DigestAlgorithm::sha256)
            return ask_upstream();
        s3::BucketLayout layout(s3cfg->rootdirectory);
        deps.bucket->head(layout.layer_link_key(r.name, *digest),
                          [self, ex, r, go, ask_upstream](Result<s3::ObjectInfo> info) {
                              if (ex->closed()) return;
                              if (!info) return ask_upstream();
                              self->deps.cache->link(r.name, r.reference);
                              go();
                          });
    }

    void refuse_unlinked(Exchange& ex, const std::optional<Error>& upstream_error) {
        if (upstream_error && is_upstream_outage(*upstream_error)) {
            ex.set_outcome("unproven:upstream-down");
            return send_error(ex, 503, "UNAVAILABLE",
                              "cannot confirm the blob belongs to this repository now");
        }
        ex.set_outcome("unproven");
        outcome_counter("blob", "unproven").inc();
        send_error(ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    }

    static void respond_json(Exchange& ex, int status, std::string body) {
        HeaderList h = api_headers();
        h.emplace_back("Content-Type", "application/json");
        ex.respond(status, std::move(h), std::move(body));
    }

    // ----- blobs -----------------------------------------------------------------------------
    void serve_blob(const std::shared_ptr<Exchange>& ex, const Route& r) {
        if (deps.auth) {
            auto self = shared_from_this();
            return prove_blob(ex, r, [self, ex, r] { self->serve_proven_blob(ex, r); });
        }
        serve_proven_blob(ex, r);
    }

    void serve_proven_blob(const std::shared_ptr<Exchange>& ex, const Route& r) {
        const http::Request& req = ex->request();
        static metrics::Counter& hits = outcome_counter("blob", "hit");
        if (req.method == "GET" && req.header("Range").empty()) {
            switch (serve_small_hit(*ex, *deps.cache, r.reference)) {
                case SmallHit::served: return hits.inc();
                case SmallHit::larger: {  // known complete: no second lookup
                    auto whole = deps.cache->open_reader(r.reference, 0, std::nullopt);
                    if (!whole && whole.error().code == cache::kErrNotFound) break;  // evicted
                    ex->set_outcome("hit");
                    hits.inc();
                    return stream_from_cache(ex, r.reference, {}, std::move(whole));
                }
                case SmallHit::not_served: break;
            }
        }
        auto lookup = deps.cache->lookup(r.reference);
        if (!lookup) return send_error(*ex, 500, "UNKNOWN", lookup.error().message);
        if (req.method == "HEAD") return head_blob(ex, r, *lookup);
        if (lookup->presence != cache::Presence::absent) {
            static metrics::Counter& joins = outcome_counter("blob", "join");
            const bool hit = lookup->presence == cache::Presence::complete;
            ex->set_outcome(hit ? "hit" : "join");
            (hit ? hits : joins).inc();
            return stream_from_cache(ex, r.reference, std::string(req.header("Range")));
        }
        join_or_start_miss(ex, r);
    }

    void head_blob(const std::shared_ptr<Exchange>& ex, const Route& r, const cache::Lookup& l) {
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

    void head_from_origin(const std::shared_ptr<Exchange>& ex, const Route& r, std::size_t i) {
        if (i >= deps.origins.size()) {
            ex->set_outcome("miss:none");
            return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
        }
        auto self = shared_from_this();
        deps.origins[i]->head(r.name, r.reference, [self, ex, r, i](Result<OriginHead> h) {
            if (ex->closed()) return;
            if (!h) {
                if (h.error().code == "NOT_FOUND") return self->head_from_origin(ex, r, i + 1);
                return send_origin_error(*ex, h.error(), "BLOB_UNKNOWN");
            }
            ex->set_outcome("head:" + std::string(self->deps.origins[i]->name()));
            ex->send_head_lines(200, blob_head_lines(r.reference), h->size);
            ex->finish();
        });
    }

    // Serves from a complete or filling blob; `range` is the client's Range header.
    void stream_from_cache(const std::shared_ptr<Exchange>& ex, const std::string& digest,
                           const std::string& range) {
        stream_from_cache(ex, digest, range, deps.cache->open_reader(digest, 0, std::nullopt));
    }
    // The same with the reader of the whole blob already opened.
    void stream_from_cache(const std::shared_ptr<Exchange>& ex, const std::string& digest,
                           const std::string& range,
                           Result<std::unique_ptr<cache::BlobReader>> whole) {
        respond_from_cache(ex, digest, range, std::move(whole),
                           [this, &digest](std::uint64_t off, std::optional<std::uint64_t> len) {
                               return deps.cache->open_reader(digest, off, len);
                           });
    }

    void join_or_start_miss(const std::shared_ptr<Exchange>& ex, const Route& r) {
        std::string range(ex->request().header("Range"));
        auto it = misses.find(r.reference);
        if (it != misses.end()) {
            ex->set_outcome("wait");
            it->second->waiters.push_back({ex, range});
            return;
        }
        if (deps.origins.empty()) {
            ex->set_outcome("miss:none");
            return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
        }
        auto miss = std::make_shared<BlobMiss>();
        miss->repo = r.name;
        miss->digest = r.reference;
        miss->waiters.push_back({ex, range});
        misses[r.reference] = miss;
        ask_origin(miss);
    }

    void ask_origin(const std::shared_ptr<BlobMiss>& miss) {
        if (miss->origin >= deps.origins.size()) {
            misses.erase(miss->digest);
            for (auto& w : miss->waiters) {
                if (w.ex->closed()) continue;
                w.ex->set_outcome("miss:none");
                send_error(*w.ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
            }
            return;
        }
        auto self = shared_from_this();
        BlobOrigin& origin = *deps.origins[miss->origin];
        OriginSink sink;
        sink.on_head = [self, miss](const OriginHead& head) {
            return self->origin_head(miss, head);
        };
        sink.on_data = [miss](std::string_view bytes) {
            if (!miss->fill) return true;
            bool more = miss->fill->append(bytes);
            if (miss->bucket_copy) {
                EVP_DigestUpdate(miss->hash.get(), bytes.data(), bytes.size());
                more = miss->bucket_copy->write(bytes) && more;
            }
            return more;
        };
        sink.on_done = [self, miss](Status st) { self->origin_done(miss, st); };
        miss->transfer = origin.get(miss->repo, miss->digest, std::move(sink));
    }

    bool origin_head(const std::shared_ptr<BlobMiss>& miss, const OriginHead& head) {
        miss->head_seen = true;
        auto fh = deps.cache->start_or_join_fill(miss->digest, head.size);
        if (!fh) {
            misses.erase(miss->digest);
            miss->transfer.reset();
            if (fh.error().code == cache::kErrTooLarge ||
                fh.error().code == cache::kErrUnwritable) {
                // Larger than the whole cache, or the cache cannot store right now: each client
                // gets its own verified stream.
                if (fh.error().code == cache::kErrTooLarge) {
                    spdlog::info("blob {} is larger than cache.max_size; streaming it uncached",
                                 miss->digest);
                }
                // Started on the next loop turn: this is a callback of the origin's transfer,
                // and curl refuses new transfers from inside its callbacks.
                auto origin = deps.origins[miss->origin];
                auto start = new std::function<void()>([miss, origin] {
                    for (auto& w : miss->waiters) {
                        if (w.ex->closed()) continue;
                        w.ex->set_outcome("uncached:" + std::string(origin->name()));
                        outcome_counter("blob", "uncached").inc();
                        std::make_shared<PassThrough>(w.ex, miss->digest, w.range,
                                                      blob_head_lines(miss->digest))
                            ->start(*origin, miss->repo);
                    }
                });
                event_base_once(
                    deps.cache->base(), -1, EV_TIMEOUT,
                    [](evutil_socket_t, short, void* arg) {
                        std::unique_ptr<std::function<void()>> fn(
                            static_cast<std::function<void()>*>(arg));
                        (*fn)();
                    },
                    start, nullptr);
                return false;
            }
            spdlog::warn("blob {} not cacheable: {}", miss->digest, fh.error().to_string());
            for (auto& w : miss->waiters) {
                if (!w.ex->closed())
                    send_error(*w.ex, 503, "UNAVAILABLE",
                               "blob cannot be cached: " + fh.error().message);
            }
            return false;
        }
        std::string origin_name(deps.origins[miss->origin]->name());
        misses.erase(miss->digest);
        bool drive = fh->started;
        if (drive) {
            miss->fill = fh->fill;
            std::weak_ptr<BlobMiss> weak = miss;
            miss->fill->set_resume_callback([weak] {
                if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
            });
            std::weak_ptr<Impl> front = weak_from_this();
            miss->fill->set_cancel_callback([weak, front] {
                auto m = weak.lock();
                if (!m) return;
                if (m->transfer) {
                    m->transfer->cancel();
                    m->transfer.reset();
                }
                // The source is stopped before its end: a copy to the bucket is abandoned too
                // (finish_write_through aborts it), not left as an open multipart upload.
                if (auto f = front.lock())
                    f->finish_write_through(m, make_error(cache::kErrAbandoned, "fill cancelled"));
            });
        }
        if (drive && origin_name == "upstream") start_write_through(miss, head.size);
        for (auto& w : miss->waiters) {
            if (w.ex->closed()) continue;
            w.ex->set_outcome("miss:" + origin_name);
            outcome_counter("blob", "miss:" + origin_name).inc();
            stream_from_cache(w.ex, miss->digest, w.range);
        }
        miss->waiters.clear();
        if (!drive) {
            // Someone else fills this digest already (e.g. a push); our bytes are not needed.
            miss->transfer.reset();
            return false;
        }
        return true;
    }

    void origin_done(const std::shared_ptr<BlobMiss>& miss, Status st) {
        auto transfer = std::move(miss->transfer);  // keep alive until we return
        if (!miss->head_seen) {
            if (!st && st.error().code == "NOT_FOUND") {
                ++miss->origin;
                return ask_origin(miss);
            }
            misses.erase(miss->digest);
            Error e = st ? make_error("UNKNOWN", "origin ended without a response") : st.error();
            spdlog::warn("blob {} from {}: {}", miss->digest, deps.origins[miss->origin]->name(),
                         e.to_string());
            for (auto& w : miss->waiters) {
                if (!w.ex->closed()) send_origin_error(*w.ex, e, "BLOB_UNKNOWN");
            }
            return;
        }
        if (!miss->fill) return;
        finish_write_through(miss, st);
        if (st) {
            miss->fill->finish();
        } else {
            spdlog::warn("blob {} from {} failed mid-stream: {}", miss->digest,
                         deps.origins[miss->origin]->name(), st.error().to_string());
            miss->fill->fail(st.error());
        }
        miss->fill.reset();
    }

    void start_write_through(const std::shared_ptr<BlobMiss>& miss,
                             std::optional<std::uint64_t> size) {
        const auto& s3cfg = deps.config->storage.s3;
        if (!deps.bucket || !s3cfg || !s3cfg->writethrough) return;
        auto digest = BlobDigest::parse(miss->digest);
        if (!digest || digest->algorithm() != DigestAlgorithm::sha256) return;
        s3::BucketLayout layout(s3cfg->rootdirectory);
        s3::MultipartUpload::Options o;
        o.key = layout.blob_data_key(*digest);
        o.expected_size = size.value_or(0);
        std::weak_ptr<BlobMiss> weak = miss;
        o.on_writable = [weak] {
            if (auto m = weak.lock(); m && m->transfer) m->transfer->resume();
        };
        miss->hash.reset(EVP_MD_CTX_new());
        EVP_DigestInit_ex(miss->hash.get(), EVP_sha256(), nullptr);
        miss->bucket_copy = s3::MultipartUpload::start(*deps.bucket, std::move(o));
    }

    void finish_write_through(const std::shared_ptr<BlobMiss>& miss, const Status& st) {
        auto upload = std::move(miss->bucket_copy);
        if (!upload) return;
        std::string digest = miss->digest;
        bool verified = false;
        if (st) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int len = 0;
            EVP_DigestFinal_ex(miss->hash.get(), md, &len);
            verified = "sha256:" + s3::hex_encode(
                                       std::string_view(reinterpret_cast<const char*>(md), len)) ==
                       digest;
        }
        if (!verified) {
            upload->abort([digest](Status) {
                spdlog::info("write-through of {} abandoned (source failed or digest mismatch)",
                             digest);
            });
            return;
        }
        upload->finish([digest, upload](Result<std::string> etag) {
            if (etag) {
                metrics::global()
                    .counter("drayage_writethrough_total", "Blobs written through to the bucket.",
                             {{"result", "ok"}})
                    .inc();
                spdlog::info("write-through of {} to the bucket complete", digest);
            } else {
                metrics::global()
                    .counter("drayage_writethrough_total", "Blobs written through to the bucket.",
                             {{"result", "error"}})
                    .inc();
                spdlog::warn("write-through of {} failed: {}", digest, etag.error().to_string());
            }
        });
    }

    // ----- manifests -------------------------------------------------------------------------
    static HeaderList manifest_headers(const std::string& media_type, const std::string& digest) {
        HeaderList h = api_headers();
        h.emplace_back("Content-Type", media_type);
        h.emplace_back("Docker-Content-Digest", digest);
        h.emplace_back("ETag", "\"" + digest + "\"");
        return h;
    }

    void send_manifest(Exchange& ex, const cache::Document& doc, const std::string& digest,
                       bool stale) {
        HeaderList h = manifest_headers(doc.media_type, digest);
        if (stale) h.emplace_back("Warning", "110 drayage \"Response is Stale\"");
        ex.send_head(200, std::move(h), doc.bytes.size());
        ex.write(doc.bytes);
        ex.finish();
    }

    std::string accept_of(const Exchange& ex) const {
        std::string accept;
        for (const auto& [k, v] : ex.request().headers) {
            if (!http::iequals(k, "Accept")) continue;
            if (!accept.empty()) accept += ", ";
            accept += v;
        }
        return accept.empty() ? kManifestAccept : accept;
    }

    // Whether the client's Accept admits a manifest of `media_type` (no Accept: anything).
    static bool accepts(const Exchange& ex, const std::string& media_type) {
        bool any_accept = false;
        for (const auto& [k, v] : ex.request().headers) {
            if (!http::iequals(k, "Accept")) continue;
            any_accept = true;
            std::string_view list = v;
            while (!list.empty()) {
                auto comma = list.find(',');
                std::string_view item = list.substr(0, comma);
                list = comma == std::string_view::npos ? "" : list.substr(comma + 1);
                item = item.substr(0, item.find(';'));
                while (!item.empty() && item.front() == ' ')
                    item.remove_prefix(1);
                while (!item.empty() && item.back() == ' ')
                    item.remove_suffix(1);
                if (item == media_type || item == "*/*") return true;
            }
        }
        return !any_accept;
    }

    void serve_manifest(const std::shared_ptr<Exchange>& ex, const Route& r) {
        if (r.by_digest) {
            // With auth, a cached manifest is served for <name> only when it was fetched for
            // <name> (or pushed there); otherwise the upstream is asked for <name>.
            if (deps.auth) {
                auto linked = deps.cache->is_linked(r.name, r.reference);
                if (!linked || !*linked) return fetch_manifest(ex, r);
            }
            auto doc = deps.cache->get_document(r.reference);
            if (doc && *doc) {
                ex->set_outcome("hit");
                outcome_counter("manifest", "hit").inc();
                return send_manifest(*ex, **doc, r.reference, false);
            }
            return fetch_manifest(ex, r);
        }
        std::string key = r.name + ":" + r.reference;
        auto it = tags.find(key);
        if (it == tags.end()) it = restore_tag(key);
        if (it == tags.end() || !accepts(*ex, it->second.media_type)) return fetch_manifest(ex, r);
        TagEntry entry = it->second;
        auto doc = deps.cache->get_document(entry.digest);
        if (!doc || !*doc) {
            forget_tag(it);
            return fetch_manifest(ex, r);
        }
        if (Clock::now() - entry.checked < upstream_config().manifest_ttl) {
            ex->set_outcome("hit");
            outcome_counter("manifest", "hit").inc();
            return send_manifest(*ex, **doc, entry.digest, false);
        }
        revalidate_tag(ex, r, key, entry, std::move(**doc));
    }

    bool may_serve_stale(const TagEntry& e) const {
        return Clock::now() - e.checked < upstream_config().max_stale;
    }

    static bool is_upstream_outage(const Error& e) {
        return e.code == "UNREACHABLE" || e.code == "TIMEOUT" || e.code == "INTERRUPTED" ||
               e.code == "TOOMANYREQUESTS" || e.status >= 500 || e.code.rfind("UPSTREAM_5", 0) == 0;
    }

    void revalidate_tag(const std::shared_ptr<Exchange>& ex, const Route& r, const std::string& key,
                        const TagEntry& entry, cache::Document doc) {
        if (!deps.upstream) {
            ex->set_outcome("stale");
            return send_manifest(*ex, doc, entry.digest, true);
        }
        auto self = shared_from_this();
        deps.upstream->head_manifest(
            r.name, r.reference, accept_of(*ex),
            [self, ex, r, key, entry, doc = std::move(doc)](Result<UpstreamManifest> head) {
                if (ex->closed()) return;
                if (head && head->digest == entry.digest) {
                    self->remember_tag(key, entry.digest, entry.media_type);
                    ex->set_outcome("revalidated");
                    outcome_counter("manifest", "revalidated").inc();
                    return self->send_manifest(*ex, doc, entry.digest, false);
                }
                if (head) return self->fetch_manifest(ex, r);  // tag moved
                if (is_upstream_outage(head.error()) && self->may_serve_stale(entry)) {
                    ex->set_outcome("stale");
                    outcome_counter("manifest", "stale").inc();
                    return self->send_manifest(*ex, doc, entry.digest, true);
                }
                send_origin_error(*ex, head.error(), "MANIFEST_UNKNOWN");
            });
    }

    void fetch_manifest(const std::shared_ptr<Exchange>& ex, const Route& r) {
        if (!deps.upstream) {
            ex->set_outcome("miss:none");
            return send_error(*ex, 404, "MANIFEST_UNKNOWN", "manifest unknown");
        }
        auto self = shared_from_this();
        std::string accept = accept_of(*ex);
        bool head_only = ex->request().method == "HEAD";
        auto done = [self, ex, r, accept, head_only](Result<UpstreamManifest> m) {
            if (ex->closed()) return;
            if (!m) {
                ex->set_outcome("miss:error");
                return send_origin_error(*ex, m.error(), "MANIFEST_UNKNOWN");
            }
            ex->set_outcome("miss:upstream");
            outcome_counter("manifest", "miss:upstream").inc();
            std::string digest = m->digest.empty() && r.by_digest ? r.reference : m->digest;
            if (head_only) {
                HeaderList h = manifest_headers(m->media_type, digest);
                ex->send_head(200, std::move(h), m->size);
                return ex->finish();
            }
            if (digest.empty()) {
                // Without a digest the manifest cannot be cached by digest; pass it on.
                HeaderList h = api_headers();
                h.emplace_back("Content-Type", m->media_type);
                return ex->respond(200, std::move(h), std::move(m->body));
            }
            if (!r.by_digest) self->remember_tag(r.name + ":" + r.reference, digest, m->media_type);
            // The manifest belongs to r.name: it was fetched for r.name. What it names does
            // not, by that alone: a manifest is a claim of whoever pushed it, and a registry
            // may accept digests it does not hold there (foreign layers with `urls`). Its
            // config and layers are linked once proven (prove_blob), child manifests once
            // fetched for r.name; the body is not parsed.
            self->deps.cache->link(r.name, digest);
            cache::Document doc{m->media_type, m->body};
            auto st = self->deps.cache->put_document(digest, m->media_type, std::move(m->body));
            if (!st) spdlog::warn("manifest {} not cached: {}", digest, st.error().to_string());
            self->send_manifest(*ex, doc, digest, false);
        };
        if (head_only && !r.by_digest) {
            deps.upstream->head_manifest(r.name, r.reference, accept, std::move(done));
        } else {
            deps.upstream->get_manifest(r.name, r.reference, accept, std::move(done));
        }
    }

    // ----- listings --------------------------------------------------------------------------
    // The catalog without the repositories `who` may not pull (auth on). Pagination (Link) is
    // kept as the upstream sent it, so a page may hold fewer than n names.
    Result<std::string> filter_catalog(const Identity& who, const std::string& body) const {
        const AccessPolicy& policy = deps.auth->policy();
        return filter_catalog_page(body, [&](const std::string& n) {
            auto name = normalize_repository(n, policy.docker_hub());
            return name && policy.allows(who.principal, *name, Action::pull);
        });
    }

    void pass_listing(const std::shared_ptr<Exchange>& ex, const Route& r, const Identity& who) {
        const std::string& q = ex->request().query;
        if (r.endpoint == Endpoint::catalog) {
            auto n = catalog_page_size(q);
            if (n && *n > kMaxCatalogEntries) {
                return send_error(*ex, 400, "PAGINATION_NUMBER_INVALID",
                                  "invalid number of results requested: n may be at most " +
                                      std::to_string(kMaxCatalogEntries));
            }
        }
        if (!deps.upstream)
            return respond_json(*ex, 200,
                                r.endpoint == Endpoint::catalog
                                    ? R"({"repositories":[]})"
                                    : R"({"name":")" + r.name + R"(","tags":[]})");
        auto self = shared_from_this();
        bool filter = deps.auth && r.endpoint == Endpoint::catalog;
        auto done = [self, ex, filter, who](Result<UpstreamListing> l) {
            if (ex->closed()) return;
            if (!l) return send_origin_error(*ex, l.error(), "NAME_UNKNOWN");
            if (filter) {
                auto page = self->filter_catalog(who, l->body);
                if (!page) {
                    spdlog::warn("catalog from the upstream not served: {}",
                                 page.error().to_string());
                    return send_error(*ex, 502, "UNKNOWN",
                                      "the upstream sent an unreadable catalog");
                }
                l->body = std::move(*page);
            }
            HeaderList h = api_headers();
            h.emplace_back("Content-Type", "application/json");
            auto link = net::find_header(l->headers, "Link");
            if (!link.empty()) h.emplace_back("Link", std::string(link));
            ex->respond(200, std::move(h), std::move(l->body));
        };
        if (r.endpoint == Endpoint::catalog) {
            deps.upstream->get_catalog(q, std::move(done));
        } else {
            deps.upstream->get_tags(r.name, q, std::move(done));
        }
    }
};

RegistryFront::RegistryFront(FrontDeps deps) : impl_(std::make_shared<Impl>(std::move(deps))) {}
RegistryFront::~RegistryFront() = default;

void RegistryFront::handle(std::shared_ptr<http::Exchange> exchange) {
    impl_->handle(exchange);
}

void RegistryFront::authorize(const std::shared_ptr<http::Exchange>& exchange,
                              std::string_view repo, Action action,
                              std::function<void(bool)> done) {
    impl_->authorize(exchange, repo, action, std::move(done));
}

}  // namespace drayage::registry
