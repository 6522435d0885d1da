// The pure parts of authenticating to an upstream registry: WWW-Authenticate parsing, token
// endpoint responses, and the per-scope token cache with one fetch in flight per scope.
//
// No I/O and no clock in here: callers pass the time, so every rule is unit-testable. The
// network side lives in UpstreamRegistry (upstream.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drayage/util/result.hpp"

namespace drayage::registry {

// One challenge of a WWW-Authenticate field (RFC 7235 section 4.1).
struct AuthChallenge {
    std::string scheme;  // lower-cased: "bearer", "basic", ...
    // auth-params in order, names lower-cased, values unquoted (quoted-pairs resolved).
    std::vector<std::pair<std::string, std::string>> params;
    std::string token68;  // the token68 form ("Negotiate abc=="), else empty

    // First value of `name` (case-insensitive); empty when absent.
    std::string param(std::string_view name) const;
};

// Parses one WWW-Authenticate field value into its challenges, in order. Handles quoted strings
// (with commas and escaped quotes inside), several challenges in one value, optional whitespace
// around '=' and ',', empty list elements, and token68. A malformed piece ends the parse: what was
// parsed before it is returned (a registry's challenge is advice, not something to reject).
// Several WWW-Authenticate fields: parse each and concatenate.
std::vector<AuthChallenge> parse_www_authenticate(std::string_view value);

// Whether a Bearer challenge's realm may be asked for tokens: an http:// or https:// URL (scheme
// in any case) with a host, and nothing but printable ASCII without spaces (no CR, LF, NUL, other
// control characters or bytes over 0x7e). The realm comes from the upstream, which is not trusted
// to name a safe target: "gopher://127.0.0.1:6379/_<CR><LF>..." would otherwise have drayage
// write raw bytes to a local service, and a realm with CR/LF could inject lines into a request.
// Empty: usable; else why not (for the operator's log).
std::string unusable_token_realm(std::string_view realm);

// RFC 3339 date-time ("2024-01-02T03:04:05Z", fractional seconds and numeric offsets allowed);
// nullopt when malformed.
std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text);

// A bearer token from a token endpoint, and how long it may be used from `now`.
struct TokenGrant {
    std::string token;
    std::chrono::seconds lifetime{0};  // 0: use once, do not cache
};

// The token spec (distribution docs/spec/auth/token.md) default when `expires_in` is absent.
constexpr std::chrono::seconds kDefaultTokenLifetime{60};

// Parses a token endpoint's JSON body: `token` or (OAuth2) `access_token`, `expires_in` (seconds;
// absent or <= 0 means 60), `issued_at` (RFC 3339; when present, the lifetime counts from it,
// clamped to [0, expires_in] so a registry clock ahead or behind ours cannot stretch it).
// Errors (code "TOKEN_INVALID"): not JSON, no token. That is the token endpoint's fault (a login
// page, a proxy's error page), not a refusal of the credentials.
Result<TokenGrant> parse_token_response(std::string_view body,
                                        std::chrono::system_clock::time_point now);

// Bearer tokens by scope key, and the single flight of their fetches.
//
// The key is whatever identifies what a token grants (UpstreamRegistry uses
// "realm service scope"). A token is handed out until shortly before it expires
// (refresh_margin), so a request never leaves with a token that dies on the way.
class TokenCache {
public:
    using Clock = std::chrono::steady_clock;
    // Called once with the token, or with the fetch's error.
    using Waiter = std::function<void(Result<std::string>)>;

    enum class Lookup {
        kHit,    // `*token` is set; `waiter` was not kept and will not be called
        kFetch,  // no token, no fetch running: the caller must fetch, then call complete()
        kWait,   // a fetch is running: `waiter` runs when it completes
    };

    // Looks `key` up at `now`. On kFetch and kWait the waiter is queued.
    Lookup acquire(const std::string& key, Clock::time_point now, Waiter waiter,
                   std::string* token);

    // Ends the fetch for `key`: stores the token (unless its lifetime is 0), then calls every
    // queued waiter in arrival order with the token or the error. Waiters may call acquire()
    // again (they run after the cache is updated). No-op without a fetch running.
    void complete(const std::string& key, Result<TokenGrant> grant, Clock::time_point now);

    // Drops the token for `key` if it is still `token` (a 401 proved it bad). A newer token,
    // stored by another request's refresh in the meantime, stays.
    void invalidate(const std::string& key, std::string_view token);

    // Number of stored tokens (expired ones included until pruned).
    std::size_t size() const { return tokens_.size(); }
    bool fetching(const std::string& key) const { return pending_.count(key) != 0; }

    // How long before expiry a token stops being handed out: a tenth of its lifetime, at most 30 s.
    static Clock::duration refresh_margin(std::chrono::seconds lifetime);

    // Past this many tokens, storing one first prunes the expired ones.
    static constexpr std::size_t kPruneAbove = 1024;

private:
    struct Entry {
        std::string token;
        Clock::time_point refresh_at;
    };
    std::map<std::string, Entry> tokens_;
    std::map<std::string, std::vector<Waiter>> pending_;
};

}  // namespace drayage::registry
