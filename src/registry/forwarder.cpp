// Forwarding to the registry behind drayage. Contract in include/drayage/registry/forwarder.hpp.
#include "drayage/registry/forwarder.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <string>
#include <utility>

#include "drayage/registry/api.hpp"
#include "drayage/registry/routes.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using http::Exchange;

// Client body bytes buffered for curl before the client is paused.
constexpr std::size_t kBodyHighWatermark = 1024 * 1024;
constexpr std::size_t kBodyLowWatermark = 256 * 1024;
// A held answer's body (ForwardGate): what is buffered before reading pauses.
constexpr std::size_t kHeldBodyLimit = 64 * 1024;

std::string connection_tokens(const http::HeaderList& headers) {
    std::string out;
    for (const auto& [k, v] : headers) {
        if (!http::iequals(k, "Connection")) continue;
        if (!out.empty()) out += ",";
        out += v;
    }
    return out;
}

// One forwarded request. Owned by the HttpCall's callbacks and the exchange's callbacks; both
// are cleared when it ends, so it goes away with them.
struct Forward : std::enable_shared_from_this<Forward> {
    std::shared_ptr<Exchange> ex;
    std::shared_ptr<net::HttpCall> call;
    std::string body;            // client bytes not yet taken by curl
    std::size_t body_taken = 0;  // prefix of `body` already sent
    bool body_ended = false;
    bool body_paused = false;    // the client's body (our side)
    bool upload_paused = false;  // curl's read callback returned kBodyPause
    bool download_paused = false;
    bool done = false;
    // With drayage's own upstream credentials: the token scope and what was sent.
    std::string scope;
    std::string authorization;
    // The registry's answer, held while the gate decides (ForwardGate).
    ForwardGate gate;
    bool head_held = false;
    int held_status = 0;
    http::HeaderList held_headers;
    std::optional<std::uint64_t> held_length;
    std::string held_body;
    bool held_end = false;  // the whole answer arrived while held

    std::size_t pending() const { return body.size() - body_taken; }

    std::size_t source(char* buf, std::size_t cap) {
        if (pending() == 0) {
            if (body_ended) return 0;
            upload_paused = true;
            return net::kBodyPause;
        }
        std::size_t n = std::min(cap, pending());
        std::copy_n(body.data() + body_taken, n, buf);
        body_taken += n;
        if (body_taken == body.size()) {
            body.clear();
            body_taken = 0;
        }
        if (body_paused && pending() <= kBodyLowWatermark && !done) {
            body_paused = false;
            ex->resume_body();
        }
        return n;
    }

    void on_client_data(std::string_view data) {
        if (done) return;
        body.append(data);
        if (upload_paused && call) {
            upload_paused = false;
            call->resume_upload();
        }
        if (pending() > kBodyHighWatermark && !body_paused) {
            body_paused = true;
            ex->pause_body();
        }
    }

    void on_client_end() {
        body_ended = true;
        if (upload_paused && call) {
            upload_paused = false;
            call->resume_upload();
        }
    }

    void stop() {
        if (done) return;
        done = true;
        ex->on_writable({});
        ex->on_closed({});
        if (call) {
            call->cancel();
            call.reset();
        }
    }
};

}  // namespace

bool is_hop_by_hop(std::string_view name, std::string_view tokens) {
    static constexpr std::string_view kFixed[] = {"Connection",
                                                  "Keep-Alive",
                                                  "Proxy-Connection",
                                                  "Proxy-Authenticate",
                                                  "Proxy-Authorization",
                                                  "TE",
                                                  "Trailer",
                                                  "Transfer-Encoding",
                                                  "Upgrade",
                                                  "Expect",
                                                  "Host",
                                                  "Content-Length"};
    for (auto f : kFixed) {
        if (http::iequals(name, f)) return true;
    }
    while (!tokens.empty()) {
        auto comma = tokens.find(',');
        std::string_view t = text::trim_ows(tokens.substr(0, comma));
        if (!t.empty() && http::iequals(name, t)) return true;
        if (comma == std::string_view::npos) break;
        tokens.remove_prefix(comma + 1);
    }
    return false;
}

// The token scope drayage's credentials are asked for when it forwards `req`: the repository
// the path names, with the actions Distribution checks for the method. Empty for paths that
// name none (they go without credentials).
std::string credential_scope(const http::Request& req) {
    auto route = parse_route(req.path);
    if (!route || route->name.empty()) return {};
    std::string_view actions = "pull,push";
    if (req.method == "GET" || req.method == "HEAD") actions = "pull";
    if (req.method == "DELETE") actions = "delete";
    return fmt::format("repository:{}:{}", route->name, actions);
}

struct Forwarder::Impl : std::enable_shared_from_this<Forwarder::Impl> {
    net::CurlLoop& loop;
    ForwarderOptions options;

