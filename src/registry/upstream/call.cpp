// The UpstreamCall: one operation against the upstream registry (an HTTP request plus at most one
// retry after a 401 challenge), driven by HttpCall on the CurlLoop, with the time limits and body
// caps of upstream.hpp; and the token fetches it needs, shared by all calls of one
// UpstreamRegistry.
#include "call.hpp"

#include <event2/event.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "drayage/util/metrics.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using std::chrono::steady_clock;
using text::iequals;
using text::parse_u64;

constexpr std::size_t kMaxTokenBody = 1024 * 1024;

// CURLcode values we classify (avoids curl.h here: they are ABI-stable numbers).
constexpr int kCurlCouldntResolveProxy = 5;
constexpr int kCurlCouldntResolveHost = 6;
constexpr int kCurlCouldntConnect = 7;
constexpr int kCurlOperationTimedOut = 28;

std::string base64(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::string url_encode(std::string_view in) {
    std::string out;
    for (char c : in) {
        auto u = static_cast<unsigned char>(c);
        if (std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += c;
        } else {
            out += fmt::format("%{:02X}", u);
        }
    }
    return out;
}

bool is_2xx(int status) {
    return status >= 200 && status < 300;
}

void count_request(const std::string& op, const std::string& status) {
    metrics::global()
        .counter("drayage_upstream_requests_total",
                 "HTTP exchanges with the upstream registry (token fetches and 401 retries "
                 "included), by operation and status (\"error\": no response).",
                 {{"op", op}, {"status", status}})
        .inc();
}

// Turns a failed HttpCall into the client's error vocabulary. Before a response head, a refused or
// timed-out connect means the registry cannot be reached; a low-speed abort is a stall.
Error transport_error(const Error& e, const net::CallResponse& resp, bool got_head) {
    bool stalled = e.message.find("too slow") != std::string::npos;
    if (resp.curl_code == kCurlOperationTimedOut && (got_head || stalled))
        return make_error("TIMEOUT", "upstream stalled: " + e.message);
    if (!got_head &&
        (resp.curl_code == kCurlCouldntConnect || resp.curl_code == kCurlCouldntResolveHost ||
         resp.curl_code == kCurlCouldntResolveProxy || resp.curl_code == kCurlOperationTimedOut))
        return make_error("UNREACHABLE", "upstream unreachable: " + e.message);
    if (!got_head)
        return make_error("UNREACHABLE", "upstream failed before answering: " + e.message);
    return make_error("INTERRUPTED", "upstream transfer broke: " + e.message);
}

}  // namespace

UpstreamBlobHead blob_head_of(const net::CallResponse& r, std::string_view requested) {
    UpstreamBlobHead bh;
    bh.status = r.status;
    bh.has_length = parse_u64(net::find_header(r.headers, "Content-Length"), bh.length);
    std::string_view sent = net::find_header(r.headers, "Docker-Content-Digest");
    if (sent == requested) bh.digest = std::string(sent);
    bh.content_range = std::string(net::find_header(r.headers, "Content-Range"));
    bh.effective_url = r.effective_url;
    bh.headers = r.headers;
    return bh;
}

