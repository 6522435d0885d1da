// JWT (HS256) tokens, scopes, and the Authenticator: credentials of a request, the token
// endpoint (distribution token spec, GET and OAuth2 POST) and 401 challenges (see auth.hpp).
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "drayage/registry/api.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/query.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kStd =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr std::string_view kUrl =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::chrono::seconds kVerifiedTtl{60};
// Refresh tokens (OAuth2) let containerd and docker renew access tokens without resending the
// password; the user must still be in htpasswd at each renewal.
constexpr std::chrono::seconds kRefreshLifetime{24 * 3600};
constexpr std::size_t kVerifiedMax = 10'000;
constexpr std::uint64_t kMaxTokenRequestBody = 64 * 1024;

std::string encode64(std::string_view bytes, std::string_view alphabet, bool pad) {
    std::string out;
    std::size_t i = 0;
    auto at = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
    for (; i + 2 < bytes.size(); i += 3) {
        unsigned v = (at(i) << 16) | (at(i + 1) << 8) | at(i + 2);
        for (int s = 18; s >= 0; s -= 6)
            out += alphabet[(v >> s) & 63];
    }
    std::size_t left = bytes.size() - i;
    if (left > 0) {
        unsigned v = at(i) << 16;
        if (left == 2) v |= at(i + 1) << 8;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        if (left == 2) out += alphabet[(v >> 6) & 63];
        if (pad) out.append(left == 1 ? "==" : "=");
    }
    return out;
}

// `canonical`: only the encoding encode64(.., false) makes (no padding, zero unused bits), so
// that a token has one spelling; otherwise trailing padding is skipped (Basic credentials).
std::optional<std::string> decode64(std::string_view text, std::string_view alphabet,
                                    bool canonical) {
    while (!canonical && !text.empty() && text.back() == '=')
        text.remove_suffix(1);
    std::string out;
    unsigned v = 0;
    int bits = 0;
    for (char c : text) {
        auto pos = alphabet.find(c);
        if (pos == std::string_view::npos) return std::nullopt;
        v = (v << 6) | static_cast<unsigned>(pos);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((v >> bits) & 0xff);
        }
    }
    if (bits >= 6) return std::nullopt;  // one stray character cannot be a whole byte
    // The last character's low `bits` bits belong to no byte: another value there would be a
    // second spelling of the same bytes.
    if (canonical && (v & ((1U << bits) - 1)) != 0) return std::nullopt;
    return out;
}

std::string first(const std::multimap<std::string, std::string>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? std::string() : it->second;
}

std::string dump(const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string rfc3339(std::int64_t t) {
    return text::rfc3339_utc(t);
}

std::string random_bytes(std::size_t n) {
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
        // No entropy is no security: a fatal condition for an auth realm, not a fallback.
        spdlog::critical("RAND_bytes failed: cannot make an auth secret");
        std::abort();
    }
    return out;
}

Error invalid(std::string why) {
    return make_error("TOKEN_INVALID", std::move(why), 401);
}

bool has_action(const std::vector<std::string>& actions, std::string_view a) {
    return std::any_of(actions.begin(), actions.end(),
                       [&](const std::string& x) { return x == a || x == "*"; });
}

metrics::Counter& tokens_counter(std::string_view grant) {
    return metrics::global().counter("drayage_auth_tokens_total",
                                     "Tokens issued by drayage's token endpoint, by grant.",
                                     {{"grant", std::string(grant)}});
}

}  // namespace

std::string base64url_encode(std::string_view bytes) {
    return encode64(bytes, kUrl, false);
}
std::optional<std::string> base64url_decode(std::string_view text) {
    return decode64(text, kUrl, true);
}

// ---- scopes -------------------------------------------------------------------------------------

std::vector<ResourceAccess> parse_scopes(std::string_view scopes, bool docker_hub) {
    std::vector<ResourceAccess> out;
    while (!scopes.empty()) {
        std::string_view one = scopes.substr(0, scopes.find(' '));
        scopes.remove_prefix(std::min(scopes.size(), one.size() + 1));
        auto c1 = one.find(':');
        auto c2 = one.rfind(':');
        if (c1 == std::string_view::npos || c2 == c1) continue;
        ResourceAccess a;
        a.type = std::string(one.substr(0, c1));
        a.name = std::string(one.substr(c1 + 1, c2 - c1 - 1));
        std::string_view actions = one.substr(c2 + 1);
        while (!actions.empty()) {
            std::string_view act = actions.substr(0, actions.find(','));
            actions.remove_prefix(std::min(actions.size(), act.size() + 1));
            if (!act.empty()) a.actions.emplace_back(act);
        }
        if (a.actions.empty()) continue;
        if (a.type == "repository") {
            auto n = normalize_repository(a.name, docker_hub);
            if (!n) continue;
            a.name = *n;
        } else if (a.type != "registry" || a.name != "catalog") {
            continue;
        }
        out.push_back(std::move(a));
    }
    return out;
}

