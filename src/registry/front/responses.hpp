// The Registry API answers of the front (src/registry/front/responses.cpp): the API version
// header, error bodies, the 416 of an unsatisfiable Range, how an origin's error reads to the
// client, and the per-outcome response counters. Every part of the front answers errors through
// these, so a client sees one error shape whichever part refused it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "drayage/http/server.hpp"
#include "drayage/registry/api.hpp"
#include "drayage/registry/front.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/result.hpp"

namespace drayage::registry::front {

// The registry's error answer (drayage/registry/api.hpp), as the front's parts call it.
using api::send_error;

// 416 for a Range outside a blob of `size` bytes.
void send_range_not_satisfiable(http::Exchange& ex, std::uint64_t size);

// The Content-Range of a 206 for `span` of a blob of `size` bytes.
std::string content_range(const ByteSpan& span, std::uint64_t size);

// An upstream/origin error as the client should see it: NOT_FOUND is a 404 with
// `unknown_code` (BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_UNKNOWN), refusals 401/403, rate limits
// 429, a refused request 400, and anything else (unreachable, timeouts, 5xx) a quick 503.
void send_origin_error(http::Exchange& ex, const Error& e, std::string_view unknown_code);

// 200 (or `status`) with a JSON body and the API header.
void respond_json(http::Exchange& ex, int status, std::string body);

// Whether an upstream error means the upstream is down or overloaded (as opposed to an answer
// about the object): what lets a stale tag be served, and what makes an unproven blob a 503.
bool is_upstream_outage(const Error& e);

// drayage_registry_responses_total{kind, outcome}.
metrics::Counter& outcome_counter(std::string_view kind, std::string_view outcome);

}  // namespace drayage::registry::front
