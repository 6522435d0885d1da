// A GET of a blob the cache does not have: the fetch layer (drayage/registry/fetch.hpp) brings
// it in, and each client is answered from what it says: read from the fill at the client's own
// offset and pace, streamed uncached and verified, or the error.
#include <string>

#include "blob_serving.hpp"
#include "front_impl.hpp"
#include "responses.hpp"
#include "uncached_stream.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

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
                    std::make_shared<UncachedStream>(ex, digest, range, blob_head_lines(digest))
                        ->start(*o.source, repo);
                    return;
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
