// Base64 for the SigV2 signer (the digests are in util/digest.hpp).
//
// EVP_EncodeBlock fails only on allocation failure inside OpenSSL, which we treat as fatal
// (RELEASE_ASSERT kind): a signer that silently produced a wrong signature would be worse.
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "crypto_internal.hpp"

namespace drayage::s3 {

std::string base64_encode(std::string_view raw) {
    std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(raw.data()),
                                  static_cast<int>(raw.size()));
    if (n < 0) {
        std::fprintf(stderr, "drayage: OpenSSL EVP_EncodeBlock failed\n");
        std::abort();
    }
    out.resize(static_cast<std::size_t>(n));
    return out;
}

}  // namespace drayage::s3
