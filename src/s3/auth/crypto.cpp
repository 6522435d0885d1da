// OpenSSL 3 digests for the signers.
//
// Why not the one-shot HMAC()/EVP_Digest(..., EVP_sha256(), ...): in OpenSSL 3 each such call
// looks the algorithm up in the provider store again, which made one SigV4 signature (six
// digests, five HMACs) cost 25-40 us. The algorithms are fetched once here and HMAC is built
// from the fetched digest (RFC 2104: H((K ^ opad) || H((K ^ ipad) || m))), which brings it down
// severalfold. Fetched EVP_MD objects are immutable and shared by all threads.
//
// The calls fail only on allocation failure inside OpenSSL, which we treat as fatal
// (RELEASE_ASSERT kind): a signer that silently produced a wrong signature would be worse.
#include <openssl/evp.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "crypto_internal.hpp"
#include "drayage/s3/sigv4.hpp"

namespace drayage::s3 {
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

// Digest of the concatenation of `a` and `b`, reusing `ctx`.
std::string digest2(EVP_MD_CTX* ctx, const EVP_MD* md, std::string_view a, std::string_view b) {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestInit_ex(ctx, md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx, a.data(), a.size()) != 1 ||
        EVP_DigestUpdate(ctx, b.data(), b.size()) != 1 || EVP_DigestFinal_ex(ctx, out, &len) != 1) {
        openssl_failed("EVP_Digest");
    }
    return std::string(reinterpret_cast<const char*>(out), len);
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

std::string hex_encode(std::string_view raw) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(raw.size() * 2);
    for (unsigned char c : raw) {
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

std::string base64_encode(std::string_view raw) {
    std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(raw.data()),
                                  static_cast<int>(raw.size()));
    if (n < 0) openssl_failed("EVP_EncodeBlock");
    out.resize(static_cast<std::size_t>(n));
    return out;
}

}  // namespace drayage::s3
