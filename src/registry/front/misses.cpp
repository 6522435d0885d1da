// A GET of a blob the cache does not have: the fetch layer (drayage/registry/fetch.hpp) brings
// it in, and each client is answered from what it says: read from the fill at the client's own
// offset and pace, streamed uncached and verified (stream_uncached, through ExchangeSink), or the
// error.
#include <string>

#include "blob_serving.hpp"
#include "drayage/registry/uncached_stream.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

namespace {

// The client of an uncached stream as the fetch layer sees it (BlobSink): the blob's headers
// (blob_head_lines) on every head, Registry API error bodies on refusals, the cause of a cut in
// the access log.
class ExchangeSink final : public BlobSink {
public:
    ExchangeSink(std::shared_ptr<Exchange> ex, std::string digest)
        : ex_(std::move(ex)), digest_(std::move(digest)) {}

    bool delimits_unknown_length() const override { return ex_->delimits_unknown_length(); }
    bool closed() const override { return ex_->closed(); }
    std::string_view peer() const override { return ex_->request().peer; }

    void send_whole(std::optional<std::uint64_t> size) override {
        ex_->send_head_lines(200, blob_head_lines(digest_), size);
    }
    void send_span(const ByteSpan& span, std::uint64_t size) override {
        std::string lines = blob_head_lines(digest_);
        add_content_range(lines, span, size);
        ex_->send_head_lines(206, lines, span.last - span.first + 1);
    }
    void send_unsatisfiable(std::uint64_t size) override { send_range_not_satisfiable(*ex_, size); }
    void send_unavailable(std::string_view why) override {
        send_error(*ex_, 503, "UNAVAILABLE", why);
    }

    bool write(std::string_view bytes) override { return ex_->write(bytes); }
    void finish() override { ex_->finish(); }
    void abort(const Error& cause) override {
        ex_->set_outcome("cut:" + cause.code);
        ex_->abort();
    }

    void on_writable(std::function<void()> resume) override { ex_->on_writable(std::move(resume)); }
    void on_closed(std::function<void()> gone) override { ex_->on_closed(std::move(gone)); }

private:
    std::shared_ptr<Exchange> ex_;
    std::string digest_;
};

}  // namespace

void RegistryFront::Impl::serve_miss(const std::shared_ptr<Exchange>& ex, const Route& r) {
    std::string range(ex->request().header("Range"));
    if (deps.fetcher->in_flight(r.reference)) ex->set_outcome("wait");
    cache::Cache* cache = deps.cache;
    deps.fetcher->fetch(
        r.name, r.reference, deps.origins,
        [ex, range, cache, repo = r.name, digest = r.reference](const FetchOutcome& o) {
            if (ex->closed()) return;
            switch (o.kind) {
                case FetchOutcome::Kind::filling: {
                    std::string outcome = "miss:" + std::string(o.source->name());
                    ex->set_outcome(outcome);
                    outcome_counter("blob", outcome).inc();
                    return stream_from_cache(ex, *cache, digest, range);
                }
                case FetchOutcome::Kind::uncached:
                    ex->set_outcome("uncached:" + std::string(o.source->name()));
                    outcome_counter("blob", "uncached").inc();
                    return stream_uncached(*o.source, repo, digest, range,
                                           std::make_shared<ExchangeSink>(ex, digest));
                case FetchOutcome::Kind::not_found:
                    ex->set_outcome("miss:none");
                    return send_error(*ex, 404, "BLOB_UNKNOWN", "blob unknown to registry");
                case FetchOutcome::Kind::failed:
                    if (o.error.code == "CACHE_REFUSED") {
                        return send_error(*ex, 503, "UNAVAILABLE",
                                          "blob cannot be cached: " + o.error.message);
                    }
                    return send_origin_error(*ex, o.error, "BLOB_UNKNOWN");
            }
        });
}

}  // namespace drayage::registry