// One operation. Lifetime: owned by Impl::live until it finishes (or by the caller's BlobFetch
// pointer after that); callbacks from HttpCall, the token cache and the timer hold weak_ptrs.
class UpstreamCall : public BlobFetch,
                     private UpstreamCallSpec,
                     public std::enable_shared_from_this<UpstreamCall> {
public:
    UpstreamCall(UpstreamRegistry::Impl* impl, UpstreamCallSpec spec)
        : UpstreamCallSpec(std::move(spec)), impl_(impl) {
        timer_ = event_new(impl_->loop.base(), -1, 0, &UpstreamCall::on_timer, this);
    }
    ~UpstreamCall() override {
        if (call_) call_->cancel();
        if (timer_ != nullptr) event_free(timer_);
    }
    UpstreamCall(const UpstreamCall&) = delete;
    UpstreamCall& operator=(const UpstreamCall&) = delete;

    // Starts on the next loop iteration, so no callback runs inside the caller's call.
    void start() { arm(Job::kStart, std::chrono::milliseconds(0)); }

    void resume() override {
        if (call_ && paused_ && !finished_) {
            paused_ = false;
            call_->resume_download();
        }
    }

    void cancel() override {
        if (finished_) return;
        finished_ = true;
        if (call_) call_->cancel();
        call_.reset();
        if (timer_ != nullptr) event_del(timer_);
        release();
    }

    // Called by ~Impl: no callbacks any more, and the Impl pointer is going away.
    void abandon() {
        finished_ = true;
        if (call_) call_->cancel();
        call_.reset();
        if (timer_ != nullptr) event_del(timer_);
        impl_ = nullptr;
    }

private:
    // What the timer does when it fires. kDeadline: the attempt in flight ran out of time;
    // kFail and kErrorBodyFull end the call outside curl's callbacks (where no new transfer
    // may be started and the running one may not be removed).
    enum class Job { kNone, kStart, kDeadline, kFail, kErrorBodyFull };

    void arm(Job job, std::chrono::milliseconds after) {
        job_ = job;
        timeval tv{static_cast<time_t>(after.count() / 1000),
                   static_cast<suseconds_t>((after.count() % 1000) * 1000)};
        event_add(timer_, &tv);
    }

    static void on_timer(evutil_socket_t, short, void* arg) {
        auto* raw = static_cast<UpstreamCall*>(arg);
        std::shared_ptr<UpstreamCall> self = raw->shared_from_this();
        if (raw->finished_ || raw->impl_ == nullptr) return;
        Job job = raw->job_;
        raw->job_ = Job::kNone;
        switch (job) {
            case Job::kStart:
                if (raw->impl_->base.empty() && !raw->scope.empty()) {
                    raw->fail(make_error("UNREACHABLE",
                                         "no upstream registry configured (upstream.url)"));
                } else {
                    raw->authorize_and_send();
                }
                break;
            case Job::kDeadline:
                raw->fail(make_error("TIMEOUT", fmt::format("{} {}: {}", raw->method, raw->url,
                                                            raw->deadline_reason_)));
                break;
            case Job::kFail: raw->fail(std::move(raw->deferred_error_)); break;
            case Job::kErrorBodyFull: raw->cut_error_body(); break;
            case Job::kNone: break;
        }
    }

    // The time limit of the attempt in flight. Until the response head: upstream.response_timeout.
    // A body that is buffered (manifests, listings, tokens) or an error body: the whole call
    // within upstream.timeout, counted from the request, so a body that trickles forever cannot
    // hold it. A 2xx blob body has no overall limit (a layer may take long on a slow link); curl's
    // low-speed check (upstream.stall_timeout) ends it when it stops.
    void arm_deadline() {
        using std::chrono::milliseconds;
        const auto& cfg = impl_->cfg;
        std::optional<steady_clock::time_point> due;
        if (!got_head_ && cfg.response_timeout.count() > 0) {
            due = sent_at_ + cfg.response_timeout;
            deadline_reason_ = fmt::format("no response within {} ms (upstream.response_timeout)",
                                           cfg.response_timeout.count());
        }
        bool bounded = !stream || (got_head_ && !delivering_);
        if (bounded && cfg.timeout.count() > 0 && (!due || sent_at_ + cfg.timeout < *due)) {
            due = sent_at_ + cfg.timeout;
            deadline_reason_ = fmt::format("response not complete within {} ms (upstream.timeout)",
                                           cfg.timeout.count());
        }
        if (!due) {
            event_del(timer_);
            job_ = Job::kNone;
            return;
        }
        auto left = std::chrono::duration_cast<milliseconds>(*due - steady_clock::now());
        arm(Job::kDeadline, std::max(left, milliseconds(0)));
    }

    UpstreamCredentials credentials() const {
        return as ? *as : UpstreamCredentials{impl_->cfg.username, impl_->cfg.password};
    }

    // Picks the credentials the registry asked for, then sends.
    void authorize_and_send() {
        auto* impl = impl_;
        if (scope.empty() || impl->scheme == UpstreamRegistry::Impl::Scheme::kUnknown) {
            send({});
            return;
        }
        UpstreamCredentials creds = credentials();
        if (impl->scheme == UpstreamRegistry::Impl::Scheme::kBasic) {
            send(creds.username.empty() ? std::string() : impl->basic_header(creds));
            return;
        }
        // An operation's own credentials get a fetch of their own (joined only by operations
        // with the same credentials), and its token is not stored.
        std::string key = impl->token_key(scope);
        if (as) key += '\n' + as->username + '\0' + as->password;
        std::weak_ptr<UpstreamCall> weak = weak_from_this();
        std::string token;
        auto waiter = [weak, key](Result<std::string> got) {
            auto self = weak.lock();
            if (!self || self->finished_ || self->impl_ == nullptr) return;
            if (!got) {
                self->fail(got.error());
                return;
            }
            self->token_key_ = key;
            self->sent_token_ = *got;
            self->send("Bearer " + *got);
        };
        switch (impl->tokens.acquire(key, steady_clock::now(), waiter, &token)) {
            case TokenCache::Lookup::kHit:
                token_key_ = key;
                sent_token_ = token;
                send("Bearer " + token);
                break;
            case TokenCache::Lookup::kFetch:
                impl->fetch_token(key, scope, creds, !as.has_value());
                break;
            case TokenCache::Lookup::kWait: break;
        }
    }

    void send(const std::string& authorization) {
        if (authorize_only && impl_->scheme != UpstreamRegistry::Impl::Scheme::kUnknown) {
            finish_reply(Reply{{}, {}, authorization});
            return;
        }
        head_ = net::CallResponse{};
        body_.clear();
        authorization_ = authorization;
        got_head_ = false;
        retry_after_401_ = false;
        delivering_ = false;
        paused_ = false;

        net::CallOptions o;
        o.method = method;
        o.url = url;
        o.headers = headers;
        o.headers.emplace_back("User-Agent", "drayage/0.1");
        if (!authorization.empty()) o.headers.emplace_back("Authorization", authorization);
        o.follow_redirects = follow_redirects;
        o.connect_timeout = impl_->cfg.connect_timeout;
        o.stall_timeout = impl_->cfg.stall_timeout;

        std::weak_ptr<UpstreamCall> weak = weak_from_this();
        net::CallHandlers h;
        h.on_head = [weak](const net::CallResponse& r) {
            auto self = weak.lock();
            return self && self->handle_head(r);
        };
        h.on_body = [weak](std::string_view data) {
            auto self = weak.lock();
            return self && self->handle_body(data);
        };
        h.on_done = [weak](Status st, const net::CallResponse& r) {
            if (auto self = weak.lock()) self->handle_done(std::move(st), r);
        };
        sent_at_ = steady_clock::now();
        arm_deadline();
        call_ = net::HttpCall::start(impl_->loop, std::move(o), std::move(h));
    }

    bool handle_head(const net::CallResponse& r) {
        if (finished_) return false;
        got_head_ = true;
        head_ = r;
        // The first 401 of an authenticating call is a challenge to answer, not a result;
        // except for an operation's own credentials, used fresh (their tokens are never stored,
        // so none can be stale): a 401 to them is the answer.
        retry_after_401_ =
            r.status == 401 && !scope.empty() && attempt_ == 0 && !(as && !authorization_.empty());
        delivering_ = stream && is_2xx(r.status) && !retry_after_401_;
        // Before anything below may arm the timer for a deferred failure.
        arm_deadline();
        if (delivering_) {
            UpstreamBlobHead bh = blob_head_of(r, blob_digest);
            if (blob.on_head && !blob.on_head(bh)) {
                aborted_by_consumer_ = true;
                return false;
            }
        } else if (!stream && is_2xx(r.status)) {
            std::uint64_t len = 0;
            if (parse_u64(net::find_header(r.headers, "Content-Length"), len) && len > cap &&
                method != "HEAD") {
                defer_fail(make_error("TOO_LARGE", fmt::format("{} {}: {} bytes, over the {} byte "
                                                               "limit",
                                                               method, url, len, cap)));
                return false;
            }
        }
        return true;
    }

    bool handle_body(std::string_view data) {
        if (finished_) return false;
        if (delivering_) {
            bool more = !blob.on_data || blob.on_data(data);
            if (finished_) return false;  // cancelled from inside on_data
            if (!more) paused_ = true;
            return more;
        }
        // Buffered success bodies up to `cap`; error and challenge bodies up to kMaxErrorBody,
        // kept for the message: at that size the transfer pauses and the job closes it.
        bool wanted = is_2xx(head_.status) && !retry_after_401_;
        if (!wanted) {
            body_.append(data.substr(0, kMaxErrorBody - std::min(kMaxErrorBody, body_.size())));
            if (body_.size() < kMaxErrorBody) return true;
            arm(Job::kErrorBodyFull, std::chrono::milliseconds(0));
            return false;
        }
        if (body_.size() + data.size() > cap) {
            defer_fail(make_error(
                "TOO_LARGE", fmt::format("{} {}: body over the {} byte limit", method, url, cap)));
            return false;
        }
        body_.append(data);
        return true;
    }

    void handle_done(Status st, const net::CallResponse& r) {
        if (finished_) return;
        if (job_ == Job::kDeadline) {
            event_del(timer_);
            job_ = Job::kNone;
        }
        call_.reset();
        count_request(op, st ? std::to_string(r.status) : "error");
        spdlog::debug("upstream {} {} attempt {}: {}", method, url, attempt_ + 1,
                      st ? std::to_string(r.status) : st.error().message);
        // A deferred end is on its way (the body may have completed while paused for it).
        if (job_ == Job::kFail || job_ == Job::kErrorBodyFull) return;
        if (!st) {
            if (aborted_by_consumer_) {
                fail(make_error("ABORTED", "blob transfer aborted by its consumer"));
            } else {
                fail(transport_error(st.error(), r, got_head_));
            }
            return;
        }
        head_ = r;
        conclude();
    }

    // The error body reached kMaxErrorBody: close the connection rather than read the rest.
    void cut_error_body() {
        drop_call();
        conclude();
    }

    // Ends the transfer in flight, if any, before it completed by itself. It still counts in
    // drayage_upstream_requests_total: as the status of its head, "error" without one.
    void drop_call() {
        if (!call_) return;
        call_->cancel();
        call_.reset();
        count_request(op, got_head_ ? std::to_string(head_.status) : "error");
    }

    // The response is complete (or its error body as much as we read of it): what it means.
    void conclude() {
        if (retry_after_401_) {
            answer_challenge();
            return;
        }
        if (delivering_) {
            finish_stream(Status{});
            return;
        }
        if (!is_2xx(head_.status)) {
            fail(upstream_status_error(head_.status, body_, fmt::format("{} {}", method, url)));
            return;
        }
        finish_reply(Reply{head_, std::move(body_), authorization_});
    }

    // A 401 taught us what the registry wants: remember it and try once more with it.
    void answer_challenge() {
        auto* impl = impl_;
        std::vector<AuthChallenge> challenges;
        for (const auto& [k, v] : head_.headers) {
            if (iequals(k, "WWW-Authenticate")) {
                auto more = parse_www_authenticate(v);
                challenges.insert(challenges.end(), more.begin(), more.end());
            }
        }
        const AuthChallenge* bearer = nullptr;
        const AuthChallenge* basic = nullptr;
        for (const auto& c : challenges) {
            if (c.scheme == "bearer" && bearer == nullptr && !c.param("realm").empty()) bearer = &c;
            if (c.scheme == "basic" && basic == nullptr) basic = &c;
        }
        // The token we sent (if any) is bad: drop it so nobody else uses it.
        if (!sent_token_.empty()) impl->tokens.invalidate(token_key_, sent_token_);
        ++attempt_;
        if (bearer != nullptr) {
            std::string realm = bearer->param("realm");
            if (std::string why = unusable_token_realm(realm); !why.empty()) {
                // Neither used nor kept: the next request learns the challenge anew.
                impl->forget_realm(impl->realm);
                fail(make_error("BAD_CHALLENGE",
                                fmt::format("{} {}: the registry's token realm is refused ({}): "
                                            "{:?}",
                                            method, url, why, realm.substr(0, 200))));
                return;
            }
            impl->scheme = UpstreamRegistry::Impl::Scheme::kBearer;
            impl->realm = std::move(realm);
            impl->service = bearer->param("service");
            // The registry's scope wins over our guess (it knows what this request needs); a
            // probe asks for the scope of the request it prepares, not of the probe itself.
            std::string asked = bearer->param("scope");
            if (!asked.empty() && !authorize_only) scope = asked;
            authorize_and_send();
            return;
        }
        if (basic != nullptr && !credentials().username.empty()) {
            impl->scheme = UpstreamRegistry::Impl::Scheme::kBasic;
            send(impl->basic_header(credentials()));
            return;
        }
        Error e = upstream_status_error(401, body_, fmt::format("{} {}", method, url));
        e.message += basic != nullptr ? " (Basic auth asked for; upstream.username is not set)"
                                      : " (no Bearer or Basic challenge to answer)";
        fail(std::move(e));
    }

    void defer_fail(Error e) {
        deferred_error_ = std::move(e);
        arm(Job::kFail, std::chrono::milliseconds(0));
    }

    void fail(Error e) {
        drop_call();
        if (stream) {
            finish_stream(std::move(e));
        } else {
            finish_reply(std::move(e));
        }
    }

    void finish_reply(Result<Reply> r) {
        if (finished_) return;
        finished_ = true;
        auto self = shared_from_this();
        auto cb = std::move(on_reply);
        release();
        if (cb) cb(std::move(r));
    }

    void finish_stream(Status st) {
        if (finished_) return;
        finished_ = true;
        auto self = shared_from_this();
        auto cb = std::move(blob.on_done);
        release();
        if (cb) cb(std::move(st));
    }

    void release() {
        if (timer_ != nullptr) event_del(timer_);
        if (impl_ != nullptr) impl_->live.erase(this);
    }

    UpstreamRegistry::Impl* impl_;
    event* timer_ = nullptr;
    Job job_ = Job::kNone;
    Error deferred_error_;
    std::string deadline_reason_;
    steady_clock::time_point sent_at_;

    std::shared_ptr<net::HttpCall> call_;
    int attempt_ = 0;
    std::string token_key_;
    std::string sent_token_;
    std::string authorization_;
    net::CallResponse head_;
    std::string body_;
    bool got_head_ = false;
    bool retry_after_401_ = false;
    bool delivering_ = false;
    bool paused_ = false;
    bool aborted_by_consumer_ = false;
    bool finished_ = false;

    friend struct UpstreamRegistry::Impl;
};

