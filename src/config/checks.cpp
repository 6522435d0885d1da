// Text helpers and value checks: quoting, "did you mean", booleans and counts as Distribution
// spells them, host:port, listen addresses and http(s) URLs.
#include <arpa/inet.h>

#include <algorithm>
#include <cctype>

#include "keys.hpp"

namespace drayage::config::detail {

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

// The parser's reason for rejecting `text`, as " (reason)" without repeating the text, or ""
// when it says no more than "expected ..., got ..." already does.
std::string reason(std::string_view text, std::string message) {
    const std::string prefix = quoted(text) + " ";
    if (message.starts_with(prefix)) {
        message.erase(0, prefix.size());
    }
    if (message == "does not start with a number" || message == "is not a duration") {
        return {};
    }
    return " (" + message + ")";
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

}  // namespace

// The known key or section path closest to `path` (case-insensitively), if it is close. With
// `env_style`, `path` is spelt with '_' for '.' (from a variable name) and so are candidates.
std::string suggestion(std::string_view path, bool env_style) {
    const std::string want = ascii_lower(path);
    std::string best;
    std::size_t best_distance = 3;  // more than two edits away is not a typo
    auto consider = [&](std::string_view candidate) {
        std::string spelt(candidate);
        if (env_style) {
            std::replace(spelt.begin(), spelt.end(), '.', '_');
        }
        const std::size_t d = edit_distance(want, spelt);
        if (d < best_distance) {
            best_distance = d;
            best = std::string(candidate);
        }
    };
    for (const Key& k : keys()) {
        consider(k.path);
    }
    for (std::string_view s : kSections) {
        consider(s);
    }
    return best;
}

bool parse_bool(std::string_view text, bool& out) {
    // YAML 1.1 spellings plus Go's strconv.ParseBool ones (Distribution reads env strings so).
    static constexpr std::array<std::string_view, 6> kTrue{"true", "yes", "on", "1", "t", "y"};
    static constexpr std::array<std::string_view, 6> kFalse{"false", "no", "off", "0", "f", "n"};
    const std::string v = ascii_lower(text);
    if (std::find(kTrue.begin(), kTrue.end(), v) != kTrue.end()) {
        out = true;
        return true;
    }
    if (std::find(kFalse.begin(), kFalse.end(), v) != kFalse.end()) {
        out = false;
        return true;
    }
    return false;
}

bool parse_count(std::string_view text, std::uint64_t& out) {
    if (text.empty() || text.size() > 19) {
        return false;
    }
    std::uint64_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    out = v;
    return true;
}

namespace {

// ---- value checks --------------------------------------------------------------------------

bool valid_hostname(std::string_view host) {
    if (host.empty() || host.size() > 253) {
        return false;
    }
    std::size_t label = 0;
    for (char c : host) {
        if (c == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
        } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
            ++label;
        } else {
            return false;
        }
    }
    return true;
}

bool all_digits_and_dots(std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

}  // namespace

// Checks "host[:port]" of a URL or endpoint; `port_required` for listen addresses.
std::string check_host_port(std::string_view hp, bool port_required, std::string& host_out,
                            std::uint16_t& port_out) {
    std::string_view host;
    std::string_view port;
    bool has_port = false;
    if (hp.starts_with('[')) {
        const std::size_t close = hp.find(']');
        if (close == std::string_view::npos) {
            return "an IPv6 address needs a closing ']'";
        }
        host = hp.substr(1, close - 1);
        in6_addr a6{};
        if (inet_pton(AF_INET6, std::string(host).c_str(), &a6) != 1) {
            return quoted(host) + " is not an IPv6 address";
        }
        std::string_view rest = hp.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return "expected ':port' after ']'";
            }
            has_port = true;
            port = rest.substr(1);
        }
    } else {
        const std::size_t colon = hp.rfind(':');
        if (colon != std::string_view::npos) {
            host = hp.substr(0, colon);
            port = hp.substr(colon + 1);
            has_port = true;
            if (host.find(':') != std::string_view::npos) {
                return "an IPv6 address needs brackets, e.g. [::1]:5000";
            }
        } else {
            host = hp;
        }
        if (!host.empty()) {
            if (all_digits_and_dots(host)) {
                in_addr a4{};
                if (inet_pton(AF_INET, std::string(host).c_str(), &a4) != 1) {
                    return quoted(host) + " is not an IPv4 address";
                }
            } else if (!valid_hostname(host)) {
                return quoted(host) + " is not a host name";
            }
        }
    }
    if (!has_port) {
        if (port_required) {
            return "expected [host]:port, e.g. :5000 or 127.0.0.1:5000";
        }
    } else {
        std::uint64_t p = 0;
        if (!parse_count(port, p) || p > 65535) {
            return "port " + quoted(port) + " is not a number in 1..65535";
        }
        if (p == 0) {
            return "port 0 is not allowed (clients need to know the port); expected 1..65535";
        }
        port_out = static_cast<std::uint16_t>(p);
    }
    host_out = std::string(host);
    return {};
}

std::string check_addr(std::string_view v) {
    std::string host;
    std::uint16_t port = 0;
    std::string problem = check_host_port(v, true, host, port);
    return problem.empty() ? problem
                           : "expected [host]:port like :5000 or 127.0.0.1:5000, got " + quoted(v) +
                                 " (" + problem + ")";
}

namespace {

// "http(s)://host[:port][/path]"; `scheme_optional` for regionendpoint, which the AWS SDK
// completes with https:// or http:// from `secure`.
std::string check_http_url(std::string_view v, bool scheme_optional) {
    const std::string low = ascii_lower(v);
    std::string_view rest = v;
    if (low.starts_with("http://")) {
        rest.remove_prefix(7);
    } else if (low.starts_with("https://")) {
        rest.remove_prefix(8);
    } else if (!scheme_optional || low.find("://") != std::string::npos) {
        return "expected an http:// or https:// URL, got " + quoted(v);
    }
    const std::size_t slash = rest.find('/');
    const std::string_view authority = rest.substr(0, slash);
    if (authority.find('@') != std::string_view::npos) {
        return "credentials do not belong in the URL (it is logged); use upstream.username and "
               "upstream.password";
    }
    if (rest.find_first_of("?#") != std::string_view::npos) {
        return "expected a URL without query or fragment, got " + quoted(v);
    }
    if (authority.empty()) {
        return "expected a host in the URL, got " + quoted(v);
    }
    std::string host;
    std::uint16_t port = 0;
    std::string problem = check_host_port(authority, false, host, port);
    if (problem.empty() && host.empty()) {
        problem = "no host";
    }
    return problem.empty() ? problem
                           : "expected an http(s) URL, got " + quoted(v) + " (" + problem + ")";
}

}  // namespace

std::string check_url(std::string_view v) {
    return v.empty() ? std::string() : check_http_url(v, false);
}
std::string check_endpoint(std::string_view v) {
    return v.empty() ? std::string() : check_http_url(v, true);
}

}  // namespace drayage::config::detail
