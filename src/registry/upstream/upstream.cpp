// UpstreamRegistry's public calls: each builds one UpstreamCallSpec (call.hpp) and reads its
// reply; manifests are checked against every digest they are claimed to have.
#include "drayage/registry/upstream.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "call.hpp"
#include "drayage/registry/reference.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using text::parse_u64;

// "<algorithm>:<hex>" of `data`.
std::string digest_of(DigestAlgorithm algorithm, std::string_view data) {
    const EVP_MD* md_type = EVP_sha256();
    std::string out = "sha256:";
    if (algorithm == DigestAlgorithm::sha384) {
        md_type = EVP_sha384();
        out = "sha384:";
    } else if (algorithm == DigestAlgorithm::sha512) {
        md_type = EVP_sha512();
        out = "sha512:";
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, md_type, nullptr);
    return out + digest::hex_encode(std::string_view(reinterpret_cast<const char*>(md), len));
}

}  // namespace

Error upstream_status_error(int status, std::string_view body, std::string_view what) {
    std::string code;
    switch (status) {
        case 401: code = "UNAUTHORIZED"; break;
        case 404: code = "NOT_FOUND"; break;
        case 429: code = "TOOMANYREQUESTS"; break;
        default: code = fmt::format("UPSTREAM_{}", status); break;
    }
    // Registry API error bodies name the reason ({"errors":[{"code":"MANIFEST_UNKNOWN",...}]}).
    std::string detail;
    auto doc = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
    if (!doc.is_discarded() && doc.is_object() && doc.contains("errors") &&
        doc["errors"].is_array()) {
        for (const auto& e : doc["errors"]) {
            if (!e.is_object()) continue;
            if (!detail.empty()) detail += "; ";
            detail += e.value("code", std::string("?"));
            std::string msg = e.value("message", std::string());
            if (!msg.empty()) detail += " (" + msg + ")";
        }
    } else {
        for (char c : body.substr(0, 200))
            detail += (c >= 0x20 && c < 0x7f) ? c : ' ';
    }
    std::string message = fmt::format("{} answered {}", what, status);
    if (!detail.empty()) message += ": " + detail;
    return make_error(std::move(code), std::move(message), status);
}

UpstreamRegistry::UpstreamRegistry(net::CurlLoop& loop, config::UpstreamConfig config)
    : impl_(std::make_unique<Impl>(loop, std::move(config))) {}

UpstreamRegistry::~UpstreamRegistry() = default;

std::uint64_t UpstreamRegistry::token_fetches() const {
    return impl_->token_fetches;
}

namespace {

std::string repo_scope(std::string_view repo) {
    return fmt::format("repository:{}:pull", repo);
}

// The registry's Docker-Content-Digest when it is a well-formed digest of an algorithm drayage
// can check (sha256, sha384, sha512) and, when the manifest was asked for by digest, that digest;
// else empty.
std::string sent_manifest_digest(const Reply& r, std::string_view reference) {
    std::string_view sent = net::find_header(r.head.headers, "Docker-Content-Digest");
    if (sent.empty() || !BlobDigest::parse(sent)) return {};
    if (reference.find(':') != std::string_view::npos && sent != reference) return {};
    return std::string(sent);
}

UpstreamManifest manifest_from(const Reply& r, std::string_view reference, bool with_body) {
    UpstreamManifest m;
    m.status = r.head.status;
    m.media_type = std::string(net::find_header(r.head.headers, "Content-Type"));
    m.digest = sent_manifest_digest(r, reference);
    m.headers = r.head.headers;
    if (with_body) {
        m.body = r.body;
        m.size = r.body.size();
    } else {
        parse_u64(net::find_header(r.head.headers, "Content-Length"), m.size);
    }
    return m;
}

// The digest a fetched manifest is known by, checked against its bytes: the reference when it
// is a digest, else the registry's Docker-Content-Digest, else the body's sha256. Each digest
// the registry claims must match the body, whatever its algorithm: the manifest is cached under
// it, and a client asking for that digest later gets these bytes.
Result<std::string> verified_manifest_digest(const Reply& r, std::string_view reference,
                                             std::string_view url) {
    const bool by_digest = reference.find(':') != std::string_view::npos;
    std::string_view sent = net::find_header(r.head.headers, "Docker-Content-Digest");
    std::vector<std::string_view> claims;
    if (by_digest) claims.push_back(reference);
    if (!sent.empty() && sent != reference) claims.push_back(sent);
    for (std::string_view claim : claims) {
        auto d = BlobDigest::parse(claim);
        if (!d) {
            if (claim == reference) return d.error();
            continue;  // not a digest drayage can check: dropped, never passed on
        }
        std::string actual = digest_of(d->algorithm(), r.body);
        if (actual != d->str()) {
            return make_error("DIGEST_MISMATCH", fmt::format("GET {}: body hashes to {}, expected "
                                                             "{}",
                                                             url, actual, d->str()));
        }
    }
    std::string digest = by_digest ? std::string(reference) : sent_manifest_digest(r, reference);
    return digest.empty() ? digest_of(DigestAlgorithm::sha256, r.body) : digest;
}

}  // namespace

