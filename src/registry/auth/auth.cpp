// Repository-name normalisation, rule matching and the htpasswd file (see auth.hpp).
#include "drayage/registry/auth.hpp"

#include <crypt.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "drayage/registry/reference.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

Error name_invalid(std::string_view name, std::string_view why) {
    return make_error("NAME_INVALID",
                      "repository name \"" + std::string(name) + "\" " + std::string(why), 400);
}

bool is_bcrypt(std::string_view hash) {
    return hash.size() == 60 &&
           (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"));
}

// bcrypt(password, setting) through libcrypt (libxcrypt on Debian 12); empty on failure.
// crypt_data is ~32 KiB: heap. crypt_rn rather than crypt_r: it returns null on failure instead
// of a "*" string, and AddressSanitizer's crypt_r interceptor cannot find libxcrypt's versioned
// symbol and calls address 0 (seen with g++ 12), which would make the sanitizer build useless.
std::string bcrypt(std::string_view password, const std::string& setting) {
    auto data = std::make_unique<crypt_data>();
    std::string pw(password);
    const char* out = crypt_rn(pw.c_str(), setting.c_str(), data.get(), sizeof(crypt_data));
    if (out == nullptr || out[0] == '*') return {};
    return out;
}

}  // namespace

bool is_docker_hub(std::string_view url) {
    std::string u = text::ascii_lower(url);
    for (std::string_view scheme : {"https://", "http://"}) {
        if (u.starts_with(scheme)) u.erase(0, scheme.size());
    }
    u = u.substr(0, u.find('/'));
    if (u.ends_with(":443")) u.resize(u.size() - 4);
    return u == "registry-1.docker.io" || u == "docker.io" || u == "index.docker.io" ||
           u == "registry.hub.docker.com";
}

Result<std::string> normalize_repository(std::string_view name, bool docker_hub) {
    // Each of these would otherwise be a second spelling of some name: refuse, never reinterpret.
    if (name.empty()) return name_invalid(name, "is empty");
    if (name.find('%') != std::string_view::npos)
        return name_invalid(name, "contains a percent escape");
    if (name.front() == '/' || name.back() == '/')
        return name_invalid(name, "starts or ends with '/'");
    if (name.find("//") != std::string_view::npos) return name_invalid(name, "contains '//'");
    std::string n = text::ascii_lower(name);
    std::string_view rest = n;
    while (!rest.empty()) {
        std::string_view component = rest.substr(0, rest.find('/'));
        if (component == "." || component == "..")
            return name_invalid(name, "has a '.' or '..' component");
        rest.remove_prefix(std::min(rest.size(), component.size() + 1));
    }
    if (auto st = validate_repository_name(n); !st)
        return name_invalid(name, "is outside the distribution grammar");
    if (docker_hub && n.find('/') == std::string::npos) n = "library/" + n;
    return n;
}

bool glob_match(std::string_view pattern, std::string_view name) {
    // Iterative matcher with backtracking to the last star; `**` crosses '/', `*` does not.
    std::size_t p = 0, n = 0;
    std::size_t star_p = std::string_view::npos, star_n = 0;
    bool star_crosses = false;
    while (n < name.size()) {
        if (p < pattern.size() && pattern[p] == '*') {
            star_crosses = p + 1 < pattern.size() && pattern[p + 1] == '*';
            p += star_crosses ? 2 : 1;
            star_p = p;
            star_n = n;
            continue;
        }
        if (p < pattern.size() && pattern[p] == name[n]) {
            ++p;
            ++n;
            continue;
        }
        // Mismatch: let the last star swallow one more character, if it may.
        if (star_p != std::string_view::npos && (star_crosses || name[star_n] != '/')) {
            ++star_n;
            n = star_n;
            p = star_p;
            continue;
        }
        return false;
    }
    while (p < pattern.size() && pattern[p] == '*')
        ++p;
    return p == pattern.size();
}

// ---- AccessPolicy -------------------------------------------------------------------------------

