// The secret material an S3 request is signed with.
//
// Where it comes from (config file, DRAYAGE_STORAGE_S3_* or AWS_* variables) is the config
// module's business; the signers only read it. Temporary (STS) credentials carry a session token
// that travels with every request as `x-amz-security-token`.
#pragma once

#include <string>

namespace drayage::s3 {

struct Credentials {
    std::string access_key;     // "AKIA..." or, for Swift tempauth, "account:user"
    std::string secret_key;     // never logged
    std::string session_token;  // empty for long-term keys

    // Anonymous access: requests go out unsigned (public buckets only).
    bool anonymous() const { return access_key.empty() && secret_key.empty(); }
};

}  // namespace drayage::s3
