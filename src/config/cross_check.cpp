// Validation across keys, once the file and the environment are applied: pairs that go
// together (TLS certificate and key, access and secret key), groups the rules name, and
// notes for keys that are accepted but have no effect.
#include "drayage/config/size.hpp"
#include "loader.hpp"

namespace drayage::config::detail {

Status Loader::cross_check() {
    const TlsConfig& tls = config_.http.tls;
    if (tls.certificate.empty() != tls.key.empty()) {
        const bool has_cert = !tls.certificate.empty();
        const char* set_path = has_cert ? "http.tls.certificate" : "http.tls.key";
        const char* missing = has_cert ? "http.tls.key" : "http.tls.certificate";
        return fail(origin_or_section(set_path), set_path,
                    std::string("set without ") + missing +
                        "; expected both (PEM files) for TLS, or neither for plain HTTP");
    }
    if (config_.auth) {
        const AuthConfig& a = *config_.auth;
        for (const AuthRule& rule : a.rules) {
            for (const auto* list : {&rule.pull, &rule.push}) {
                for (const std::string& who : *list) {
                    if (who.starts_with("group:") && !a.groups.contains(who.substr(6))) {
                        return fail(origin_or_section("auth.rules"), "auth.rules",
                                    "names " + quoted(who) + ", which auth.groups does not define");
                    }
                }
            }
        }
    }
    if (config_.storage.s3) {
        const S3Config& s3 = *config_.storage.s3;
        if (s3.bucket.empty()) {
            return fail(origin_or_section("storage.s3.bucket"), "storage.s3.bucket",
                        "required when storage.s3 is present; expected the bucket name the "
                        "registry uses");
        }
        if (s3.accesskey.empty() != s3.secretkey.empty()) {
            const bool has_access = !s3.accesskey.empty();
            const char* set_path = has_access ? "storage.s3.accesskey" : "storage.s3.secretkey";
            const char* missing = has_access ? "storage.s3.secretkey" : "storage.s3.accesskey";
            return fail(origin_or_section(set_path), set_path,
                        std::string("set without ") + missing +
                            "; expected both, or neither to use AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY");
        }
        if (!s3.v4auth && s3.regionendpoint.empty()) {
            return fail(origin_or_section("storage.s3.v4auth"), "storage.s3.v4auth",
                        "false needs storage.s3.regionendpoint: Amazon S3 accepts only "
                        "Signature V4");
        }
        if (s3.retry.max_delay < s3.retry.base_delay) {
            return fail(origin_or_section("storage.s3.retry.max_delay"),
                        "storage.s3.retry.max_delay",
                        format_duration(s3.retry.max_delay) + " is below retry.base_delay (" +
                            format_duration(s3.retry.base_delay) + "); expected at least that");
        }
        if (!s3.keyid.empty() && !s3.encrypt) {
            // Distribution ignores keyid without encrypt; an error would break pasted
            // registry blocks, silence would hide a likely mistake.
            config_.notes.push_back(where(origin_or_section("storage.s3.keyid")) +
                                    ": storage.s3.keyid: ignored because storage.s3.encrypt "
                                    "is false (objects are stored unencrypted)");
        }
    }
    return {};
}

}  // namespace drayage::config::detail
