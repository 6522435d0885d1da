// Deletion through the mirror: DELETE of a blob or a manifest goes to the registry behind, and
// when the registry accepted it (202) drayage ends its own records before the client hears so:
// the repository's link to the digest (which is also the remembered proof, so neither the loop
// nor a hit worker serves the digest for that repository again without a new proof), the tag
// records naming it, and the cached bytes once no repository links them. Whatever else the
// registry answers passes through and changes nothing, except that a manifest DELETE by tag is
// only ever answered 202 or, where the registry cannot delete by tag, 405 UNSUPPORTED (the
// distribution spec allows 400 or 405 there, and nothing else).
#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

namespace {

// A refusal of the registry's that concerns the client, not the deletion: passed through so
// the client can authenticate, or retry later.
bool passes_through(int status) {
    return status == 401 || status == 403 || status == 429 || status >= 500;
}

}  // namespace

void RegistryFront::Impl::forward_delete(const std::shared_ptr<Exchange>& ex, const Route& r) {
    auto self = shared_from_this();
    bool by_tag = r.endpoint == Endpoint::manifest && !r.by_digest;
    deps.forward(ex, [self, ex, r, by_tag](int status, std::function<void(bool)> proceed) {
        if (status == 202) {
            ex->set_outcome("deleted");
            if (by_tag)
                return self->end_tag(r.name + ":" + r.reference, [proceed] { proceed(true); });
            return self->end_digest(r.name, r.reference, [proceed] { proceed(true); });
        }
        if (!by_tag || passes_through(status)) return proceed(true);
        proceed(false);
        ex->set_outcome("delete:unsupported");
        send_error(*ex, 405, "UNSUPPORTED",
                   "the registry behind this mirror does not delete manifests by tag (it "
                   "answered " +
                       std::to_string(status) + "); delete by digest");
    });
}

void RegistryFront::Impl::end_tag(const std::string& key, std::function<void()> done) {
    tags.erase(key);
    deps.cache->drop_tag(key);
    deps.cache->when_idle(std::move(done));
}

void RegistryFront::Impl::end_digest(const std::string& repo, const std::string& digest,
                                     std::function<void()> done) {
    std::string prefix = repo + ":";
    std::erase_if(tags, [&](const auto& kv) {
        return kv.first.compare(0, prefix.size(), prefix) == 0 && kv.second.digest == digest;
    });
    spdlog::info("{} deleted in {} by the registry: its records end here too", digest, repo);
    deps.cache->unlink(repo, digest, std::move(done));
}

}  // namespace drayage::registry
