// The token endpoint (distribution token spec, GET and OAuth2 POST): which credentials and
// grants it takes, what it grants, and the tokens and refresh tokens it issues.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "auth_codec.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/query.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using namespace detail;
using nlohmann::json;

// Refresh tokens (OAuth2) let containerd and docker renew access tokens without resending the
// password; the user must still be in htpasswd at each renewal.
constexpr std::chrono::seconds kRefreshLifetime{24 * 3600};
constexpr std::uint64_t kMaxTokenRequestBody = 64 * 1024;

std::string first(const std::multimap<std::string, std::string>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? std::string() : it->second;
}

std::string rfc3339(std::int64_t t) {
    return text::rfc3339_utc(t);
}

metrics::Counter& tokens_counter(std::string_view grant) {
    return metrics::global().counter("drayage_auth_tokens_total",
                                     "Tokens issued by drayage's token endpoint, by grant.",
                                     {{"grant", std::string(grant)}});
}

// The token endpoint's error bodies: OAuth2's `error` (RFC 6749 5.2) for OAuth2 clients and a
// Registry API `errors` list for the rest.
std::string token_error(std::string_view oauth, std::string_view code, std::string_view why) {
    return dump(json{{"error", oauth},
                     {"error_description", why},
                     {"errors", json::array({{{"code", code}, {"message", why}}})}});
}

// Too many password or pass-through checks waiting: retry shortly.
void token_busy(http::Exchange& e, std::string_view why) {
    e.respond(503, {{"Content-Type", "application/json"}, {"Retry-After", "1"}},
              token_error("temporarily_unavailable", "UNAVAILABLE", why));
}

void refuse_token(http::Exchange& e, const std::string& service, std::string_view why) {
    spdlog::info("auth: token refused for {}: {}", e.request().peer, why);
    e.respond(401,
              {{"Content-Type", "application/json"},
               {"WWW-Authenticate", "Basic realm=\"" + service + "\""}},
              token_error("invalid_grant", "UNAUTHORIZED", why));
}

// Over kMaxTokenScopes: answered before any password or upstream check. False when within.
bool too_many_scopes(http::Exchange& e, std::size_t asked) {
    if (asked <= kMaxTokenScopes) return false;
    std::string why = "a token request may name at most " + std::to_string(kMaxTokenScopes) +
                      " scopes; this one names " + std::to_string(asked);
    spdlog::info("auth: token request from {} refused: {}", e.request().peer, why);
    e.respond(400, {{"Content-Type", "application/json"}},
              token_error("invalid_scope", "UNSUPPORTED", why));
    return true;
}

void add_action(std::vector<ResourceAccess>& granted, const ResourceAccess& scope,
                const std::string& action) {
    for (auto& g : granted) {
        if (g.type == scope.type && g.name == scope.name) {
            if (std::find(g.actions.begin(), g.actions.end(), action) == g.actions.end())
                g.actions.push_back(action);
            return;
        }
    }
    granted.push_back(ResourceAccess{scope.type, scope.name, {action}});
}

}  // namespace

