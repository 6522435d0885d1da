// SigV2 for S3 ("Signing and authenticating REST requests", S3 developer guide, 2006 scheme).
// Checked against botocore's HmacV1Auth in tests/integration/test_sigv4_botocore.py.
#include "drayage/s3/sigv2.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "crypto_internal.hpp"
#include "drayage/util/digest.hpp"

namespace drayage::s3 {
namespace {

// The sub-resources S3 includes in the canonical resource: botocore's list (HmacV1Auth
// QSAOfInterest), which is a superset of what Swift's s3api checks for the operations we use.
constexpr std::array<std::string_view, 35> kSubresources = {
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "defaultObjectAcl",
    "delete",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
};

bool header_is(std::string_view name, std::string_view lower) {
    return name.size() == lower.size() && ascii_lower(name) == lower;
}

// First value of a header, trimmed; empty when absent.
std::string_view first_header(std::span<const HeaderField> headers, std::string_view lower) {
    for (const auto& [name, value] : headers) {
        if (header_is(name, lower)) return trim_whitespace(value);
    }
    return {};
}

}  // namespace

bool is_sigv2_subresource(std::string_view key) {
    return std::find(kSubresources.begin(), kSubresources.end(), key) != kSubresources.end();
}

std::string http_date(std::chrono::system_clock::time_point t) {
    // Not strftime: its %a/%b follow the locale, and the HTTP date is always English.
    static constexpr std::array<const char*, 7> kDays = {"Sun", "Mon", "Tue", "Wed",
                                                         "Thu", "Fri", "Sat"};
    static constexpr std::array<const char*, 12> kMonths = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                  kDays.at(static_cast<std::size_t>(tm.tm_wday)), tm.tm_mday,
                  kMonths.at(static_cast<std::size_t>(tm.tm_mon)), tm.tm_year + 1900, tm.tm_hour,
                  tm.tm_min, tm.tm_sec);
    return buf;
}

Result<SigV2Signature> sign_v2(const SigV2Request& r, const Credentials& c) {
    auto bad = [](std::string msg) { return make_error("sigv2.invalid", std::move(msg)); };
    if (r.method.empty()) return bad("empty HTTP method");
    if (r.path.empty() || r.path.front() != '/') return bad("path must start with '/'");
    if (c.access_key.empty() || c.secret_key.empty()) return bad("empty access key or secret");
    const bool has_token = !c.session_token.empty();

    // x-amz-* headers, lower-cased and sorted; ours replace the caller's copies.
    std::map<std::string, std::string> amz;
    for (const auto& [name, value] : r.headers) {
        std::string lname = ascii_lower(trim_whitespace(name));
        if (!lname.starts_with("x-amz-")) continue;
        if (has_token && lname == "x-amz-security-token") continue;
        auto [it, inserted] = amz.try_emplace(std::move(lname));
        if (!inserted) it->second.push_back(',');
        it->second.append(trim_whitespace(value));
    }
    if (r.date.empty() && amz.find("x-amz-date") == amz.end()) {
        return bad("neither a Date nor an x-amz-date header");
    }

    SigV2Signature out;
    if (!r.date.empty()) out.headers_to_add.emplace_back("Date", std::string(r.date));
    if (has_token) {
        out.headers_to_add.emplace_back("x-amz-security-token", c.session_token);
        amz["x-amz-security-token"] = c.session_token;
    }

    std::string& sts = out.string_to_sign;
    sts.append(r.method).append("\n");
    sts.append(first_header(r.headers, "content-md5")).append("\n");
    sts.append(first_header(r.headers, "content-type")).append("\n");
    sts.append(r.date).append("\n");
    for (const auto& [name, value] : amz)
        sts.append(name).append(":").append(value).append("\n");

    // Sub-resources sorted by name only (stable), as S3 and botocore do.
    std::vector<const QueryParam*> sub;
    for (const auto& p : r.query) {
        if (is_sigv2_subresource(p.key)) sub.push_back(&p);
    }
    std::stable_sort(sub.begin(), sub.end(),
                     [](const QueryParam* a, const QueryParam* b) { return a->key < b->key; });
    sts.append(r.path);
    for (std::size_t i = 0; i < sub.size(); ++i) {
        sts.push_back(i == 0 ? '?' : '&');
        sts.append(sub[i]->key);
        if (!sub[i]->bare) sts.append("=").append(sub[i]->value);
    }

    out.signature = base64_encode(digest::hmac_sha1(c.secret_key, sts));
    out.authorization = "AWS " + c.access_key + ":" + out.signature;
    return out;
}

}  // namespace drayage::s3
