// Who may pull: client authentication and per-repository access for the registry front.
//
// drayage is its own auth realm when the config has an `auth` section:
//   - clients authenticate with Basic credentials (an htpasswd file of bcrypt entries) or with a
//     Bearer token from drayage's token endpoint (`/auth/token`, the distribution token spec:
//     GET with optional Basic credentials, or the OAuth2 POST with grant_type=password |
//     refresh_token);
//   - tokens are JWTs signed with HS256 (the only party that verifies them is drayage itself, so
//     a shared secret is enough; a fleet shares it through auth.token.key), `iss` and `aud` are
//     drayage's own, `exp` short, and their `access` claims hold only what the rules allow;
//   - rules (config::AuthRule) say who may pull and push which repositories; whatever no rule
//     allows is denied. Names are normalised before they are matched (normalize_repository), so
//     no spelling of a name gets around a rule.
//
// The pure pieces (normalisation, globs, AccessPolicy, JWT signing/verification, scope parsing,
// htpasswd lookup) have no I/O besides reading files at load; Authenticator ties them to
// requests. Everything here runs on the event loop's thread (bcrypt runs on the Authenticator's
// verifier threads, see start_verifier; admit_hit runs on the hit workers); nothing throws.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/config/config.hpp"
#include "drayage/http/server.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry {

enum class Action { pull, push };

// The canonical spelling of a repository name for matching rules and for the repo->digest
// relation. Rejects (NAME_INVALID) what is not a plain distribution name: percent escapes,
// empty, "." or ".." components, "//", a leading or trailing '/', anything outside the grammar.
// Upper case is folded to lower case (the grammar has no upper case; a scope spelled
// "Private/X" means "private/x"). With `docker_hub`, a one-component name gets "library/" in
// front, as Docker Hub itself resolves it ("busybox" and "library/busybox" are one repository).
Result<std::string> normalize_repository(std::string_view name, bool docker_hub);

// Whether `url` (upstream.url) is Docker Hub.
bool is_docker_hub(std::string_view url);

// Glob over repository names: `*` matches any run of characters within one path component,
// `**` any run including '/', everything else literally. "team/*" matches "team/app" but not
// "team/app/x"; "team/**" matches both.
bool glob_match(std::string_view pattern, std::string_view name);

// Who is asking. `user` empty and `authenticated` false: anonymous.
struct Principal {
    std::string user;
    bool authenticated = false;
};

// The rules of config::AuthConfig, with patterns and principals normalised once.
class AccessPolicy {
public:
    AccessPolicy(const config::AuthConfig& config, bool docker_hub);

    // `repo` must already be normalised. True when some rule covering `repo` names the principal
    // for `action`: the user, one of the user's groups, "authenticated" (any valid login),
    // "anonymous" (only without credentials) or "*" (everyone).
    bool allows(const Principal& who, std::string_view repo, Action action) const;
    // Whether `repo` falls under auth.passthrough (the upstream decides, with the client's
    // credentials).
    bool is_passthrough(std::string_view repo) const;
    bool docker_hub() const { return docker_hub_; }

private:
    struct Rule {
        std::vector<std::string> repositories;
        std::vector<std::string> pull;
        std::vector<std::string> push;
    };
    bool names(const std::vector<std::string>& principals, const Principal& who) const;

    std::vector<Rule> rules_;
    std::map<std::string, std::vector<std::string>> groups_;
    std::vector<std::string> passthrough_;
    bool docker_hub_ = false;
};

// An htpasswd file with bcrypt entries ($2a$, $2b$, $2y$); other hash kinds are refused at load
// (they are weak or unsalted). Lines: "user:hash"; blank lines and '#' comments are skipped.
class Htpasswd {
public:
    // Errors: AUTH_CONFIG (cannot read the file, a line without ':', a non-bcrypt hash), with the
    // file and line in the message.
    static Result<Htpasswd> load(const std::string& path);
    static Result<Htpasswd> parse(std::string_view text, const std::string& name);

    // bcrypt of `password` with the user's salt, compared in constant time. An unknown user is
    // checked against a dummy hash of the same cost, so timing does not tell users apart.
    // bcrypt is slow by design (tens of ms at cost 10): callers cache positive answers.
    bool verify(std::string_view user, std::string_view password) const;
    bool has_user(std::string_view user) const { return users_.contains(std::string(user)); }
    std::size_t size() const { return users_.size(); }

private:
    std::map<std::string, std::string> users_;
    std::string dummy_;  // a bcrypt hash with the cost of the first entry
};

// ---- tokens ------------------------------------------------------------------------------------

