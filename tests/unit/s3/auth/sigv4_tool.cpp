// Signs requests read as JSON lines on stdin and prints one JSON object per line on stdout, so
// tests/integration/test_sigv4_botocore.py can compare drayage's signers with botocore's.
//
// Input fields: mode ("v4" | "presign" | "v2"), method, bucket, key (the path is built as
// "/" + bucket + "/" + uri_encode_path(key), as the S3 client does), query ([[key, value, bare]]),
// headers ([[name, value]]), payload_hash (v4; default: hash of the empty body), access_key,
// secret_key, token, region, service, amz_date (v4), expires (presign, seconds), date (v2).
// Output: {path, query_string (encode_query), authorization, canonical_request, string_to_sign,
// signature, headers_to_add, presigned_query} or {error}.
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "drayage/s3/sigv2.hpp"
#include "drayage/s3/sigv4.hpp"

using namespace drayage::s3;
using nlohmann::json;

namespace {

json handle(const json& in) {
    const std::string mode = in.at("mode").get<std::string>();
    const std::string method = in.at("method").get<std::string>();
    // Appended piecewise: g++ 12 -O3 reports a false -Wrestrict on "/" + std::string&&.
    std::string path = "/";
    path.append(in.at("bucket").get<std::string>()).append("/");
    path.append(uri_encode_path(in.at("key").get<std::string>()));
    std::vector<QueryParam> query;
    for (const auto& q : in.value("query", json::array())) {
        query.push_back({q.at(0).get<std::string>(), q.at(1).get<std::string>(),
                         q.size() > 2 && q.at(2).get<bool>()});
    }
    std::vector<HeaderField> headers;
    for (const auto& h : in.value("headers", json::array())) {
        headers.emplace_back(h.at(0).get<std::string>(), h.at(1).get<std::string>());
    }
    const Credentials creds{in.at("access_key").get<std::string>(),
                            in.at("secret_key").get<std::string>(), in.value("token", "")};

    json out;
    out["path"] = path;
    out["query_string"] = encode_query(query);
    auto fill_headers = [&out](const std::vector<HeaderField>& hs) {
        out["headers_to_add"] = json::array();
        for (const auto& [n, v] : hs)
            out["headers_to_add"].push_back({n, v});
    };
    if (mode == "v2") {
        const std::string date = in.value("date", "");
        auto s = sign_v2({method, path, query, headers, date}, creds);
        if (!s) return json{{"error", s.error().to_string()}};
        out["string_to_sign"] = s->string_to_sign;
        out["signature"] = s->signature;
        out["authorization"] = s->authorization;
        fill_headers(s->headers_to_add);
        return out;
    }
    const std::string payload_hash = in.value("payload_hash", std::string(kEmptyPayloadSha256));
    const std::string region = in.at("region").get<std::string>();
    const std::string service = in.value("service", "s3");
    const std::string date = in.at("amz_date").get<std::string>();
    const SigV4Request req{method, path, query, headers, payload_hash};
    const SigV4Scope scope{region, service, date};
    auto s = mode == "presign"
                 ? presign_v4(req, creds, scope, std::chrono::seconds(in.at("expires").get<int>()))
                 : sign_v4(req, creds, scope);
    if (!s) return json{{"error", s.error().to_string()}};
    out["canonical_request"] = s->canonical_request;
    out["string_to_sign"] = s->string_to_sign;
    out["signature"] = s->signature;
    out["authorization"] = s->authorization;
    out["presigned_query"] = s->presigned_query;
    fill_headers(s->headers_to_add);
    return out;
}

}  // namespace

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) continue;
        json out;
        try {
            out = handle(json::parse(line));
        } catch (const json::exception& e) {
            out = json{{"error", std::string("bad input: ") + e.what()}};
        }
        std::cout << out.dump() << '\n';
    }
    std::cout.flush();
    return 0;
}
