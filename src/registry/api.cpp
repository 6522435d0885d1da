// Registry API responses. The contract is in include/drayage/registry/api.hpp.
#include "drayage/registry/api.hpp"

#include <utility>

#include "drayage/http/errors.hpp"

namespace drayage::registry::api {

http::HeaderList headers() {
    return {{"Docker-Distribution-API-Version", "registry/2.0"}};
}

void send_error(http::Exchange& ex, int status, std::string_view code, std::string_view message,
                http::HeaderList extra) {
    http::HeaderList h = headers();
    for (auto& kv : extra)
        h.push_back(std::move(kv));
    if (ex.request().method == "HEAD") {
        ex.send_head(status, std::move(h), 0);
        ex.finish();
        return;
    }
    h.emplace_back("Content-Type", "application/json");
    ex.respond(status, std::move(h), http::registry_error_body(code, message));
}

}  // namespace drayage::registry::api
