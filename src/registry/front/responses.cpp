#include "responses.hpp"

#include <string>
#include <utility>

#include "drayage/http/errors.hpp"

namespace drayage::registry::front {

using http::Exchange;
using http::HeaderList;

// 416 for a Range outside a blob of `size` bytes.
void send_range_not_satisfiable(Exchange& ex, std::uint64_t size) {
    send_error(ex, 416, "RANGE_INVALID", "range not satisfiable",
               {{"Content-Range", "bytes */" + std::to_string(size)}});
}

// The Content-Range of a 206 for `span` of a blob of `size` bytes.
std::string content_range(const ByteSpan& span, std::uint64_t size) {
    return "bytes " + std::to_string(span.first) + "-" + std::to_string(span.last) + "/" +
           std::to_string(size);
}

// An upstream/origin error as the client should see it.
void send_origin_error(Exchange& ex, const Error& e, std::string_view unknown_code) {
    if (e.code == "NOT_FOUND") {
        send_error(
            ex, 404, unknown_code,
            unknown_code == "BLOB_UNKNOWN" ? "blob unknown to registry" : "manifest unknown");
    } else if (e.code == "UNAUTHORIZED" || e.status == 401 || e.status == 403) {
        send_error(ex, e.status == 403 ? 403 : 401, e.status == 403 ? "DENIED" : "UNAUTHORIZED",
                   e.message);
    } else if (e.code == "TOOMANYREQUESTS") {
        send_error(ex, 429, "TOOMANYREQUESTS", e.message);
    } else if (e.code == "UPSTREAM_400") {
        // The upstream registry refused what the client asked for (a page size over its limit,
        // a name it does not accept): a retry would get the same answer, so it is not a 503.
        // (A 400 from S3 is not the client's doing: drayage built that request.)
        send_error(ex, 400, http::registry_code_for_status(400), e.message);
    } else {
        // Unreachable, timeouts, 5xx: a quick 503 lets docker and containerd move on.
        send_error(ex, 503, "UNAVAILABLE", "upstream unavailable: " + e.to_string());
    }
}

metrics::Counter& outcome_counter(std::string_view kind, std::string_view outcome) {
    return metrics::global().counter(
        "drayage_registry_responses_total",
        "Blob and manifest responses by kind and cache outcome.",
        {{"kind", std::string(kind)}, {"outcome", std::string(outcome)}});
}

void respond_json(Exchange& ex, int status, std::string body) {
    HeaderList h = api::headers();
    h.emplace_back("Content-Type", "application/json");
    ex.respond(status, std::move(h), std::move(body));
}

bool is_upstream_outage(const Error& e) {
    return e.code == "UNREACHABLE" || e.code == "TIMEOUT" || e.code == "INTERRUPTED" ||
           e.code == "TOOMANYREQUESTS" || e.status >= 500 || e.code.rfind("UPSTREAM_5", 0) == 0;
}

}  // namespace drayage::registry::front
