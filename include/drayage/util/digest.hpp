// SHA-256, HMAC and lower-case hex: the digests drayage computes over blobs it stores and serves,
// over S3 requests it signs, and over the tokens and credentials of its auth.
//
// OpenSSL 3 fails inside these only when it cannot allocate. The one-shot functions then abort
// with a message (a fatal assert: a wrong signature or digest would be worse than no process);
// Sha256::start() reports it instead, for callers that answer the request with a 500 and carry on.
#pragma once

#include <openssl/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace drayage::digest {

// Lower-case hex of arbitrary bytes, two characters per byte.
std::string hex_encode(std::string_view bytes);
// Lower-case hex of SHA-256(data): 64 characters.
std::string sha256_hex(std::string_view data);
// Raw 32-byte HMAC-SHA256(key, data) (RFC 2104; keys longer than 64 bytes are hashed first).
std::string hmac_sha256(std::string_view key, std::string_view data);
// Raw 20-byte HMAC-SHA1(key, data): S3 SigV2 only.
std::string hmac_sha1(std::string_view key, std::string_view data);

// SHA-256 over bytes that arrive in pieces (a blob streaming in or out).
class Sha256 {
public:
    // A context ready for updates; nullopt when OpenSSL cannot allocate one.
    static std::optional<Sha256> start();

    void update(std::string_view bytes);
    // Lower-case hex of everything passed to update(). Ends the hash: call it once.
    std::string finish_hex();

private:
    struct Free {
        void operator()(EVP_MD_CTX* ctx) const;
    };
    explicit Sha256(EVP_MD_CTX* ctx) : ctx_(ctx) {}

    std::unique_ptr<EVP_MD_CTX, Free> ctx_;
};

}  // namespace drayage::digest