std::size_t count_scopes(std::string_view scopes) {
    std::size_t n = 0;
    while (!scopes.empty()) {
        std::string_view one = scopes.substr(0, scopes.find(' '));
        scopes.remove_prefix(std::min(scopes.size(), one.size() + 1));
        if (!one.empty()) ++n;
    }
    return n;
}

std::string scope_string(const ResourceAccess& access) {
    std::string s = access.type + ":" + access.name + ":";
    for (std::size_t i = 0; i < access.actions.size(); ++i)
        s += (i ? "," : "") + access.actions[i];
    return s;
}

// ---- JWT ----------------------------------------------------------------------------------------

std::string sign_token(const TokenClaims& c, std::string_view key) {
    json header = {{"alg", "HS256"}, {"typ", "JWT"}};
    json access = json::array();
    for (const auto& a : c.access)
        access.push_back({{"type", a.type}, {"name", a.name}, {"actions", a.actions}});
    json payload = {{"iss", c.iss}, {"sub", c.sub},     {"aud", c.aud},
                    {"iat", c.iat}, {"nbf", c.nbf},     {"exp", c.exp},
                    {"jti", c.jti}, {"access", access}, {"drayage_typ", c.typ}};
    std::string signing_input =
        base64url_encode(dump(header)) + "." + base64url_encode(dump(payload));
    return signing_input + "." + base64url_encode(digest::hmac_sha256(key, signing_input));
}

Result<TokenClaims> verify_token(std::string_view token, std::string_view key,
                                 std::string_view issuer, std::string_view audience,
                                 std::int64_t now, std::int64_t leeway) {
    auto d1 = token.find('.');
    auto d2 = token.rfind('.');
    if (d1 == std::string_view::npos || d1 == d2) return invalid("not a compact JWS");
    std::string_view signing_input = token.substr(0, d2);
    auto header_bytes = base64url_decode(token.substr(0, d1));
    auto payload_bytes = base64url_decode(token.substr(d1 + 1, d2 - d1 - 1));
    auto signature = base64url_decode(token.substr(d2 + 1));
    if (!header_bytes || !payload_bytes || !signature) return invalid("bad base64url");
    json header = json::parse(*header_bytes, nullptr, false);
    if (!header.is_object() || !header.contains("alg") || header["alg"] != "HS256")
        return invalid("alg is not HS256");
    std::string expect = digest::hmac_sha256(key, signing_input);
    if (signature->size() != expect.size() ||
        CRYPTO_memcmp(signature->data(), expect.data(), expect.size()) != 0)
        return invalid("bad signature");
    json p = json::parse(*payload_bytes, nullptr, false);
    if (!p.is_object()) return invalid("payload is not a JSON object");
    auto str = [&](const char* k) {
        return p.contains(k) && p[k].is_string() ? p[k].get<std::string>() : std::string();
    };
    auto num = [&](const char* k) -> std::optional<std::int64_t> {
        if (p.contains(k) && p[k].is_number_integer()) return p[k].get<std::int64_t>();
        return std::nullopt;
    };
    TokenClaims c;
    c.iss = str("iss");
    c.sub = str("sub");
    c.jti = str("jti");
    c.typ = str("drayage_typ");
    c.upstream_only = p.contains("drayage_upstream") && p["drayage_upstream"] == true;
    if (c.iss != issuer) return invalid("wrong issuer");
    bool aud_ok = false;
    if (p.contains("aud") && p["aud"].is_string()) aud_ok = p["aud"] == audience;
    if (p.contains("aud") && p["aud"].is_array())
        for (const auto& a : p["aud"])
            aud_ok = aud_ok || (a.is_string() && a == audience);
    if (!aud_ok) return invalid("wrong audience");
    c.aud = std::string(audience);
    auto exp = num("exp");
    if (!exp) return invalid("no exp");
    if (*exp + leeway <= now) return invalid("expired");
    c.exp = *exp;
    c.nbf = num("nbf").value_or(0);
    if (c.nbf > now + leeway) return invalid("not yet valid");
    c.iat = num("iat").value_or(0);
    if (p.contains("access") && p["access"].is_array()) {
        for (const auto& a : p["access"]) {
            if (!a.is_object()) continue;
            ResourceAccess r;
            if (a.contains("type") && a["type"].is_string()) r.type = a["type"].get<std::string>();
            if (a.contains("name") && a["name"].is_string()) r.name = a["name"].get<std::string>();
            if (a.contains("actions") && a["actions"].is_array())
                for (const auto& x : a["actions"])
                    if (x.is_string()) r.actions.push_back(x.get<std::string>());
            c.access.push_back(std::move(r));
        }
    }
    return c;
}

