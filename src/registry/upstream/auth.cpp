#include <cctype>
#include <ctime>
#include <nlohmann/json.hpp>

#include "drayage/registry/upstream_auth.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

bool is_tchar(char c) {
    // RFC 7230 tchar.
    if (std::isalnum(static_cast<unsigned char>(c))) return true;
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~': return true;
        default: return false;
    }
}

bool is_token68_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
           c == '~' || c == '+' || c == '/';
}

using text::iequals;

// A cursor over one field value. Every reader leaves `pos` unchanged when it fails.
struct Cursor {
    std::string_view s;
    std::size_t pos = 0;

    bool done() const { return pos >= s.size(); }
    char peek() const { return done() ? '\0' : s[pos]; }
    void skip_ows() {
        while (!done() && (s[pos] == ' ' || s[pos] == '\t'))
            ++pos;
    }
    std::string_view token() {
        std::size_t start = pos;
        while (!done() && is_tchar(s[pos]))
            ++pos;
        return s.substr(start, pos - start);
    }
    // quoted-string with quoted-pairs; false (pos unchanged) when unterminated.
    bool quoted(std::string& out) {
        std::size_t start = pos;
        if (peek() != '"') return false;
        ++pos;
        out.clear();
        while (!done()) {
            char c = s[pos++];
            if (c == '"') return true;
            if (c == '\\' && !done()) c = s[pos++];
            out += c;
        }
        pos = start;
        return false;
    }
};

}  // namespace

std::string AuthChallenge::param(std::string_view name) const {
    for (const auto& [k, v] : params) {
        if (iequals(k, name)) return v;
    }
    return {};
}

std::vector<AuthChallenge> parse_www_authenticate(std::string_view value) {
    std::vector<AuthChallenge> out;
    Cursor c{value};
    for (;;) {
        // Empty list elements (", ,") are allowed between challenges.
        c.skip_ows();
        while (c.peek() == ',') {
            ++c.pos;
            c.skip_ows();
        }
        if (c.done()) break;
        std::string_view scheme = c.token();
        if (scheme.empty()) break;  // junk: keep what we have
        AuthChallenge ch;
        ch.scheme = text::ascii_lower(scheme);
        c.skip_ows();

        // token68 ("Negotiate abc==") is one word, optional '=' padding, then ',' or the end;
        // an auth-param is name BWS '=' BWS value. Look ahead to tell them apart.
        {
            std::size_t p = c.pos;
            while (p < value.size() && is_token68_char(value[p]))
                ++p;
            std::size_t word_end = p;
            while (p < value.size() && value[p] == '=')
                ++p;
            std::size_t after = p;
            while (after < value.size() && (value[after] == ' ' || value[after] == '\t'))
                ++after;
            if (word_end > c.pos && (after == value.size() || value[after] == ',')) {
                ch.token68 = std::string(value.substr(c.pos, p - c.pos));
                c.pos = p;
                out.push_back(std::move(ch));
                continue;
            }
        }

        // auth-params, until one that is not "name = value" (that is the next challenge).
        for (;;) {
            c.skip_ows();
            std::size_t save = c.pos;
            std::string_view name = c.token();
            if (name.empty()) {
                c.pos = save;
                break;
            }
            c.skip_ows();
            if (c.peek() != '=') {
                c.pos = save;  // the next challenge's scheme
                break;
            }
            ++c.pos;
            c.skip_ows();
            std::string v;
            if (c.peek() == '"') {
                if (!c.quoted(v)) {
                    out.push_back(std::move(ch));
                    return out;  // unterminated quote: nothing after it can be trusted
                }
            } else {
                v = std::string(c.token());
            }
            ch.params.emplace_back(text::ascii_lower(name), std::move(v));
            c.skip_ows();
            if (c.peek() != ',') break;
            // Consume the comma(s); whether the next word is a param or a scheme is decided by
            // the '=' lookahead above.
            while (c.peek() == ',') {
                ++c.pos;
                c.skip_ows();
            }
        }
        out.push_back(std::move(ch));
        // Anything that is neither ',' nor a token start here is junk: stop.
        c.skip_ows();
        if (!c.done() && c.peek() != ',' && !is_tchar(c.peek())) break;
    }
    return out;
}

std::string unusable_token_realm(std::string_view realm) {
    for (char c : realm) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f)
            return "it holds a space, a control character or a non-ASCII byte";
    }
    std::size_t host = 0;
    if (iequals(realm.substr(0, 7), "http://")) {
        host = 7;
    } else if (iequals(realm.substr(0, 8), "https://")) {
        host = 8;
    } else {
        return "it is not an http:// or https:// URL";
    }
    if (host == realm.size() ||
        std::string_view("/?#@:").find(realm[host]) != std::string_view::npos)
        return "it names no host";
    return {};
}

