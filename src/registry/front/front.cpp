// The registry front's entry: RegistryFront, routing and dispatch. Which file does which part of
// the front's work is listed in front_impl.hpp.
#include "drayage/registry/front.hpp"

#include <string>
#include <utility>

#include "drayage/util/clock.hpp"
#include "drayage/util/metrics.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts

RegistryFront::Impl::Impl(FrontDeps d) : deps(std::move(d)) {
    // Records too old to be served stale would only be refetched: drop them, which also
    // bounds how many there are.
    if (deps.cache != nullptr && deps.config != nullptr) {
        deps.cache->drop_tags_checked_before(clock::unix_now() -
                                             upstream_config().max_stale.count());
    }
}

// ----- routing ---------------------------------------------------------------------------
void RegistryFront::Impl::handle(const std::shared_ptr<Exchange>& ex) {
    const http::Request& req = ex->request();
    if (deps.auth && req.path == "/auth/token") return deps.auth->handle_token(ex);
    auto route = parse_route(req.path);
    if (!route) {
        const Error& e = route.error();
        if (e.status == 404 && req.path.substr(0, 4) != "/v2/") {
            ex->respond(404, {{"Content-Type", "text/plain"}}, "not found\n");
            return;
        }
        return send_error(*ex, e.status, e.code == "NOT_FOUND" ? "UNSUPPORTED" : e.code, e.message);
    }
    if (deps.auth) return admit(ex, *route);
    dispatch(ex, *route, Identity{});
}

void RegistryFront::Impl::dispatch(const std::shared_ptr<Exchange>& ex, const Route& r,
                                   const Identity& who) {
    const http::Request& req = ex->request();
    bool get_or_head = req.method == "GET" || req.method == "HEAD";
    switch (r.endpoint) {
        case Endpoint::healthz: return ex->respond(200, {{"Content-Type", "text/plain"}}, "ok\n");
        case Endpoint::metrics:
            return ex->respond(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                               metrics::global().render());
        case Endpoint::base:
            if (!get_or_head) break;
            return respond_json(*ex, 200, "{}");
        case Endpoint::blob:
            if (req.method == "DELETE" && deps.forward) return forward_delete(ex, r);
            if (!get_or_head) break;
            return serve_blob(ex, r);
        case Endpoint::manifest:
            if (req.method == "DELETE" && deps.forward) return forward_delete(ex, r);
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
            return send_error(*ex, 405, "UNSUPPORTED", "pushes are not accepted by this drayage");
    }
    if (deps.forward) return deps.forward(ex, {});
    send_error(*ex, 405, "UNSUPPORTED", "method not allowed here");
}

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
