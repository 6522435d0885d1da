// SigV4 as specified in "Create a signed AWS API request" (AWS General Reference) with the S3
// variations from "Authenticating Requests (AWS Signature Version 4)" (S3 API Reference).
// Checked against the aws-c-auth test suite and botocore (tests/unit/s3/auth,
// tests/integration/test_sigv4_botocore.py).
#include "drayage/s3/sigv4.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crypto_internal.hpp"
#include "drayage/util/digest.hpp"

namespace drayage::s3 {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";
constexpr long long kMaxPresignSeconds = 7LL * 24 * 3600;  // S3 rejects longer X-Amz-Expires

bool is_unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool is_digits(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool valid_amz_date(std::string_view d) {
    return d.size() == 16 && is_digits(d.substr(0, 8)) && d[8] == 'T' &&
           is_digits(d.substr(9, 6)) && d[15] == 'Z';
}

// Trimall from the SigV4 spec: no leading/trailing whitespace, inner runs become one space.
// (Also turns obs-fold line breaks of a folded header into single spaces.)
std::string trim_all(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    bool pending_space = false;
    for (char c : v) {
        if (is_space(c)) {
            pending_space = !out.empty();
            continue;
        }
        if (pending_space) out.push_back(' ');
        pending_space = false;
        out.push_back(c);
    }
    return out;
}

// RFC 3986 section 5.2.4 dot-segment removal plus collapsing of empty segments, keeping a
// trailing '/' when the input had one. "/a/.." -> "/", "//a//" -> "/a/".
std::string normalize_path(std::string_view path) {
    std::vector<std::string_view> segments;
    std::size_t pos = 0;
    while (pos <= path.size()) {
        std::size_t next = path.find('/', pos);
        if (next == std::string_view::npos) next = path.size();
        std::string_view seg = path.substr(pos, next - pos);
        if (seg == "..") {
            if (!segments.empty()) segments.pop_back();
        } else if (!seg.empty() && seg != ".") {
            segments.push_back(seg);
        }
        pos = next + 1;
    }
    std::string out;
    for (std::string_view seg : segments) {
        out.push_back('/');
        out.append(seg);
    }
    const bool trailing_slash = !path.empty() && path.back() == '/';
    if (out.empty() || trailing_slash) out.push_back('/');
    return out;
}

struct CanonicalHeaders {
    std::string block;         // "name:value\n" lines
    std::string signed_names;  // "a;b;c"
};

// Lower-cased names, sorted; values trimmed; repeated names joined with ',' in input order.
CanonicalHeaders canonicalize_headers(const std::vector<HeaderField>& headers) {
    std::map<std::string, std::string> merged;
    for (const auto& [name, value] : headers) {
        std::string lname = ascii_lower(trim_whitespace(name));
        auto [it, inserted] = merged.try_emplace(std::move(lname));
        if (!inserted) it->second.push_back(',');
        it->second.append(trim_all(value));
    }
    CanonicalHeaders out;
    for (const auto& [name, value] : merged) {
        out.block.append(name).append(":").append(value).append("\n");
        if (!out.signed_names.empty()) out.signed_names.push_back(';');
        out.signed_names.append(name);
    }
    return out;
}

std::string canonical_query(std::vector<std::pair<std::string, std::string>> encoded) {
    std::sort(encoded.begin(), encoded.end());
    std::string out;
    for (const auto& [k, v] : encoded) {
        if (!out.empty()) out.push_back('&');
        out.append(k).append("=").append(v);
    }
    return out;
}

std::vector<std::pair<std::string, std::string>> encode_params(std::span<const QueryParam> q) {
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(q.size() + 6);
    for (const auto& p : q)
        out.emplace_back(uri_encode(p.key, false), uri_encode(p.value, false));
    return out;
}

bool header_is(std::string_view name, std::string_view lower) {
    return name.size() == lower.size() && ascii_lower(name) == lower;
}

Status validate(const SigV4Request& r, const Credentials& c, const SigV4Scope& s) {
    auto bad = [](std::string msg) { return make_error("sigv4.invalid", std::move(msg)); };
    if (r.method.empty()) return bad("empty HTTP method");
    if (r.path.empty() || r.path.front() != '/') return bad("path must start with '/'");
    if (!valid_amz_date(s.amz_date)) {
        return bad("time must be YYYYMMDDTHHMMSSZ, got '" + std::string(s.amz_date) + "'");
    }
    if (s.region.empty() || s.service.empty()) return bad("empty region or service");
    if (c.access_key.empty() || c.secret_key.empty()) return bad("empty access key or secret");
    const bool has_host = std::any_of(r.headers.begin(), r.headers.end(), [](const HeaderField& h) {
        return header_is(h.first, "host");
    });
    if (!has_host) return bad("no host header to sign");
    return {};
}

std::string credential_scope(const SigV4Scope& s) {
    std::string out(s.amz_date.substr(0, 8));
    out.append("/").append(s.region).append("/").append(s.service).append("/aws4_request");
    return out;
}

std::string signing_key(const Credentials& c, const SigV4Scope& s) {
    std::string k = digest::hmac_sha256("AWS4" + c.secret_key, s.amz_date.substr(0, 8));
    k = digest::hmac_sha256(k, s.region);
    k = digest::hmac_sha256(k, s.service);
    return digest::hmac_sha256(k, "aws4_request");
}

// Fills canonical_request, string_to_sign and signature from the parts.
void compute(SigV4Signature& out, const SigV4Request& r, const Credentials& c, const SigV4Scope& s,
             const SigV4Options& o, const std::string& query, const CanonicalHeaders& headers) {
    out.canonical_request.reserve(512);
    out.canonical_request.append(r.method).append("\n");
    out.canonical_request.append(canonical_uri(r.path, o)).append("\n");
    out.canonical_request.append(query).append("\n");
    out.canonical_request.append(headers.block).append("\n");
    out.canonical_request.append(headers.signed_names).append("\n");
    out.canonical_request.append(r.payload_hash);
    out.signed_headers = headers.signed_names;

    out.string_to_sign.append(kAlgorithm).append("\n");
    out.string_to_sign.append(s.amz_date).append("\n");
    out.string_to_sign.append(credential_scope(s)).append("\n");
    out.string_to_sign.append(digest::sha256_hex(out.canonical_request));
    out.signature = digest::hex_encode(digest::hmac_sha256(signing_key(c, s), out.string_to_sign));
}

}  // namespace

std::string ascii_lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

std::string_view trim_whitespace(std::string_view s) {
    while (!s.empty() && is_space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
        s.remove_suffix(1);
    return s;
}

std::string uri_encode(std::string_view s, bool keep_slash) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size() + s.size() / 4);
    for (unsigned char c : s) {
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(kHex[c >> 4]);
            out.push_back(kHex[c & 0xf]);
        }
    }
    return out;
}

