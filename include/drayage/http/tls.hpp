// TLS termination for the HTTP server: one OpenSSL server context built from PEM files, swapped
// atomically (on the loop thread) when the files are reloaded.
//
// Each accepted connection takes an SSL from the context current at accept time. SSL_CTX is
// reference-counted and every SSL holds a reference, so reload() only affects new connections:
// connections in flight finish with the certificate they started with. A reload whose files do
// not load (missing, unreadable, key not matching the certificate) keeps the old context.
//
// Policy: TLS 1.2 and 1.3 only; the OpenSSL default cipher lists of those versions; no session
// tickets across reloads are promised. SSL_OP_IGNORE_UNEXPECTED_EOF is set: a client closing
// without close_notify (curl, Go, most HTTP clients after a complete response) is an EOF, not an
// error (OpenSSL 3 reports SSL_R_UNEXPECTED_EOF_WHILE_READING otherwise).
#pragma once

#include <memory>
#include <string>

#include "drayage/util/result.hpp"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace drayage::http {

class TlsContext {
public:
    // Loads the certificate chain and private key (PEM). Errors: "http.tls" with the file and
    // OpenSSL's reason.
    static Result<std::unique_ptr<TlsContext>> load(std::string certificate_path,
                                                    std::string key_path);
    ~TlsContext();
    TlsContext(const TlsContext&) = delete;
    TlsContext& operator=(const TlsContext&) = delete;

    // Re-reads the same files into a new context for new connections; on error the current one
    // stays and the error says why.
    Status reload();

    // A server-side SSL for one new connection (null on allocation failure).
    SSL* new_session() const;

    // How many times a reload replaced the context (for logs and tests).
    unsigned generation() const { return generation_; }

private:
    TlsContext(std::string certificate_path, std::string key_path);
    static Result<SSL_CTX*> build(const std::string& certificate_path, const std::string& key_path);

    std::string certificate_path_;
    std::string key_path_;
    SSL_CTX* ctx_ = nullptr;
    unsigned generation_ = 0;
};

}  // namespace drayage::http
