// JWT (HS256) tokens and scopes: signing and verifying the tokens drayage issues, the scope
// grammar, base64 (auth_codec.hpp).
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "auth_codec.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry::detail {

using nlohmann::json;

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
}  // namespace drayage::registry::detail

namespace drayage::registry {
namespace {

using namespace detail;
using nlohmann::json;

Error invalid(std::string why) {
    return make_error("TOKEN_INVALID", std::move(why), 401);
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

}  // namespace drayage::registry