void UpstreamRegistry::head_manifest(std::string_view repo, std::string_view reference,
                                     std::string_view accept, Done<UpstreamManifest> done,
                                     std::optional<UpstreamCredentials> as) {
    UpstreamCallSpec spec{"manifest_head", "HEAD",
                          fmt::format("{}/v2/{}/manifests/{}", impl_->base, repo, reference)};
    spec.scope = repo_scope(repo);
    spec.as = std::move(as);
    if (!accept.empty()) spec.headers.emplace_back("Accept", std::string(accept));
    spec.on_reply = [done = std::move(done), ref = std::string(reference)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(manifest_from(*r, ref, false));
    };
    impl_->start(std::move(spec));
}

void UpstreamRegistry::get_manifest(std::string_view repo, std::string_view reference,
                                    std::string_view accept, Done<UpstreamManifest> done) {
    std::string url = fmt::format("{}/v2/{}/manifests/{}", impl_->base, repo, reference);
    UpstreamCallSpec spec{"manifest_get", "GET", url};
    spec.scope = repo_scope(repo);
    spec.cap = kMaxManifestBytes;
    if (!accept.empty()) spec.headers.emplace_back("Accept", std::string(accept));
    spec.on_reply = [done = std::move(done), ref = std::string(reference), url](Result<Reply> r) {
        if (!r) return done(r.error());
        auto digest = verified_manifest_digest(*r, ref, url);
        if (!digest) return done(digest.error());
        UpstreamManifest m = manifest_from(*r, ref, true);
        m.digest = std::move(*digest);
        done(std::move(m));
    };
    impl_->start(std::move(spec));
}

void UpstreamRegistry::head_blob(std::string_view repo, std::string_view digest,
                                 Done<UpstreamBlobHead> done,
                                 std::optional<UpstreamCredentials> as) {
    UpstreamCallSpec spec{"blob_head", "HEAD",
                          fmt::format("{}/v2/{}/blobs/{}", impl_->base, repo, digest)};
    spec.scope = repo_scope(repo);
    spec.as = std::move(as);
    spec.follow_redirects = true;
    spec.on_reply = [done = std::move(done), asked = std::string(digest)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(blob_head_of(r->head, asked));
    };
    impl_->start(std::move(spec));
}

std::shared_ptr<BlobFetch> UpstreamRegistry::get_blob(std::string_view repo,
                                                      std::string_view digest,
                                                      std::optional<ByteRange> range,
                                                      BlobHandlers handlers) {
    UpstreamCallSpec spec{"blob_get", "GET",
                          fmt::format("{}/v2/{}/blobs/{}", impl_->base, repo, digest)};
    spec.scope = repo_scope(repo);
    spec.follow_redirects = true;
    spec.stream = true;
    spec.blob_digest = std::string(digest);
    if (range) {
        spec.headers.emplace_back(
            "Range", range->last ? fmt::format("bytes={}-{}", range->first, *range->last)
                                 : fmt::format("bytes={}-", range->first));
    }
    spec.blob = std::move(handlers);
    return impl_->start(std::move(spec));
}

void UpstreamRegistry::get_tags(std::string_view repo, std::string_view query,
                                Done<UpstreamListing> done) {
    std::string url = fmt::format("{}/v2/{}/tags/list", impl_->base, repo);
    if (!query.empty()) url += fmt::format("?{}", query);
    UpstreamCallSpec spec{"tags", "GET", url};
    spec.scope = repo_scope(repo);
    spec.cap = kMaxListingBytes;
    spec.on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(UpstreamListing{r->head.status, r->head.headers, std::move(r->body)});
    };
    impl_->start(std::move(spec));
}

void UpstreamRegistry::authorization(std::string_view scope, Done<std::string> done) {
    UpstreamCallSpec spec{"auth_probe", "GET", impl_->base + "/v2/"};
    spec.scope = std::string(scope);
    spec.authorize_only = true;
    spec.cap = kMaxErrorBody;
    spec.on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(std::move(r->authorization));
    };
    impl_->start(std::move(spec));
}

void UpstreamRegistry::authorization_refused(std::string_view scope,
                                             std::string_view authorization) {
    constexpr std::string_view kBearer = "Bearer ";
    if (impl_->scheme != Impl::Scheme::kBearer ||
        authorization.substr(0, kBearer.size()) != kBearer)
        return;
    impl_->tokens.invalidate(impl_->token_key(std::string(scope)),
                             authorization.substr(kBearer.size()));
}

void UpstreamRegistry::get_catalog(std::string_view query, Done<UpstreamListing> done) {
    std::string url = impl_->base + "/v2/_catalog";
    if (!query.empty()) url += fmt::format("?{}", query);
    UpstreamCallSpec spec{"catalog", "GET", url};
    spec.scope = "registry:catalog:*";
    spec.cap = kMaxListingBytes;
    spec.on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(UpstreamListing{r->head.status, r->head.headers, std::move(r->body)});
    };
    impl_->start(std::move(spec));
}

}  // namespace drayage::registry