void Authenticator::grant(const std::shared_ptr<http::Exchange>& ex, const Principal& who,
                          bool local, std::optional<std::pair<std::string, std::string>> creds,
                          std::vector<ResourceAccess> want, bool oauth, bool with_refresh) {
    // Pull scopes of pass-through repositories that the rules do not grant: ask the upstream.
    std::vector<std::string> ask;
    for (const ResourceAccess& a : want) {
        bool pull = std::find(a.actions.begin(), a.actions.end(), "pull") != a.actions.end();
        if (a.type == "repository" && pull && policy_.is_passthrough(a.name) &&
            !(local && policy_.allows(who, a.name, Action::pull)) &&
            std::find(ask.begin(), ask.end(), a.name) == ask.end())
            ask.push_back(a.name);
    }
    if (ask.empty() || !creds || !upstream_access_) {
        if (!local) return refuse_token(*ex, config_.token_service, "wrong user or password");
        return issue(*ex, who, local, want, {}, oauth, with_refresh);
    }
    struct Gather {
        std::size_t left = 0;
        std::vector<ResourceAccess> approved;
        bool busy = false;
    };
    auto g = std::make_shared<Gather>();
    g->left = ask.size();
    for (const std::string& repo : ask) {
        upstream_access_->check(
            ex->request().peer, creds->first, creds->second, repo, "latest", false,
            [this, ex, who, local, want, oauth, with_refresh, g, repo](PassthroughVerdict v) {
                if (v == PassthroughVerdict::allowed)
                    g->approved.push_back(ResourceAccess{"repository", repo, {"pull"}});
                g->busy = g->busy || v == PassthroughVerdict::busy;
                if (--g->left > 0 || ex->closed()) return;
                if (g->busy) return token_busy(*ex, "too many pass-through checks waiting");
                if (!local && g->approved.empty())
                    return refuse_token(*ex, config_.token_service,
                                        "credentials refused here and by the upstream");
                issue(*ex, who, local, want, g->approved, oauth, with_refresh);
            });
    }
}

void Authenticator::issue(http::Exchange& ex, const Principal& who, bool local,
                          const std::vector<ResourceAccess>& want,
                          std::vector<ResourceAccess> upstream, bool oauth, bool with_refresh) {
    // Narrow every requested scope to what the rules allow this principal now (nothing for a
    // principal drayage did not verify), plus what the upstream approved.
    std::vector<ResourceAccess> granted;
    for (const ResourceAccess& a : want) {
        for (const std::string& act : a.actions) {
            bool ok = false;
            if (a.type == "repository" && local) {
                if (act == "pull") ok = policy_.allows(who, a.name, Action::pull);
                if (act == "push") ok = policy_.allows(who, a.name, Action::push);
            } else if (a.type == "registry" && act == "*") {
                ok = true;  // the catalog is filtered per principal when served
            }
            if (ok) add_action(granted, a, act);
        }
    }
    for (const ResourceAccess& u : upstream)
        add_action(granted, u, "pull");
    std::int64_t now = clock::unix_now();
    std::int64_t lifetime = config_.token_expiration.count();
    // An upstream decision is good for passthrough_ttl only; so is a token carrying it.
    if (!upstream.empty())
        lifetime = std::min<std::int64_t>(lifetime, config_.passthrough_ttl.count());
    TokenClaims c;
    c.iss = config_.token_issuer;
    c.sub = who.user;
    c.aud = config_.token_service;
    c.iat = now;
    c.nbf = now;
    c.exp = now + lifetime;
    c.jti = base64url_encode(random_bytes(12));
    c.access = granted;
    c.upstream_only = !local;
    std::string token = sign_token(c, key_);
    json body = {{"access_token", token}, {"expires_in", lifetime}, {"issued_at", rfc3339(now)}};
    if (!oauth) body["token"] = token;
    if (oauth) {
        std::string scope;
        for (const auto& g : granted)
            scope += (scope.empty() ? "" : " ") + scope_string(g);
        body["scope"] = scope;
    }
    // Refresh tokens only for drayage's own users: an upstream approval must be renewed upstream.
    if (with_refresh && local && who.authenticated) {
        TokenClaims r = c;
        r.typ = "refresh";
        r.access.clear();
        r.exp = now + kRefreshLifetime.count();
        r.jti = base64url_encode(random_bytes(12));
        body["refresh_token"] = sign_token(r, key_);
    }
    tokens_counter(oauth ? "oauth" : "get").inc();
    ex.set_user(who.user);
    ex.respond(200, {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}},
               dump(body));
}