Result<std::string> uri_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out.push_back(s[i]);
            continue;
        }
        const int hi = i + 2 < s.size() ? hex_value(s[i + 1]) : -1;
        const int lo = i + 2 < s.size() ? hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            return make_error("uri.invalid", "bad percent escape at offset " + std::to_string(i));
        }
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

std::string encode_query(std::span<const QueryParam> params) {
    std::string out;
    for (const auto& p : params) {
        if (!out.empty()) out.push_back('&');
        out.append(uri_encode(p.key, false));
        if (!p.bare || !p.value.empty()) out.append("=").append(uri_encode(p.value, false));
    }
    return out;
}

std::string amz_date(std::chrono::system_clock::time_point t) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[72];  // room for any int the compiler cannot rule out
    std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

std::string canonical_uri(std::string_view path, const SigV4Options& options) {
    std::string p = options.normalize_path ? normalize_path(path) : std::string(path);
    if (p.empty()) p = "/";
    return options.double_encode_path ? uri_encode(p, true) : p;
}

Result<SigV4Signature> sign_v4(const SigV4Request& r, const Credentials& c, const SigV4Scope& s,
                               const SigV4Options& o) {
    if (auto st = validate(r, c, s); !st) return st.error();
    const bool has_token = !c.session_token.empty();

    SigV4Signature out;
    out.headers_to_add.emplace_back("x-amz-date", std::string(s.amz_date));
    if (o.add_content_sha256_header) {
        out.headers_to_add.emplace_back("x-amz-content-sha256", std::string(r.payload_hash));
    }
    if (has_token) out.headers_to_add.emplace_back("x-amz-security-token", c.session_token);

    // The caller's own copies of the headers we set are replaced, as botocore does, so a
    // retried request can be re-signed from the same header list.
    std::vector<HeaderField> to_sign;
    to_sign.reserve(r.headers.size() + 3);
    for (const auto& h : r.headers) {
        if (header_is(h.first, "authorization") || header_is(h.first, "x-amz-date") ||
            (o.add_content_sha256_header && header_is(h.first, "x-amz-content-sha256")) ||
            (has_token && header_is(h.first, "x-amz-security-token"))) {
            continue;
        }
        to_sign.push_back(h);
    }
    for (const auto& h : out.headers_to_add) {
        if (h.first == "x-amz-security-token" && !o.sign_session_token) continue;
        to_sign.push_back(h);
    }

    const CanonicalHeaders headers = canonicalize_headers(to_sign);
    compute(out, r, c, s, o, canonical_query(encode_params(r.query)), headers);

    out.authorization.append(kAlgorithm).append(" Credential=").append(c.access_key);
    out.authorization.append("/").append(credential_scope(s));
    out.authorization.append(", SignedHeaders=").append(out.signed_headers);
    out.authorization.append(", Signature=").append(out.signature);
    return out;
}

