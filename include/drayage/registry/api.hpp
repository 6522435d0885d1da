// Registry API (OCI distribution-spec) responses: the version header every /v2/ answer carries
// and the error answer of every registry handler (front, push, passthrough, auth).
//
// The HTTP server formats its own errors for what it refuses before any handler runs (400, 408,
// 413, 431 on /v2/ paths: http/errors.hpp); everything a handler answers goes through here.
#pragma once

#include <string_view>

#include "drayage/http/server.hpp"

namespace drayage::registry::api {

// Docker-Distribution-API-Version: registry/2.0, first in every /v2/ answer.
http::HeaderList headers();

// Answers `ex` with `status` and the Registry API error body
//   {"errors":[{"code":"<code>","message":"<message>"}]}
// (JSON-escaped) and finishes it. Headers: headers(), then `extra` (WWW-Authenticate, an
// upload's Location/Range, a 416's Content-Range), then Content-Type: application/json.
// A HEAD gets the status and headers() + `extra` with Content-Length 0 and no Content-Type: no
// body is described, none is sent.
void send_error(http::Exchange& ex, int status, std::string_view code, std::string_view message,
                http::HeaderList extra = {});

}  // namespace drayage::registry::api
