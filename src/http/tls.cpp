#include "drayage/http/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace drayage::http {
namespace {

// The most recent OpenSSL error, as text, and the queue cleared.
std::string openssl_reason() {
    unsigned long e = ERR_get_error();
    unsigned long last = e;
    while (e != 0) {
        last = e;
        e = ERR_get_error();
    }
    if (last == 0) return "unknown OpenSSL error";
    char buf[256];
    ERR_error_string_n(last, buf, sizeof buf);
    return buf;
}

}  // namespace

TlsContext::TlsContext(std::string certificate_path, std::string key_path)
    : certificate_path_(std::move(certificate_path)), key_path_(std::move(key_path)) {}

TlsContext::~TlsContext() {
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

Result<SSL_CTX*> TlsContext::build(const std::string& certificate_path,
                                   const std::string& key_path) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr)
        return make_error("http.tls", "cannot create a TLS context: " + openssl_reason());
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> guard(ctx, SSL_CTX_free);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    // No SSL_MODE_ENABLE_PARTIAL_WRITE: with libevent 2.1's bufferevent_openssl it corrupted
    // large responses here (a 96 MiB blob arrived with the wrong sha256).
    if (SSL_CTX_use_certificate_chain_file(ctx, certificate_path.c_str()) != 1)
        return make_error("http.tls",
                          "http.tls.certificate " + certificate_path +
                              ": cannot load the PEM certificate chain: " + openssl_reason());
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1)
        return make_error("http.tls", "http.tls.key " + key_path +
                                          ": cannot load the PEM private key: " + openssl_reason());
    if (SSL_CTX_check_private_key(ctx) != 1)
        return make_error("http.tls", "http.tls.key " + key_path +
                                          " does not match http.tls.certificate " +
                                          certificate_path + ": " + openssl_reason());
    return guard.release();
}

Result<std::unique_ptr<TlsContext>> TlsContext::load(std::string certificate_path,
                                                     std::string key_path) {
    std::unique_ptr<TlsContext> t(new TlsContext(std::move(certificate_path), std::move(key_path)));
    auto ctx = build(t->certificate_path_, t->key_path_);
    if (!ctx) return ctx.error();
    t->ctx_ = *ctx;
    return t;
}

Status TlsContext::reload() {
    auto ctx = build(certificate_path_, key_path_);
    if (!ctx) return ctx.error();
    // Connections already running hold their own reference to the old context.
    SSL_CTX_free(ctx_);
    ctx_ = *ctx;
    ++generation_;
    return {};
}

SSL* TlsContext::new_session() const {
    return SSL_new(ctx_);
}

}  // namespace drayage::http