std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view t) {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)
    auto digits = [&](std::size_t at, std::size_t n, int& out) {
        if (at + n > t.size()) return false;
        out = 0;
        for (std::size_t i = at; i < at + n; ++i) {
            if (!std::isdigit(static_cast<unsigned char>(t[i]))) return false;
            out = out * 10 + (t[i] - '0');
        }
        return true;
    };
    int year, mon, day, hour, min, sec;
    if (!digits(0, 4, year) || t.size() < 20 || t[4] != '-' || !digits(5, 2, mon) || t[7] != '-' ||
        !digits(8, 2, day) || (t[10] != 'T' && t[10] != 't' && t[10] != ' ') ||
        !digits(11, 2, hour) || t[13] != ':' || !digits(14, 2, min) || t[16] != ':' ||
        !digits(17, 2, sec))
        return std::nullopt;
    // system_clock counts nanoseconds in 64 bits: it ends in 2262.
    if (year < 1970 || year > 2200) return std::nullopt;
    if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
        return std::nullopt;
    std::size_t p = 19;
    std::chrono::nanoseconds frac{0};
    if (p < t.size() && t[p] == '.') {
        ++p;
        std::size_t start = p;
        std::int64_t ns = 0;
        int scale = 0;
        while (p < t.size() && std::isdigit(static_cast<unsigned char>(t[p]))) {
            if (scale < 9) {
                ns = ns * 10 + (t[p] - '0');
                ++scale;
            }
            ++p;
        }
        if (p == start) return std::nullopt;
        for (; scale < 9; ++scale)
            ns *= 10;
        frac = std::chrono::nanoseconds(ns);
    }
    int offset_min = 0;
    if (p < t.size() && (t[p] == 'Z' || t[p] == 'z')) {
        ++p;
    } else if (p < t.size() && (t[p] == '+' || t[p] == '-')) {
        int oh, om;
        if (!digits(p + 1, 2, oh) || p + 3 >= t.size() || t[p + 3] != ':' || !digits(p + 4, 2, om))
            return std::nullopt;
        offset_min = (oh * 60 + om) * (t[p] == '-' ? -1 : 1);
        p += 6;
    } else {
        return std::nullopt;
    }
    if (p != t.size()) return std::nullopt;

    using namespace std::chrono;
    year_month_day ymd{std::chrono::year{year}, month{static_cast<unsigned>(mon)},
                       std::chrono::day{static_cast<unsigned>(day)}};
    if (!ymd.ok()) return std::nullopt;
    auto tp = sys_days{ymd} + hours{hour} + minutes{min} + seconds{sec} - minutes{offset_min};
    return time_point_cast<system_clock::duration>(tp + frac);
}

Result<TokenGrant> parse_token_response(std::string_view body,
                                        std::chrono::system_clock::time_point now) {
    auto doc = nlohmann::json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object())
        return make_error("TOKEN_INVALID",
                          "token endpoint answered with something that is not a "
                          "JSON object");
    TokenGrant grant;
    for (const char* key : {"token", "access_token"}) {
        auto it = doc.find(key);
        if (it != doc.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
            grant.token = it->get<std::string>();
            break;
        }
    }
    if (grant.token.empty())
        return make_error("TOKEN_INVALID",
                          "token endpoint answer has neither token nor access_token");

    std::chrono::seconds expires_in = kDefaultTokenLifetime;
    if (auto it = doc.find("expires_in"); it != doc.end() && it->is_number()) {
        double v = it->get<double>();
        if (v >= 1 && v < 1e9) expires_in = std::chrono::seconds(static_cast<std::int64_t>(v));
    }
    grant.lifetime = expires_in;
    if (auto it = doc.find("issued_at"); it != doc.end() && it->is_string()) {
        if (auto issued = parse_rfc3339(it->get_ref<const std::string&>())) {
            auto left =
                std::chrono::duration_cast<std::chrono::seconds>(*issued + expires_in - now);
            // Clamp: a registry clock behind ours would otherwise shorten the lifetime to nothing
            // (left < 0 -> use once), one ahead of ours cannot lengthen it past expires_in.
            if (left < std::chrono::seconds(0)) left = std::chrono::seconds(0);
            if (left > expires_in) left = expires_in;
            grant.lifetime = left;
        }
    }
    return grant;
}

TokenCache::Clock::duration TokenCache::refresh_margin(std::chrono::seconds lifetime) {
    Clock::duration margin = lifetime / 10;
    if (margin > std::chrono::seconds(30)) margin = std::chrono::seconds(30);
    return margin;
}

TokenCache::Lookup TokenCache::acquire(const std::string& key, Clock::time_point now, Waiter waiter,
                                       std::string* token) {
    if (auto it = tokens_.find(key); it != tokens_.end()) {
        if (now < it->second.refresh_at) {
            *token = it->second.token;
            return Lookup::kHit;
        }
        tokens_.erase(it);
    }
    auto [it, inserted] = pending_.try_emplace(key);
    it->second.push_back(std::move(waiter));
    return inserted ? Lookup::kFetch : Lookup::kWait;
}

void TokenCache::complete(const std::string& key, Result<TokenGrant> grant, Clock::time_point now) {
    auto it = pending_.find(key);
    if (it == pending_.end()) return;
    std::vector<Waiter> waiters = std::move(it->second);
    pending_.erase(it);
    if (grant && grant->lifetime > std::chrono::seconds(0)) {
        if (tokens_.size() >= kPruneAbove) {
            for (auto t = tokens_.begin(); t != tokens_.end();) {
                t = now >= t->second.refresh_at ? tokens_.erase(t) : std::next(t);
            }
        }
        tokens_[key] = Entry{grant->token, now + grant->lifetime - refresh_margin(grant->lifetime)};
    }
    for (auto& w : waiters) {
        if (grant)
            w(grant->token);
        else
            w(grant.error());
    }
}

void TokenCache::invalidate(const std::string& key, std::string_view token) {
    auto it = tokens_.find(key);
    if (it != tokens_.end() && it->second.token == token) tokens_.erase(it);
}

}  // namespace drayage::registry
