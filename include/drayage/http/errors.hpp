// Error responses the HTTP server sends itself: status reason phrases, and the Registry API
// error body it answers /v2/ requests with when it refuses them before any handler runs (bad
// framing 400, 408, 413, 431, 404 without a handler, 500). It lives here, not on the registry
// side, because the server must not depend on the registry; registry handlers answer through
// registry/api.hpp, which formats its body with registry_error_body().
#pragma once

#include <string>
#include <string_view>

namespace drayage::http {

class Exchange;

// The standard reason phrase of `status` ("Not Found"), or "Unknown" for codes drayage never
// sends.
std::string_view reason_phrase(int status);

// The Registry API (OCI distribution-spec) error body:
//   {"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":...}]}
// `code` and `message` are JSON-escaped here; `detail_json` is inserted verbatim and must be
// valid JSON (an object, string, ...); empty leaves "detail" out.
std::string registry_error_body(std::string_view code, std::string_view message,
                                std::string_view detail_json = {});

// Answers `exchange` with a Registry API error (Content-Type: application/json) and finishes it.
// Does nothing if a response head was already sent.
void respond_registry_error(Exchange& exchange, int status, std::string_view code,
                            std::string_view message, std::string_view detail_json = {});

// The error code drayage uses for errors the HTTP layer itself detects on /v2/ paths:
// 413 -> SIZE_INVALID, 401 -> UNAUTHORIZED, 429 -> TOOMANYREQUESTS, 503 -> UNAVAILABLE, other
// 4xx -> UNSUPPORTED, other 5xx -> UNKNOWN.
std::string_view registry_code_for_status(int status);

}  // namespace drayage::http
