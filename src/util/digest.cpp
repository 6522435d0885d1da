// OpenSSL 3 digests. The contract is in include/drayage/util/digest.hpp.
//
// Why not the one-shot HMAC()/EVP_Digest(..., EVP_sha256(), ...): in OpenSSL 3 each such call
// looks the algorithm up in the provider store again, which made one SigV4 signature (six
// digests, five HMACs) cost 25-40 us. The algorithms are fetched once here and HMAC is built
// from the fetched digest (RFC 2104: H((K ^ opad) || H((K ^ ipad) || m))), which brings it down
// severalfold. Fetched EVP_MD objects are immutable and shared by all threads.
#include "drayage/util/digest.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

namespace drayage::digest {
namespace {

[[noreturn]] void openssl_failed(const char* what) {
    std::fprintf(stderr, "drayage: OpenSSL %s failed\n", what);
    std::abort();
}

const EVP_MD* fetch(const char* name) {
    EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
    if (md == nullptr) openssl_failed(name);
    return md;  // kept for the life of the process
}

const EVP_MD* sha256_md() {
    static const EVP_MD* md = fetch("SHA256");
    return md;
}

const EVP_MD* sha1_md() {
    static const EVP_MD* md = fetch("SHA1");
    return md;
}

struct MdCtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

MdCtx new_ctx() {
    MdCtx ctx(EVP_MD_CTX_new());
    if (!ctx) openssl_failed("EVP_MD_CTX_new");
    return ctx;
}

std::string_view as_chars(const unsigned char* bytes, unsigned int len) {
    return {reinterpret_cast<const char*>(bytes), len};
}

// Digest of the concatenation of `a` and `b`, reusing `ctx`.
std::string digest2(EVP_MD_CTX* ctx, const EVP_MD* md, std::string_view a, std::string_view b) {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestInit_ex(ctx, md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx, a.data(), a.size()) != 1 ||
        EVP_DigestUpdate(ctx, b.data(), b.size()) != 1 || EVP_DigestFinal_ex(ctx, out, &len) != 1) {
        openssl_failed("EVP_Digest");
    }
    return std::string(as_chars(out, len));
}

std::string hmac(const EVP_MD* md, std::string_view key, std::string_view data) {
    const auto block = static_cast<std::size_t>(EVP_MD_get_block_size(md));
    MdCtx ctx = new_ctx();
    std::string hashed_key;
    if (key.size() > block) {
        hashed_key = digest2(ctx.get(), md, key, {});
        key = hashed_key;
    }
    std::string ipad(block, '\x36');
    std::string opad(block, '\x5c');
    for (std::size_t i = 0; i < key.size(); ++i) {
        ipad[i] = static_cast<char>(ipad[i] ^ key[i]);
        opad[i] = static_cast<char>(opad[i] ^ key[i]);
    }
    return digest2(ctx.get(), md, opad, digest2(ctx.get(), md, ipad, data));
}

}  // namespace

std::string hex_encode(std::string_view bytes) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xf]);
    }
    return out;
}

std::string sha256_hex(std::string_view data) {
    MdCtx ctx = new_ctx();
    return hex_encode(digest2(ctx.get(), sha256_md(), data, {}));
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
    return hmac(sha256_md(), key, data);
}

std::string hmac_sha1(std::string_view key, std::string_view data) {
    return hmac(sha1_md(), key, data);
}

void Sha256::Free::operator()(EVP_MD_CTX* ctx) const {
    EVP_MD_CTX_free(ctx);
}

std::optional<Sha256> Sha256::start() {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx == nullptr) return std::nullopt;
    Sha256 sha(ctx);
    if (EVP_DigestInit_ex(ctx, sha256_md(), nullptr) != 1) return std::nullopt;
    return sha;
}

void Sha256::update(std::string_view bytes) {
    EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size());
}

std::string Sha256::finish_hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &len);
    return hex_encode(as_chars(md, len));
}

}  // namespace drayage::digest