// ---- Authenticator ------------------------------------------------------------------------------

Authenticator::~Authenticator() = default;

Authenticator::Authenticator(const config::AuthConfig& config, bool docker_hub, bool tls)
    : config_(config), policy_(config, docker_hub), tls_(tls) {}

Result<std::unique_ptr<Authenticator>> Authenticator::create(const config::AuthConfig& config,
                                                             bool docker_hub, bool tls) {
    std::unique_ptr<Authenticator> a(new Authenticator(config, docker_hub, tls));
    if (!config.htpasswd_path.empty()) {
        auto h = Htpasswd::load(config.htpasswd_path);
        if (!h) return h.error();
        a->htpasswd_ = std::make_shared<const Htpasswd>(std::move(*h));
    }
    if (config.token_key.empty()) {
        a->key_ = random_bytes(32);
    } else {
        std::ifstream in(config.token_key, std::ios::binary);
        std::ostringstream text;
        if (in) text << in.rdbuf();
        std::string k = text.str();
        while (!k.empty() && (k.back() == '\n' || k.back() == '\r'))
            k.pop_back();
        if (!in || k.size() < 32)
            return make_error("AUTH_CONFIG",
                              "auth.token.key: " + config.token_key +
                                  (in ? " holds fewer than 32 bytes" : " cannot be read"));
        a->key_ = std::move(k);
    }
    a->cache_key_ = random_bytes(32);
    return a;
}

Status Authenticator::reload(const config::AuthConfig& config) {
    Htpasswd h;
    if (!config.htpasswd_path.empty()) {
        auto loaded = Htpasswd::load(config.htpasswd_path);
        if (!loaded) return loaded.error();
        h = std::move(*loaded);
    }
    AccessPolicy policy(config, policy_.docker_hub());
    std::unique_lock lock(reload_mu_);
    htpasswd_ = std::make_shared<const Htpasswd>(std::move(h));
    ++generation_;
    policy_ = std::move(policy);
    config_.htpasswd_path = config.htpasswd_path;
    config_.groups = config.groups;
    config_.rules = config.rules;
    config_.passthrough = config.passthrough;
    verified_.clear();
    refused_.clear();
    return {};
}

std::string Authenticator::credentials_key(std::string_view user, std::string_view password) const {
    return digest::hmac_sha256(cache_key_, std::string(user) + '\0' + std::string(password));
}

std::optional<bool> Authenticator::known_answer(const std::string& key) {
    auto now = Clock::now();
    for (auto* answers : {&verified_, &refused_}) {
        if (auto it = answers->find(key); it != answers->end()) {
            if (it->second > now) return answers == &verified_;
            answers->erase(it);
        }
    }
    return std::nullopt;
}

void Authenticator::remember(const std::string& key, bool ok) {
    auto& answers = ok ? verified_ : refused_;
    if (answers.size() >= kVerifiedMax) answers.clear();
    answers[key] = Clock::now() + kVerifiedTtl;
}

bool Authenticator::check_basic(std::string_view user, std::string_view password) {
    std::string key = credentials_key(user, password);
    if (auto known = known_answer(key)) return *known;
    // On this thread: no verifier was started, or the answer prepare() fetched expired since.
    bool ok = htpasswd_->verify(user, password);
    remember(key, ok);
    return ok;
}

