// Listings: /v2/_catalog and /v2/<name>/tags/list, passed through to the upstream (an empty list
// without one); with auth, the catalog shows only the repositories the client may pull.
#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "drayage/registry/catalog.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using http::HeaderList;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

// The catalog without the repositories `who` may not pull (auth on). Pagination (Link) is
// kept as the upstream sent it, so a page may hold fewer than n names.
Result<std::string> RegistryFront::Impl::filter_catalog(const Identity& who,
                                                        const std::string& body) const {
    const AccessPolicy& policy = deps.auth->policy();
    return filter_catalog_page(body, [&](const std::string& n) {
        auto name = normalize_repository(n, policy.docker_hub());
        return name && policy.allows(who.principal, *name, Action::pull);
    });
}

void RegistryFront::Impl::pass_listing(const std::shared_ptr<Exchange>& ex, const Route& r,
                                       const Identity& who) {
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
                spdlog::warn("catalog from the upstream not served: {}", page.error().to_string());
                return send_error(*ex, 502, "UNKNOWN", "the upstream sent an unreadable catalog");
            }
            l->body = std::move(*page);
        }
        HeaderList h = api::headers();
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

}  // namespace drayage::registry