// One entry of a token's `access` claim / of a requested scope: "repository:<name>:pull,push".
struct ResourceAccess {
    std::string type;  // "repository", "registry"
    std::string name;  // repository name (normalised when type is repository), or "catalog"
    std::vector<std::string> actions;
};

// Parses one or more scopes ("repository:a/b:pull,push registry:catalog:*"; several may be
// space-separated). Malformed entries and repository names that do not normalise are skipped:
// a scope asks, it never grants.
std::vector<ResourceAccess> parse_scopes(std::string_view scopes, bool docker_hub);
// The number of space-separated entries in `scopes`, malformed ones included: what a token
// request asks for, counted against kMaxTokenScopes before anything is checked.
std::size_t count_scopes(std::string_view scopes);
// At most this many scopes per token request (all `scope` parameters together); more is 400,
// answered before any password or upstream check. docker, containerd and skopeo ask for one to
// three; each pass-through scope costs upstream round trips.
constexpr std::size_t kMaxTokenScopes = 32;
std::string scope_string(const ResourceAccess& access);

struct TokenClaims {
    std::string iss;
    std::string sub;  // user name; empty for anonymous
    std::string aud;
    std::int64_t iat = 0;
    std::int64_t nbf = 0;
    std::int64_t exp = 0;
    std::string jti;
    std::string typ = "access";  // "access" or "refresh" (drayage's own claim, "drayage_typ")
    // The subject was vouched for by the upstream only (pass-through), not by drayage's
    // htpasswd: it counts as no user for the rules ("drayage_upstream").
    bool upstream_only = false;
    std::vector<ResourceAccess> access;
};

// A compact JWS (header.payload.signature, base64url) signed with HMAC-SHA256 under `key`.
std::string sign_token(const TokenClaims& claims, std::string_view key);

// Checks a token: three base64url parts, header alg HS256 (anything else, "none" included, is
// refused), signature (constant-time), `iss` == issuer, `aud` == audience (string or array),
// `exp` > now, `nbf` <= now (with `leeway` seconds either way for clock skew). Errors:
// TOKEN_INVALID with what failed in the message.
Result<TokenClaims> verify_token(std::string_view token, std::string_view key,
                                 std::string_view issuer, std::string_view audience,
                                 std::int64_t now, std::int64_t leeway = 5);

// base64url without padding, and back. Decoding takes only the one encoding base64url_encode
// makes of some bytes (so a token has exactly one spelling): nullopt on padding, a character
// outside the base64url alphabet, a length that no byte string encodes to, or unused low bits of
// the last character that are not zero. Exposed for tests.
std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

class UpstreamAccessCheck;

// ---- the runtime object ---------------------------------------------------------------------

// What a request's credentials established.
// The user and password of a "Basic" Authorization header; nullopt when absent or malformed.
std::optional<std::pair<std::string, std::string>> basic_credentials(const http::Request& request);

struct Identity {
    enum class Kind { anonymous, basic, bearer, bad_credentials };
    Kind kind = Kind::anonymous;
    Principal principal;
    std::vector<ResourceAccess> token_access;  // bearer: the token's access claim
    std::string problem;                       // bad_credentials: why (for the log)
};

class Authenticator {
public:
    // Reads the htpasswd file and the signing key. Errors: AUTH_CONFIG naming the key and file.
    static Result<std::unique_ptr<Authenticator>> create(const config::AuthConfig& config,
                                                         bool docker_hub, bool tls);
    ~Authenticator();

    const AccessPolicy& policy() const { return policy_; }

    // SIGHUP: takes the rules, groups, pass-through patterns and htpasswd path of `config` and
    // re-reads the htpasswd file; all or nothing (on error the old state stays and the error
    // is returned). Token settings (key, service, issuer, realm, lifetime) need a restart.
    // Tokens already issued are checked against the new rules from now on.
    Status reload(const config::AuthConfig& config);

    // From now on, Basic credentials are checked with bcrypt on `threads` threads of their own
    // and the answers come back on `base`'s loop (prepare()). bcrypt is slow by design (46 ms
    // per check at cost 10 here): on the loop, every client with a new password, or a wrong
    // one, would stall every transfer for that long. Without it (tests, the CLI) identify()
    // checks on the caller's thread. Call once, before serving.
    Status start_verifier(event_base* base, int threads);