namespace {

// The credentials after "Authorization: <scheme> ", when the request uses that scheme.
std::optional<std::string_view> credentials_of(const http::Request& request,
                                               std::string_view scheme) {
    std::string_view h = request.header("Authorization");
    auto space = h.find(' ');
    if (space == std::string_view::npos || !http::iequals(h.substr(0, space), scheme))
        return std::nullopt;
    std::string_view value = h.substr(space + 1);
    while (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
    return value;
}

}  // namespace

std::optional<std::pair<std::string, std::string>> basic_credentials(const http::Request& request) {
    auto value = credentials_of(request, "Basic");
    if (!value) return std::nullopt;
    auto decoded = decode64(*value, kStd, false);
    if (!decoded) return std::nullopt;
    auto colon = decoded->find(':');
    if (colon == std::string::npos) return std::nullopt;
    return std::make_pair(decoded->substr(0, colon), decoded->substr(colon + 1));
}

Identity Authenticator::identify(const http::Request& request) {
    Identity id;
    std::string_view h = request.header("Authorization");
    if (h.empty()) return id;
    auto space = h.find(' ');
    std::string_view scheme = h.substr(0, space);
    std::string_view value = space == std::string_view::npos ? "" : h.substr(space + 1);
    while (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
    if (http::iequals(scheme, "Basic")) {
        auto decoded = decode64(value, kStd, false);
        auto colon = decoded ? decoded->find(':') : std::string::npos;
        if (!decoded || colon == std::string::npos) {
            id.kind = Identity::Kind::bad_credentials;
            id.problem = "malformed Basic credentials";
            return id;
        }
        std::string user = decoded->substr(0, colon);
        if (!check_basic(user, std::string_view(*decoded).substr(colon + 1))) {
            id.kind = Identity::Kind::bad_credentials;
            id.problem = "wrong user or password for \"" + user + "\"";
            return id;
        }
        id.kind = Identity::Kind::basic;
        id.principal = Principal{user, true};
        return id;
    }
    if (http::iequals(scheme, "Bearer")) return bearer_identity(value);
    id.kind = Identity::Kind::bad_credentials;
    id.problem = "unsupported Authorization scheme";
    return id;
}

Identity Authenticator::bearer_identity(std::string_view token) const {
    Identity id;
    // Token settings never change after start (reload() leaves them).
    auto c =
        verify_token(token, key_, config_.token_issuer, config_.token_service, clock::unix_now());
    if (!c || c->typ != "access") {
        id.kind = Identity::Kind::bad_credentials;
        id.problem = c ? "a refresh token used as an access token" : c.error().message;
        return id;
    }
    id.kind = Identity::Kind::bearer;
    // A subject only the upstream vouched for is nobody to the rules.
    id.principal = c->upstream_only ? Principal{} : Principal{c->sub, !c->sub.empty()};
    id.token_access = std::move(c->access);
    return id;
}

std::optional<Authenticator::HitAdmission> Authenticator::admit_hit(const http::Request& request,
                                                                    std::string_view repo) const {
    Identity who;  // anonymous without a header
    if (!request.header("Authorization").empty()) {
        auto token = credentials_of(request, "Bearer");
        if (!token) return std::nullopt;
        who = bearer_identity(*token);
        if (who.kind != Identity::Kind::bearer) return std::nullopt;
    }
    std::shared_lock lock(reload_mu_);
    auto name = normalize_repository(repo, policy_.docker_hub());
    if (!name || !may(who, *name, Action::pull)) return std::nullopt;
    return HitAdmission{std::move(*name), who.principal.user};
}

bool Authenticator::may(const Identity& who, std::string_view repo, Action action) const {
    if (who.kind == Identity::Kind::bad_credentials) return false;
    bool rules = policy_.allows(who.principal, repo, action);
    if (who.kind != Identity::Kind::bearer) return rules;
    // A pass-through grant in a token was approved upstream when the token was made (and the
    // token lives no longer than that approval).
    bool passthrough = action == Action::pull && policy_.is_passthrough(repo);
    if (!rules && !passthrough) return false;
    std::string_view want = action == Action::pull ? "pull" : "push";
    return std::any_of(
        who.token_access.begin(), who.token_access.end(), [&](const ResourceAccess& a) {
            return a.type == "repository" && a.name == repo && has_action(a.actions, want);
        });
}

std::string Authenticator::realm_for(const http::Request& request) const {
    if (!config_.token_realm.empty()) return config_.token_realm;
    std::string_view host = request.header("Host");
    bool ok = !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
               c == '[' || c == ']';
    });
    // A Host with anything else would be written into a header: do not echo it.
    return std::string(tls_ ? "https://" : "http://") + (ok ? std::string(host) : "localhost") +
           "/auth/token";
}

namespace {

// The 401 of both challenges (`challenge`: the WWW-Authenticate header), counted.
void send_unauthorized(http::Exchange& ex, std::string challenge, std::string_view message) {
    metrics::global()
        .counter("drayage_auth_denied_total", "Requests answered 401 by the auth layer.")
        .inc();
    api::send_error(ex, 401, "UNAUTHORIZED", message, {{"WWW-Authenticate", std::move(challenge)}});
}

}  // namespace

void Authenticator::challenge(http::Exchange& ex, std::string_view scope,
                              std::string_view message) const {
    std::string value = "Bearer realm=\"" + realm_for(ex.request()) + "\",service=\"" +
                        config_.token_service + "\"";
    if (!scope.empty()) value += ",scope=\"" + std::string(scope) + "\"";
    send_unauthorized(ex, std::move(value), message);
}

void Authenticator::challenge_basic(http::Exchange& ex, std::string_view message) const {
    send_unauthorized(ex, "Basic realm=\"" + config_.token_service + "\"", message);
}

namespace {

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