void Authenticator::token_get(const std::shared_ptr<http::Exchange>& ex) {
    const http::Request& req = ex->request();
    auto q = query::parse(req.query);
    std::string service = first(q, "service");
    if (!service.empty() && service != config_.token_service)
        return ex->respond(
            400, {{"Content-Type", "application/json"}},
            dump(json{{"error", "invalid_request"}, {"error_description", "unknown service"}}));
    Identity id = identify(req);
    if (id.kind == Identity::Kind::bearer)
        return refuse_token(*ex, config_.token_service,
                            "the token endpoint takes Basic credentials");
    std::vector<ResourceAccess> want;
    for (auto [it, end] = q.equal_range("scope"); it != end; ++it) {
        auto more = parse_scopes(it->second, policy_.docker_hub());
        want.insert(want.end(), more.begin(), more.end());
    }
    auto creds = basic_credentials(req);
    bool local = id.kind != Identity::Kind::bad_credentials;
    Principal who = local ? id.principal : Principal{creds ? creds->first : "", false};
    if (!local && !creds) return refuse_token(*ex, config_.token_service, id.problem);
    return grant(ex, who, local, creds, std::move(want), false,
                 first(q, "offline_token") == "true");
}

void Authenticator::handle_token(const std::shared_ptr<http::Exchange>& ex) {
    const http::Request& req = ex->request();
    if (req.method == "GET") {
        std::size_t asked = 0;
        for (const auto& [k, v] : query::parse(req.query))
            if (k == "scope") asked += count_scopes(v);
        if (too_many_scopes(*ex, asked)) return;
        // The credentials are checked off the loop first when they are new (prepare()).
        return prepare(req, [this, ex](bool ready) {
            if (ex->closed()) return;
            if (!ready) return token_busy(*ex, "too many password checks in progress");
            token_get(ex);
        });
    }
    if (req.method != "POST")
        return ex->respond(405, {{"Content-Type", "application/json"}, {"Allow", "GET, POST"}},
                           dump(json{{"error", "invalid_request"}}));
    // OAuth2: the form body is small; anything bigger is refused by the limit.
    auto body = std::make_shared<std::string>();
    ex->set_body_limit(kMaxTokenRequestBody);
    // The handlers hold the exchange (the server drops handlers once the exchange ends, which
    // breaks the cycle).
    http::BodyHandlers h;
    h.on_data = [body](std::string_view d) { body->append(d); };
    h.on_error = [](const Error&) {};  // the server answers 413/408/400 by itself
    h.on_end = [this, e = ex, body] {
        if (e->closed()) return;
        auto f = query::parse(*body);
        std::string grant_type = first(f, "grant_type");
        std::string service = first(f, "service");
        if (!service.empty() && service != config_.token_service)
            return e->respond(
                400, {{"Content-Type", "application/json"}},
                dump(json{{"error", "invalid_request"}, {"error_description", "unknown service"}}));
        std::size_t asked = 0;
        for (auto [it, end] = f.equal_range("scope"); it != end; ++it)
            asked += count_scopes(it->second);
        if (too_many_scopes(*e, asked)) return;
        auto want = parse_scopes(first(f, "scope"), policy_.docker_hub());
        if (grant_type == "password") {
            std::string user = first(f, "username");
            std::string password = first(f, "password");
            if (user.empty()) return refuse_token(*e, config_.token_service, "no username");
            return prepare_password(
                user, password,
                [this, e, user, password, want = std::move(want)](bool ready) mutable {
                    if (e->closed()) return;
                    if (!ready) return token_busy(*e, "too many password checks in progress");
                    bool local = check_basic(user, password);
                    grant(e, Principal{user, local}, local, std::make_pair(user, password),
                          std::move(want), true, true);
                });
        }
        if (grant_type == "refresh_token") {
            auto c = verify_token(first(f, "refresh_token"), key_, config_.token_issuer,
                                  config_.token_service, clock::unix_now());
            if (!c || c->typ != "refresh" || c->sub.empty() || c->upstream_only ||
                !htpasswd_->has_user(c->sub))
                return refuse_token(*e, config_.token_service, "invalid refresh token");
            return issue(*e, Principal{c->sub, true}, true, want, {}, true, true);
        }
        e->respond(400, {{"Content-Type", "application/json"}},
                   dump(json{{"error", "unsupported_grant_type"}}));
    };
    ex->read_body(std::move(h));
}

}  // namespace drayage::registry