    // Runs `then(true)` on the loop once the Basic credentials of `request`, if any, have an
    // answer that identify() finds without bcrypt: at once when there are none, or they are
    // Bearer, or their answer is known (kept 60 s, right or wrong, until a SIGHUP); else after
    // a verifier thread has checked them. Concurrent checks of the same credentials share one
    // bcrypt. `then(false)`, at once, when kMaxPendingChecks other credentials are already
    // waiting: the caller answers 503 (a flood of made-up passwords must not queue minutes of
    // bcrypt ahead of real clients). `then` is dropped, never run, if the Authenticator goes
    // first.
    static constexpr std::size_t kMaxPendingChecks = 128;
    void prepare(const http::Request& request, std::function<void(bool ready)> then);
    // The same for a user and password not in a header (the token endpoint's password grant).
    void prepare_password(std::string_view user, std::string_view password,
                          std::function<void(bool ready)> then);

    // Basic or Bearer credentials of a request. Never fails: bad ones are Kind::bad_credentials.
    Identity identify(const http::Request& request);

    // For hit workers, from any thread: may this request pull from `repo` (as routed, not yet
    // normalised)? Decided only for what needs no loop state: no credentials, or a Bearer token
    // (checked against the rules as they are now). Returns the normalised repository and the
    // user for the access log. nullopt: let the main loop answer (Basic credentials, bad ones,
    // a refusal that needs a challenge, a pass-through check).
    struct HitAdmission {
        std::string repo;
        std::string user;
    };
    std::optional<HitAdmission> admit_hit(const http::Request& request,
                                          std::string_view repo) const;

    // Whether `who` may do `action` on `repo` (normalised): the rules must allow it and, for a
    // bearer token, the token's access claim must include it too (a token never widens the
    // rules, and the rules in force now win over those when the token was made). The one
    // exception: a pull grant for a pass-through repository in a token, which the upstream
    // approved when the token was made (and the token lives no longer than that approval).
    bool may(const Identity& who, std::string_view repo, Action action) const;

    // Answers 401 UNAUTHORIZED with the Bearer challenge for `scope` (may be empty).
    void challenge(http::Exchange& ex, std::string_view scope, std::string_view message) const;
    // Answers 401 UNAUTHORIZED asking for Basic credentials: the answer to Basic credentials the
    // upstream refused for a pass-through repository (a Bearer challenge would only send the
    // client to the token endpoint with the same credentials).
    void challenge_basic(http::Exchange& ex, std::string_view message) const;

    // The token endpoint: GET and POST /auth/token. Requested pull scopes of pass-through
    // repositories that the rules do not grant are checked with `set_upstream_access`'s checker
    // and the client's credentials (which need not be in the htpasswd file); a token carrying
    // such a grant lives at most auth.passthrough_ttl. More than kMaxTokenScopes scopes: 400,
    // before any password or upstream check. Pass-through checks that could not get a turn
    // (PassthroughVerdict::busy): 503 with Retry-After.
    void handle_token(const std::shared_ptr<http::Exchange>& ex);
    void set_upstream_access(UpstreamAccessCheck* check) { upstream_access_ = check; }

private:
    Authenticator(const config::AuthConfig& config, bool docker_hub, bool tls);
    bool check_basic(std::string_view user, std::string_view password);
    void token_get(const std::shared_ptr<http::Exchange>& ex);  // GET /auth/token
    Identity bearer_identity(std::string_view token) const;
    std::string realm_for(const http::Request& request) const;
    // `local`: the principal was verified by drayage (rules apply to it); `upstream`: grants
    // the upstream approved for these credentials.
    void issue(http::Exchange& ex, const Principal& who, bool local,
               const std::vector<ResourceAccess>& want, std::vector<ResourceAccess> upstream,
               bool oauth, bool with_refresh);
    // Runs the pass-through checks for `want` (then `issue`), or answers 401 when the
    // credentials are neither drayage's nor approved upstream for anything.
    void grant(const std::shared_ptr<http::Exchange>& ex, const Principal& who, bool local,
               std::optional<std::pair<std::string, std::string>> creds,
               std::vector<ResourceAccess> want, bool oauth, bool with_refresh);

    // reload() (on the loop) against admit_hit() on the hit workers. The loop's own reads need
    // no lock: reload() runs on the loop too.
    mutable std::shared_mutex reload_mu_;
    config::AuthConfig config_;
    AccessPolicy policy_;
    // Shared with the verifier threads, which check against the file as it was when asked;
    // reload() swaps it and bumps the generation, and older answers are checked again.
    std::shared_ptr<const Htpasswd> htpasswd_ = std::make_shared<const Htpasswd>();
    std::uint64_t generation_ = 0;
    std::string key_;
    std::string cache_key_;  // HMAC key for the verified-credentials cache
    bool tls_ = false;
    UpstreamAccessCheck* upstream_access_ = nullptr;
    // HMAC(user NUL password) -> when the positive answer expires (60 s). bcrypt per request
    // would cost tens of milliseconds of loop time (46 ms at cost 10 here); a changed or removed
    // password is seen within the TTL, at once after SIGHUP.
    std::map<std::string, std::chrono::steady_clock::time_point> verified_;
    // The same for wrong credentials: a client retrying a wrong password (or many clients with
    // one) costs one bcrypt a minute, not one per request. A right password is another key.
    std::map<std::string, std::chrono::steady_clock::time_point> refused_;
    // The cached answer for `key` (an HMAC of user and password), if one is fresh.
    std::optional<bool> known_answer(const std::string& key);
    void remember(const std::string& key, bool ok);
    std::string credentials_key(std::string_view user, std::string_view password) const;
    struct Verifier;
    struct VerifierStop {  // joins the threads; defined beside Verifier
        void operator()(Verifier* v) const;
    };
    std::unique_ptr<Verifier, VerifierStop> verifier_;
};