    Impl(net::CurlLoop& l, ForwarderOptions o) : loop(l), options(std::move(o)) {
        while (!options.upstream_url.empty() && options.upstream_url.back() == '/')
            options.upstream_url.pop_back();
    }

    void handle(const std::shared_ptr<Exchange>& ex, ForwardGate gate) {
        if (options.upstream_url.empty()) {
            api::send_error(*ex, 405, "UNSUPPORTED", "no registry behind drayage to forward to");
            return;
        }
        auto fw = std::make_shared<Forward>();
        fw->ex = ex;
        fw->gate = std::move(gate);
        std::weak_ptr<Forward> weak = fw;
        ex->on_closed([weak] {
            if (auto f = weak.lock()) f->stop();
        });
        std::string scope = options.credentials ? credential_scope(ex->request()) : std::string();
        if (scope.empty()) return forward(fw, {});
        auto self = shared_from_this();
        options.credentials->authorization(scope, [self, fw, scope](Result<std::string> got) {
            if (fw->done) return;
            if (!got) {
                spdlog::warn("passthrough {} {}: no upstream credentials: {}",
                             fw->ex->request().method, fw->ex->request().path,
                             got.error().to_string());
                fw->stop();
                if (got.error().code == "UNAUTHORIZED") {
                    return api::send_error(*fw->ex, 403, "DENIED",
                                           "the registry behind drayage refused drayage's upstream "
                                           "credentials: " +
                                               got.error().message);
                }
                return api::send_error(*fw->ex, 502, "UNAVAILABLE",
                                       "upstream unavailable: " + got.error().message);
            }
            fw->scope = scope;
            fw->authorization = std::move(*got);
            self->forward(fw, fw->authorization);
        });
    }

    // The client's headers that go to the registry: not the hop-by-hop ones, not the
    // X-Forwarded-* drayage sets itself, never cookies (the client's cookies for drayage are not
    // the registry's), and with drayage's own credentials not the client's Authorization (with
    // `auth` on those are credentials of drayage's realm: a password or a drayage token).
    net::HeaderList forwarded_headers(const http::Request& req) const {
        net::HeaderList out;
        std::string tokens = connection_tokens(req.headers);
        for (const auto& [k, v] : req.headers) {
            if (is_hop_by_hop(k, tokens) || http::iequals(k, "X-Forwarded-Host") ||
                http::iequals(k, "X-Forwarded-Proto") || http::iequals(k, "Cookie") ||
                (options.credentials && http::iequals(k, "Authorization")))
                continue;
            out.emplace_back(k, v);
        }
        return out;
    }

