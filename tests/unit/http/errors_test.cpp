// Registry API error bodies and reason phrases.
#include "drayage/http/errors.hpp"

#include <catch2/catch.hpp>

using namespace drayage::http;

TEST_CASE("registry error body", "[http][errors]") {
    CHECK(registry_error_body("BLOB_UNKNOWN", "blob unknown to registry") ==
          R"({"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]})");
    CHECK(
        registry_error_body("DIGEST_INVALID", "bad \"digest\"", R"({"digest":"sha256:x"})") ==
        R"({"errors":[{"code":"DIGEST_INVALID","message":"bad \"digest\"","detail":{"digest":"sha256:x"}}]})");
}

TEST_CASE("codes and reason phrases for the server's own errors", "[http][errors]") {
    CHECK(registry_code_for_status(413) == "SIZE_INVALID");
    CHECK(registry_code_for_status(400) == "UNSUPPORTED");
    CHECK(registry_code_for_status(503) == "UNAVAILABLE");
    CHECK(registry_code_for_status(500) == "UNKNOWN");
    CHECK(reason_phrase(431) == "Request Header Fields Too Large");
    CHECK(reason_phrase(414) == "URI Too Long");
    CHECK(reason_phrase(799) == "Unknown");
}
