// Listings: /v2/_catalog and /v2/<name>/tags/list. drayage fetches the whole list from the
// upstream (following its Link pages), keeps it sorted for upstream.manifest_ttl (served stale
// while the upstream is down, up to upstream.max_stale, like a tag), and pages it itself as the
// spec says (n, last, Link), whatever the upstream does with n and last. With auth, the catalog
// shows only the repositories the client may pull, filtered before it is paged.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "drayage/registry/catalog.hpp"
#include "front_impl.hpp"
#include "responses.hpp"

namespace drayage::registry {

using http::Exchange;
using http::HeaderList;
using namespace front;  // NOLINT(google-build-using-namespace): the front's own parts
using Clock = RegistryFront::Impl::Clock;

namespace {

constexpr std::string_view kCatalogKey = "_catalog";

// Memory of one kept list: its names and their std::string headers.
std::size_t listing_cost(const std::vector<std::string>& names) {
    std::size_t cost = 0;
    for (const auto& n : names)
        cost += n.size() + sizeof(std::string);
    return cost;
}

}  // namespace

// One whole listing being read from the upstream, page after page.
struct RegistryFront::Impl::ListingFetch {
    std::string repo;  // "" for the catalog
    std::vector<std::string> names;
    std::size_t pages = 0;
    std::size_t bytes = 0;
    std::function<void(Result<std::vector<std::string>>)> done;
};

void RegistryFront::Impl::fetch_listing(
    std::string repo, std::function<void(Result<std::vector<std::string>>)> done) {
    auto fetch = std::make_shared<ListingFetch>();
    fetch->repo = std::move(repo);
    fetch->done = std::move(done);
    fetch_listing_page(fetch, "");
}

void RegistryFront::Impl::fetch_listing_page(const std::shared_ptr<ListingFetch>& fetch,
                                             const std::string& query) {
    auto on_page = [fetch, self = shared_from_this()](Result<UpstreamListing> l) {
        if (!l) {
            // One page over the byte cap is a listing too long, as many pages are (a 502, not a
            // 503: asking again brings the same page).
            if (l.error().code == "TOO_LARGE")
                return fetch->done(make_error("LISTING_TOO_LONG", l.error().message));
            return fetch->done(l.error());
        }
        fetch->pages += 1;
        fetch->bytes += l->body.size();
        auto st =
            read_listing_page(l->body, fetch->repo.empty() ? "repositories" : "tags", fetch->names);
        if (!st) return fetch->done(st.error());
        auto next = next_page_query(net::find_header(l->headers, "Link"));
        if (!next) {
            std::sort(fetch->names.begin(), fetch->names.end());
            fetch->names.erase(std::unique(fetch->names.begin(), fetch->names.end()),
                               fetch->names.end());
            return fetch->done(std::move(fetch->names));
        }
        if (fetch->pages >= kMaxListingPages || fetch->bytes >= UpstreamRegistry::kMaxListingBytes)
            return fetch->done(
                make_error("LISTING_TOO_LONG",
                           "more than " + std::to_string(kMaxListingPages) + " pages or 16 MiB"));
        self->fetch_listing_page(fetch, *next);
    };
    if (fetch->repo.empty()) {
        deps.upstream->get_catalog(query, std::move(on_page));
    } else {
        deps.upstream->get_tags(fetch->repo, query, std::move(on_page));
    }
}

void RegistryFront::Impl::keep_listing(const std::string& key, std::vector<std::string> names) {
    if (auto old = listings.find(key); old != listings.end()) {
        listings_cost -= old->second.cost;
        listings.erase(old);
    }
    Listing l{std::move(names), Clock::now(), 0};
    l.cost = listing_cost(l.names);
    // Bounded: the lists fetched longest ago go first.
    while (!listings.empty() && listings_cost + l.cost > kMaxListingsCost) {
        auto oldest = std::min_element(listings.begin(), listings.end(), [](auto& a, auto& b) {
            return a.second.fetched < b.second.fetched;
        });
        listings_cost -= oldest->second.cost;
        listings.erase(oldest);
    }
    if (l.cost > kMaxListingsCost) return;
    listings_cost += l.cost;
    listings.emplace(key, std::move(l));
}

void RegistryFront::Impl::send_listing(const std::shared_ptr<Exchange>& ex, const Route& r,
                                       const Identity& who, const ListingQuery& q,
                                       const std::vector<std::string>& names, bool stale) {
    const bool catalog = r.endpoint == Endpoint::catalog;
    std::vector<std::string> readable;
    if (catalog && deps.auth) {
        const AccessPolicy& policy = deps.auth->policy();
        for (const auto& n : names) {
            auto name = normalize_repository(n, policy.docker_hub());
            if (name && policy.allows(who.principal, *name, Action::pull)) readable.push_back(n);
        }
    }
    ListingPage page =
        select_page(catalog && deps.auth ? readable : names, q, catalog ? kMaxCatalogEntries : 0);
    nlohmann::json body = nlohmann::json::object();
    if (!catalog) body["name"] = r.name;
    body[catalog ? "repositories" : "tags"] = page.names;
    HeaderList h = api::headers();
    h.emplace_back("Content-Type", "application/json");
    if (page.next_last) {
        std::string path = catalog ? "/v2/_catalog" : "/v2/" + r.name + "/tags/list";
        h.emplace_back("Link", next_page_link(path, *page.next_last, page.n));
    }
    if (stale) h.emplace_back("Warning", "110 drayage \"Response is Stale\"");
    ex->respond(200, std::move(h),
                body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void RegistryFront::Impl::pass_listing(const std::shared_ptr<Exchange>& ex, const Route& r,
                                       const Identity& who) {
    auto q = parse_listing_query(ex->request().query);
    if (!q) return send_error(*ex, q.error().status, q.error().code, q.error().message);
    const bool catalog = r.endpoint == Endpoint::catalog;
    if (catalog && q->n && *q->n > kMaxCatalogEntries) {
        return send_error(*ex, 400, "PAGINATION_NUMBER_INVALID",
                          "invalid number of results requested: n may be at most " +
                              std::to_string(kMaxCatalogEntries));
    }
    if (!deps.upstream) return send_listing(ex, r, who, *q, {}, false);
    const std::string key = catalog ? std::string(kCatalogKey) : r.name;
    auto cached = listings.find(key);
    if (cached != listings.end() &&
        Clock::now() - cached->second.fetched < upstream_config().manifest_ttl) {
        ex->set_outcome("hit");
        outcome_counter("listing", "hit").inc();
        return send_listing(ex, r, who, *q, cached->second.names, false);
    }
    // One upstream read per listing however many clients wait for it.
    auto [flight, first] = listing_flights.try_emplace(key);
    flight->second.push_back([self = shared_from_this(), ex, r, who, q = *q,
                              key](const Result<std::vector<std::string>>& names) {
        if (ex->closed()) return;
        if (names) {
            ex->set_outcome("miss:upstream");
            outcome_counter("listing", "miss:upstream").inc();
            return self->send_listing(ex, r, who, q, *names, false);
        }
        auto stale = self->listings.find(key);
        if (is_upstream_outage(names.error()) && stale != self->listings.end() &&
            Clock::now() - stale->second.fetched < self->upstream_config().max_stale) {
            ex->set_outcome("stale");
            outcome_counter("listing", "stale").inc();
            return self->send_listing(ex, r, who, q, stale->second.names, true);
        }
        ex->set_outcome("miss:error");
        if (names.error().code == "LISTING_TOO_LONG" || names.error().code == "LISTING_INVALID") {
            return send_error(
                *ex, 502, "UNKNOWN",
                "the upstream sent a listing drayage cannot serve: " + names.error().message);
        }
        send_origin_error(*ex, names.error(), "NAME_UNKNOWN");
    });
    if (!first) {
        outcome_counter("listing", "joined").inc();
        return;
    }
    fetch_listing(catalog ? "" : r.name, [self = shared_from_this(),
                                          key](Result<std::vector<std::string>> names) {
        auto waiters = self->listing_flights.extract(key);
        if (!names &&
            (names.error().code == "LISTING_TOO_LONG" || names.error().code == "LISTING_INVALID")) {
            spdlog::warn("{} from the upstream not served: {}", key, names.error().to_string());
        }
        for (auto& answer : waiters.mapped())
            answer(names);
        if (names) self->keep_listing(key, std::move(*names));
    });
}

}  // namespace drayage::registry