// Who runs next among the pass-through checks: at most `running` at a time in all and
// `running_per_client` for one client address, taking turns between addresses (one with many
// checks waiting cannot starve one with a single check). At most `waiting_per_client` checks of
// one address and `waiting` in all wait for their turn; submit() refuses more. Pure bookkeeping:
// no I/O, no clock. Jobs run inside submit() or finish() and may call both (re-entrantly).
class PassthroughQueue {
public:
    struct Limits {
        std::size_t running = 0;
        std::size_t running_per_client = 0;
        std::size_t waiting = 0;
        std::size_t waiting_per_client = 0;
    };
    using Job = std::function<void()>;

    explicit PassthroughQueue(Limits limits) : limits_(limits) {}

    // Queues `job` for `client` and starts whatever may start, `job` perhaps among them before
    // this returns. false: too many checks wait already (of `client` or in all); `job` dropped.
    bool submit(const std::string& client, Job job);
    // A started job of `client` is done: starts the next.
    void finish(const std::string& client);

    std::size_t running() const { return running_; }
    std::size_t waiting() const { return waiting_; }

private:
    void pump();
    struct Client {
        std::size_t running = 0;
        std::deque<Job> waiting;
    };
    Limits limits_;
    std::map<std::string, Client> clients_;
    std::deque<std::string> turns_;  // addresses with checks waiting, each once, in turn order
    std::size_t running_ = 0;
    std::size_t waiting_ = 0;
    bool pumping_ = false;
};

enum class PassthroughVerdict {
    allowed,
    denied,
    busy,  // too many checks wait already: not asked, not cached; the client should retry
};

// auth.passthrough: the upstream decides whether a client may pull a repository, with the
// client's own Basic credentials. A check HEADs what the request names (a manifest or a blob) in
// that repository upstream as the client (the upstream token flow for `repository:<name>:pull`
// with those credentials): 200 or 404 means the credentials may read the repository (a 404 comes
// after the registry's access check), 401/403 means they may not. Definite answers, both ways,
// are cached under an HMAC of (user, password, repository) for `ttl` (<= 60 s); a 401 from the
// upstream's token endpoint refuses the credentials for every repository for `ttl`, so a wrong
// password costs the upstream nothing more, however many repositories it names. Any other
// outcome (unreachable, timeout, 5xx, a broken token endpoint) denies and is not cached: the check
// fails closed. Concurrent checks of one key share one upstream round trip.
//
// Every check goes through one UpstreamRegistry (one learned challenge, curl's connection pool)
// and the PassthroughQueue with the limits below: a token request naming many repositories, or
// many clients at once, keep at most kMaxRunning checks (kMaxRunningPerClient per address) in
// flight upstream.
class UpstreamAccessCheck {
public:
    static constexpr std::size_t kMaxRunning = 16;
    static constexpr std::size_t kMaxRunningPerClient = 4;
    static constexpr std::size_t kMaxWaiting = 2048;
    static constexpr std::size_t kMaxWaitingPerClient = 4 * kMaxTokenScopes;

    UpstreamAccessCheck(net::CurlLoop& loop, config::UpstreamConfig upstream,
                        std::chrono::seconds ttl);
    ~UpstreamAccessCheck();  // pending callbacks are dropped, never called
    UpstreamAccessCheck(const UpstreamAccessCheck&) = delete;
    UpstreamAccessCheck& operator=(const UpstreamAccessCheck&) = delete;

    // `client` is the request's peer (http::Request::peer, "ip:port"; the port is ignored).
    // `reference` is a manifest tag/digest, or with `blob` a blob digest. `done` runs on the
    // loop, possibly before check() returns (cached answers).
    void check(std::string_view client, std::string_view user, std::string_view password,
               const std::string& repo, const std::string& reference, bool blob,
               std::function<void(PassthroughVerdict)> done);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace drayage::registry