UpstreamRegistry::Impl::~Impl() {
    auto all = std::move(live);
    live.clear();
    for (auto& [raw, call] : all)
        call->abandon();
}

std::string UpstreamRegistry::Impl::basic_header(const UpstreamCredentials& c) {
    return "Basic " + base64(c.username + ":" + c.password);
}

std::shared_ptr<BlobFetch> UpstreamRegistry::Impl::start(UpstreamCallSpec spec) {
    auto call = std::make_shared<UpstreamCall>(this, std::move(spec));
    live.emplace(call.get(), call);
    call->start();
    return call;
}

void UpstreamRegistry::Impl::fetch_token(const std::string& key, const std::string& scope,
                                         const UpstreamCredentials& creds, bool keep) {
    ++token_fetches;
    // GET realm?service=S&scope=A&scope=B (a challenge may name several scopes, space-separated).
    std::string url = realm + (realm.find('?') == std::string::npos ? '?' : '&');
    url += "service=" + url_encode(service);
    std::size_t pos = 0;
    while (pos < scope.size()) {
        std::size_t sp = scope.find(' ', pos);
        if (sp == std::string::npos) sp = scope.size();
        if (sp > pos) url += "&scope=" + url_encode(std::string_view(scope).substr(pos, sp - pos));
        pos = sp + 1;
    }
    UpstreamCallSpec spec{"token", "GET", url};
    spec.cap = kMaxTokenBody;
    spec.follow_redirects = true;
    spec.headers.emplace_back("Accept", "application/json");
    if (!creds.username.empty()) spec.headers.emplace_back("Authorization", basic_header(creds));
    spec.on_reply = [this, key, keep, asked = realm](Result<Reply> r) {
        if (!r) {
            Error e = r.error();
            // 401 from the token endpoint: the credentials are refused, for any scope (a scope
            // they may not read gets a token without that access); the realm itself answered,
            // so it is kept. 403: no access at all. Other failures (down, 5xx, garbage) keep
            // their own code, retrying later may help, and the realm is learnt anew.
            if (e.status == 401) {
                e.code = "TOKEN_REFUSED";
            } else {
                forget_realm(asked);
                if (e.status == 403) e.code = "UNAUTHORIZED";
            }
            e.message = "token endpoint: " + e.message;
            tokens.complete(key, std::move(e), steady_clock::now());
            return;
        }
        auto grant = parse_token_response(r->body, std::chrono::system_clock::now());
        if (!grant) {
            // Not a token (a login page, a proxy's error page): a failure of the endpoint, whose
            // realm is learnt anew like that of one that is down.
            forget_realm(asked);
            Error e = grant.error();
            e.message = "token endpoint: " + e.message;
            tokens.complete(key, std::move(e), steady_clock::now());
            return;
        }
        if (grant && !keep) grant->lifetime = std::chrono::seconds(0);  // used once, not stored
        tokens.complete(key, std::move(grant), steady_clock::now());
    };
    start(std::move(spec));
}

}  // namespace drayage::registry