AccessPolicy::AccessPolicy(const config::AuthConfig& config, bool docker_hub)
    : groups_(config.groups), docker_hub_(docker_hub) {
    // Patterns are matched against normalised names, so they are lower-cased; a Docker Hub
    // pattern without '/' means the official image ("busybox" -> "library/busybox").
    auto pattern = [docker_hub](const std::string& p) {
        std::string out = text::ascii_lower(p);
        if (docker_hub && out.find('/') == std::string::npos && out.find('*') == std::string::npos)
            out = "library/" + out;
        return out;
    };
    for (const config::AuthRule& r : config.rules) {
        Rule rule;
        for (const auto& p : r.repositories)
            rule.repositories.push_back(pattern(p));
        rule.pull = r.pull;
        rule.push = r.push;
        rules_.push_back(std::move(rule));
    }
    for (const auto& p : config.passthrough)
        passthrough_.push_back(pattern(p));
}

bool AccessPolicy::names(const std::vector<std::string>& principals, const Principal& who) const {
    for (const std::string& p : principals) {
        if (p == "*") return true;
        if (p == "anonymous" && !who.authenticated) return true;
        if (!who.authenticated) continue;
        if (p == "authenticated" || p == who.user) return true;
        if (p.starts_with("group:")) {
            auto g = groups_.find(p.substr(6));
            if (g != groups_.end() &&
                std::find(g->second.begin(), g->second.end(), who.user) != g->second.end())
                return true;
        }
    }
    return false;
}

bool AccessPolicy::allows(const Principal& who, std::string_view repo, Action action) const {
    for (const Rule& r : rules_) {
        bool covers = std::any_of(r.repositories.begin(), r.repositories.end(),
                                  [&](const std::string& p) { return glob_match(p, repo); });
        if (covers && names(action == Action::pull ? r.pull : r.push, who)) return true;
    }
    return false;
}

bool AccessPolicy::is_passthrough(std::string_view repo) const {
    return std::any_of(passthrough_.begin(), passthrough_.end(),
                       [&](const std::string& p) { return glob_match(p, repo); });
}

// ---- Htpasswd -----------------------------------------------------------------------------------

Result<Htpasswd> Htpasswd::load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error("AUTH_CONFIG", "auth.htpasswd.path: cannot read " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return parse(text.str(), path);
}

Result<Htpasswd> Htpasswd::parse(std::string_view text, const std::string& name) {
    Htpasswd h;
    std::size_t line_no = 0;
    while (!text.empty()) {
        std::string_view line = text.substr(0, text.find('\n'));
        text.remove_prefix(std::min(text.size(), line.size() + 1));
        ++line_no;
        while (!line.empty() && (line.back() == '\r' || line.back() == ' '))
            line.remove_suffix(1);
        if (line.empty() || line.front() == '#') continue;
        auto colon = line.find(':');
        std::string where = name + ":" + std::to_string(line_no) + ": ";
        if (colon == std::string_view::npos || colon == 0)
            return make_error("AUTH_CONFIG", where + "expected user:bcrypt-hash");
        std::string_view hash = line.substr(colon + 1);
        if (!is_bcrypt(hash))
            return make_error("AUTH_CONFIG", where +
                                                 "not a bcrypt hash ($2y$...); create entries with "
                                                 "`htpasswd -B`");
        h.users_[std::string(line.substr(0, colon))] = std::string(hash);
    }
    if (!h.users_.empty()) {
        // Same cost as the first real entry, so an unknown user costs as much as a known one.
        std::string setting = h.users_.begin()->second.substr(0, 29);
        h.dummy_ = bcrypt("drayage-dummy-password", setting);
    }
    return h;
}

bool Htpasswd::verify(std::string_view user, std::string_view password) const {
    auto it = users_.find(std::string(user));
    const std::string& hash = it == users_.end() ? dummy_ : it->second;
    if (hash.empty()) return false;
    std::string got = bcrypt(password, hash);
    bool same =
        got.size() == hash.size() && CRYPTO_memcmp(got.data(), hash.data(), hash.size()) == 0;
    return same && it != users_.end();
}

}  // namespace drayage::registry