Result<SigV4Signature> presign_v4(const SigV4Request& r, const Credentials& c, const SigV4Scope& s,
                                  std::chrono::seconds expires, const SigV4Options& o) {
    if (auto st = validate(r, c, s); !st) return st.error();
    if (expires.count() < 1 || expires.count() > kMaxPresignSeconds) {
        return make_error("sigv4.invalid", "presign expiry must be 1 s .. 7 days, got " +
                                               std::to_string(expires.count()) + " s");
    }
    for (const auto& p : r.query) {
        if (p.key.starts_with("X-Amz-")) {
            return make_error("sigv4.invalid", "query already holds signing parameter " + p.key);
        }
    }
    std::vector<HeaderField> to_sign;
    for (const auto& h : r.headers) {
        if (!header_is(h.first, "authorization")) to_sign.push_back(h);
    }
    const CanonicalHeaders headers = canonicalize_headers(to_sign);

    std::vector<QueryParam> auth = {
        {"X-Amz-Algorithm", std::string(kAlgorithm), false},
        {"X-Amz-Credential", c.access_key + "/" + credential_scope(s), false},
        {"X-Amz-Date", std::string(s.amz_date), false},
        {"X-Amz-Expires", std::to_string(expires.count()), false},
        {"X-Amz-SignedHeaders", headers.signed_names, false},
    };
    const bool has_token = !c.session_token.empty();
    if (has_token && o.sign_session_token) {
        auth.push_back({"X-Amz-Security-Token", c.session_token, false});
    }
    auto encoded = encode_params(r.query);
    for (auto& p : encode_params(auth))
        encoded.push_back(std::move(p));

    SigV4Signature out;
    compute(out, r, c, s, o, canonical_query(std::move(encoded)), headers);

    if (has_token && !o.sign_session_token) {
        auth.push_back({"X-Amz-Security-Token", c.session_token, false});
    }
    auth.push_back({"X-Amz-Signature", out.signature, false});
    out.presigned_query = encode_query(r.query);
    if (!out.presigned_query.empty()) out.presigned_query.push_back('&');
    out.presigned_query.append(encode_query(auth));
    return out;
}

}  // namespace drayage::s3