    // Sends the request on, with `authorization` (drayage's; empty: none) when credentials are
    // drayage's, and streams both ways.
    void forward(const std::shared_ptr<Forward>& fw, const std::string& authorization) {
        const std::shared_ptr<Exchange>& ex = fw->ex;
        const http::Request& req = ex->request();
        net::CallOptions co;
        co.method = req.method;
        co.url = options.upstream_url + req.path + (req.query.empty() ? "" : "?" + req.query);
        co.headers = forwarded_headers(req);
        if (!authorization.empty()) co.headers.emplace_back("Authorization", authorization);
        std::string host(req.header("Host"));
        if (!host.empty()) co.headers.emplace_back("X-Forwarded-Host", host);
        co.headers.emplace_back("X-Forwarded-Proto", options.client_scheme);
        co.verify_tls = options.verify_tls;
        co.connect_timeout = options.connect_timeout;
        co.stall_timeout = options.stall_timeout;
        co.total_timeout = options.total_timeout;
        bool has_body = req.has_body();
        if (has_body) {
            std::weak_ptr<Forward> weak = fw;
            co.body_source = [weak](char* buf, std::size_t cap) -> std::size_t {
                auto f = weak.lock();
                return f ? f->source(buf, cap) : 0;
            };
            co.body_size = req.content_length ? static_cast<std::int64_t>(*req.content_length) : -1;
        } else if (req.method == "PUT" || req.method == "POST") {
            co.body_size = 0;
        }

        net::CallHandlers h;
        auto self = shared_from_this();
        h.on_head = [self, fw](const net::CallResponse& resp) {
            if (fw->done) return false;
            if (resp.status == 401 && self->options.credentials) return self->refused(*fw);
            http::HeaderList out;
            std::string rtokens = connection_tokens(resp.headers);
            std::optional<std::uint64_t> length;
            bool chunked = false;
            for (const auto& [k, v] : resp.headers) {
                if (http::iequals(k, "Content-Length")) {
                    std::uint64_t n = 0;
                    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
                    // A malformed length: send chunked instead.
                    if (ec == std::errc() && end == v.data() + v.size()) length = n;
                }
                if (http::iequals(k, "Transfer-Encoding")) chunked = true;
                if (is_hop_by_hop(k, rtokens)) continue;
                out.emplace_back(k, v);
            }
            if (chunked) length.reset();
            if (fw->ex->request().method == "HEAD" && !length) length = 0;
            fw->ex->set_outcome("passthrough");
            if (fw->gate) return self->hold_head(fw, resp.status, std::move(out), length);
            fw->ex->send_head(resp.status, std::move(out), length);
            return true;
        };
        h.on_body = [fw](std::string_view data) {
            if (fw->done) return true;
            if (fw->head_held) {
                fw->held_body.append(data);
                fw->download_paused = fw->held_body.size() > kHeldBodyLimit;
                return !fw->download_paused;
            }
            if (!fw->ex->write(data)) {
                if (fw->ex->closed()) {
                    fw->stop();
                    return true;
                }
                fw->download_paused = true;
                return false;
            }
            return true;
        };
        h.on_done = [fw](Status st, const net::CallResponse& resp) {
            if (fw->done) return;
            fw->done = true;
            fw->ex->on_writable({});
            fw->ex->on_closed({});
            fw->call.reset();
            if (!st) {
                if (!fw->ex->head_sent()) {
                    spdlog::warn("passthrough {} {}: upstream failed: {}", fw->ex->request().method,
                                 fw->ex->request().path, st.error().to_string());
                    api::send_error(*fw->ex, 502, "UNAVAILABLE",
                                    "upstream unavailable: " + st.error().message);
                } else {
                    fw->ex->abort();
                }
                return;
            }
            (void)resp;
            if (fw->head_held) {
                fw->held_end = true;  // release_head finishes
                return;
            }
            fw->ex->finish();
        };
        fw->call = net::HttpCall::start(loop, std::move(co), std::move(h));

        std::weak_ptr<Forward> weak = fw;
        ex->on_writable([weak] {
            auto f = weak.lock();
            if (!f || f->done || !f->download_paused || !f->call) return;
            f->download_paused = false;
            f->call->resume_download();
        });
        if (has_body) {
            http::BodyHandlers bh;
            bh.on_data = [fw](std::string_view data) { fw->on_client_data(data); };
            bh.on_end = [fw] { fw->on_client_end(); };
            bh.on_error = [fw](const Error&) { fw->stop(); };
            ex->read_body(std::move(bh));
        }
    }

    // Holds the registry's answer and asks the gate; returns on_head's verdict (false when the
    // gate dropped the answer at once).
    bool hold_head(const std::shared_ptr<Forward>& fw, int status, http::HeaderList headers,
                   std::optional<std::uint64_t> length) {
        fw->head_held = true;
        fw->held_status = status;
        fw->held_headers = std::move(headers);
        fw->held_length = length;
        ForwardGate gate = std::move(fw->gate);
        gate(status, [fw](bool pass_on) { release_head(*fw, pass_on); });
        return !fw->done;
    }

    static void release_head(Forward& fw, bool pass_on) {
        if (!fw.head_held) return;
        fw.head_held = false;
        if (!pass_on) return fw.stop();
        // Answered meanwhile (the call failed: 502) or gone.
        if (fw.ex->closed() || fw.ex->head_sent()) return;
        fw.ex->send_head(fw.held_status, std::move(fw.held_headers), fw.held_length);
        if (!fw.held_body.empty()) fw.ex->write(fw.held_body);
        fw.held_body.clear();
        if (fw.held_end) return fw.ex->finish();
        if (fw.download_paused && fw.call) {
            fw.download_paused = false;
            fw.call->resume_download();
        }
    }

    // The registry answered 401 to a request carrying drayage's credentials (or none). Its
    // challenge is not passed on: the client would answer it with its credentials for drayage,
    // sending them to the registry's realm. The client gets 403 instead; a token that was
    // refused is dropped so the next request fetches a new one. Returns false (ends the call).
    bool refused(Forward& fw) {
        if (!fw.authorization.empty())
            options.credentials->authorization_refused(fw.scope, fw.authorization);
        spdlog::warn(
            "passthrough {} {}: the registry behind drayage answered 401 to drayage's "
            "upstream credentials{}; check upstream.username and its rights there",
            fw.ex->request().method, fw.ex->request().path,
            fw.authorization.empty() ? " (none are configured)" : "");
        fw.stop();
        api::send_error(*fw.ex, 403, "DENIED",
                        "the registry behind drayage refused drayage's upstream credentials for "
                        "this request");
        return false;
    }
};

Forwarder::Forwarder(net::CurlLoop& loop, ForwarderOptions options)
    : impl_(std::make_shared<Impl>(loop, std::move(options))) {}

Forwarder::~Forwarder() = default;

void Forwarder::handle(std::shared_ptr<http::Exchange> exchange, ForwardGate gate) {
    impl_->handle(exchange, std::move(gate));
}

}  // namespace drayage::registry
