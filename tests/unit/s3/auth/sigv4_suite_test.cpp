// Every case of the AWS SigV4 test suite (tests/data/aws-sigv4-suite/v4, from aws-c-auth),
// signed both ways (Authorization header and presigned query): canonical request, string to
// sign and signature must match byte for byte, and so must the Authorization header and the
// set of query parameters of the signed request.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "drayage/s3/sigv4.hpp"
#include "drayage/util/digest.hpp"

using namespace drayage::s3;
namespace fs = std::filesystem;

namespace {

const fs::path kSuite = DRAYAGE_SIGV4_SUITE_DIR;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE(in.good());
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        std::size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) nl = text.size();
        out.push_back(text.substr(pos, nl - pos));
        pos = nl + 1;
    }
    return out;
}

// "a=b&c" -> decoded params ("c" is bare).
std::vector<QueryParam> parse_query(const std::string& q) {
    std::vector<QueryParam> out;
    if (q.empty()) return out;
    std::size_t pos = 0;
    while (pos <= q.size()) {
        std::size_t amp = q.find('&', pos);
        if (amp == std::string::npos) amp = q.size();
        const std::string pair = q.substr(pos, amp - pos);
        const std::size_t eq = pair.find('=');
        QueryParam p;
        auto key = uri_decode(pair.substr(0, eq));
        REQUIRE(key.ok());
        p.key = *key;
        if (eq == std::string::npos) {
            p.bare = true;
        } else {
            auto value = uri_decode(pair.substr(eq + 1));
            REQUIRE(value.ok());
            p.value = *value;
        }
        out.push_back(std::move(p));
        pos = amp + 1;
    }
    return out;
}

// The suite's request.txt: request line (the target may hold raw spaces), headers with obs-fold
// continuation lines, blank line, body.
struct RawRequest {
    std::string method, path, query, body;
    std::vector<HeaderField> headers;
};

RawRequest parse_request(const std::string& text) {
    RawRequest r;
    const auto lines = lines_of(text);
    REQUIRE(!lines.empty());
    const std::string& rl = lines[0];
    const std::size_t sp1 = rl.find(' ');
    const std::size_t sp2 = rl.rfind(' ');
    REQUIRE(sp1 != sp2);
    r.method = rl.substr(0, sp1);
    const std::string target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::size_t qm = target.find('?');
    r.path = target.substr(0, qm);
    if (qm != std::string::npos) r.query = target.substr(qm + 1);
    std::size_t i = 1;
    for (; i < lines.size() && !lines[i].empty(); ++i) {
        const std::string& l = lines[i];
        if (l[0] == ' ' || l[0] == '\t') {
            REQUIRE(!r.headers.empty());
            r.headers.back().second += " " + l;  // signer collapses the whitespace run
            continue;
        }
        const std::size_t colon = l.find(':');
        REQUIRE(colon != std::string::npos);
        r.headers.emplace_back(l.substr(0, colon), l.substr(colon + 1));
    }
    for (++i; i < lines.size(); ++i) {
        if (!r.body.empty()) r.body += "\n";
        r.body += lines[i];
    }
    return r;
}

std::string first_line(const std::string& s) {
    return s.substr(0, s.find('\n'));
}

// Decoded (key, value) pairs of a query string, sorted: the order of parameters and the choice
// of which bytes to escape in the wire form do not matter to a server.
std::vector<std::pair<std::string, std::string>> decoded_sorted(const std::string& q) {
    std::vector<std::pair<std::string, std::string>> out;
    for (auto& p : parse_query(q))
        out.emplace_back(p.key, p.value);
    std::sort(out.begin(), out.end());
    return out;
}

// The query of "METHOD <target> HTTP/1.1".
std::string query_of_request_line(const std::string& line) {
    const std::size_t qm = line.find('?');
    const std::size_t sp = line.rfind(' ');
    REQUIRE(qm != std::string::npos);
    return line.substr(qm + 1, sp - qm - 1);
}

}  // namespace

TEST_CASE("aws-c-auth SigV4 suite: every case, header and query signing", "[sigv4][suite]") {
    REQUIRE(fs::is_directory(kSuite));
    std::vector<fs::path> cases;
    for (const auto& e : fs::directory_iterator(kSuite)) {
        if (e.is_directory()) cases.push_back(e.path());
    }
    std::sort(cases.begin(), cases.end());
    REQUIRE(cases.size() >= 38);

    for (const fs::path& dir : cases) {
        DYNAMIC_SECTION(dir.filename().string()) {
            const auto ctx = nlohmann::json::parse(slurp(dir / "context.json"));
            const RawRequest raw = parse_request(slurp(dir / "request.txt"));
            const auto query = parse_query(raw.query);

            Credentials creds;
            creds.access_key = ctx["credentials"]["access_key_id"].get<std::string>();
            creds.secret_key = ctx["credentials"]["secret_access_key"].get<std::string>();
            if (ctx["credentials"].contains("token")) {
                creds.session_token = ctx["credentials"]["token"].get<std::string>();
            }
            std::string ts = ctx["timestamp"].get<std::string>();  // 2015-08-30T12:36:00Z
            ts.erase(
                std::remove_if(ts.begin(), ts.end(), [](char c) { return c == '-' || c == ':'; }),
                ts.end());
            const std::string region = ctx["region"].get<std::string>();
            const std::string service = ctx["service"].get<std::string>();
            const SigV4Scope scope{region, service, ts};

            SigV4Options opts;
            opts.normalize_path = ctx["normalize"].get<bool>();
            opts.double_encode_path = service != "s3";
            opts.add_content_sha256_header = ctx["sign_body"].get<bool>();
            opts.sign_session_token = !ctx.value("omit_session_token", false);

            const std::string payload_hash = drayage::digest::sha256_hex(raw.body);
            const SigV4Request req{raw.method, raw.path, query, raw.headers, payload_hash};

            auto h = sign_v4(req, creds, scope, opts);
            REQUIRE(h.ok());
            CHECK(h->canonical_request == slurp(dir / "header-canonical-request.txt"));
            CHECK(h->string_to_sign == slurp(dir / "header-string-to-sign.txt"));
            CHECK(h->signature == slurp(dir / "header-signature.txt"));
            const std::string signed_req = slurp(dir / "header-signed-request.txt");
            const std::size_t auth_at = signed_req.find("\nAuthorization:");
            REQUIRE(auth_at != std::string::npos);
            CHECK(first_line(signed_req.substr(auth_at + 15)) == h->authorization);

            const auto expires = std::chrono::seconds(ctx["expiration_in_seconds"].get<int>());
            auto q = presign_v4(req, creds, scope, expires, opts);
            REQUIRE(q.ok());
            CHECK(q->canonical_request == slurp(dir / "query-canonical-request.txt"));
            CHECK(q->string_to_sign == slurp(dir / "query-string-to-sign.txt"));
            CHECK(q->signature == slurp(dir / "query-signature.txt"));
            CHECK(decoded_sorted(q->presigned_query) ==
                  decoded_sorted(
                      query_of_request_line(first_line(slurp(dir / "query-signed-request.txt")))));
        }
    }
}
