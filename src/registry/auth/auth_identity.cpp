// The Authenticator (auth.hpp): creating and reloading it, who a request is (Basic
// credentials, bearer tokens, remembered password checks), what it may do, and the 401
// challenges. The token endpoint is auth_token_endpoint.cpp; tokens are auth_jwt.cpp.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>

#include "auth_codec.hpp"
#include "drayage/registry/api.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/util/clock.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry {
namespace {

using namespace detail;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kVerifiedTtl{60};
constexpr std::size_t kVerifiedMax = 10'000;

bool has_action(const std::vector<std::string>& actions, std::string_view a) {
    return std::any_of(actions.begin(), actions.end(),
                       [&](const std::string& x) { return x == a || x == "*"; });
}

}  // namespace

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

}  // namespace drayage::registry
