#include "drayage/http/errors.hpp"

#include "drayage/http/server.hpp"
#include "drayage/util/log.hpp"

namespace drayage::http {

std::string_view reason_phrase(int status) {
    switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 206: return "Partial Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 303: return "See Other";
        case 304: return "Not Modified";
        case 307: return "Temporary Redirect";
        case 308: return "Permanent Redirect";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 411: return "Length Required";
        case 412: return "Precondition Failed";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 416: return "Range Not Satisfiable";
        case 417: return "Expectation Failed";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
    }
}

std::string registry_error_body(std::string_view code, std::string_view message,
                                std::string_view detail_json) {
    std::string body = R"({"errors":[{"code":")";
    body += log::json_escape(code);
    body += R"(","message":")";
    body += log::json_escape(message);
    body += '"';
    if (!detail_json.empty()) {
        body += R"(,"detail":)";
        body += detail_json;
    }
    body += "}]}";
    return body;
}

void respond_registry_error(Exchange& exchange, int status, std::string_view code,
                            std::string_view message, std::string_view detail_json) {
    if (exchange.head_sent()) return;
    exchange.respond(status, {{"Content-Type", "application/json"}},
                     registry_error_body(code, message, detail_json));
}

std::string_view registry_code_for_status(int status) {
    switch (status) {
        case 401: return "UNAUTHORIZED";
        case 413: return "SIZE_INVALID";
        case 429: return "TOOMANYREQUESTS";
        case 503: return "UNAVAILABLE";
        default: return status < 500 ? "UNSUPPORTED" : "UNKNOWN";
    }
}

}  // namespace drayage::http
