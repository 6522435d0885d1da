// UpstreamRegistry: one Exchange per operation (an HTTP request plus at most one retry after a
// 401 challenge), driven by HttpCall on the CurlLoop; the auth state (what the registry asked for
// and the token cache) is shared by all exchanges of one UpstreamRegistry.
#include "drayage/registry/upstream.hpp"

#include <event2/event.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <map>
#include <nlohmann/json.hpp>

#include "drayage/registry/upstream_auth.hpp"
#include "drayage/util/metrics.hpp"
#include "drayage/util/text.hpp"

namespace drayage::registry {
namespace {

using std::chrono::steady_clock;

constexpr std::size_t kMaxErrorBody = 64 * 1024;  // error and 401 bodies kept for messages
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

std::string sha256_digest(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    std::string out = "sha256:";
    for (unsigned int i = 0; i < len; ++i)
        out += fmt::format("{:02x}", md[i]);
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

using text::iequals;
using text::parse_u64;

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

Error upstream_status_error(int status, std::string_view body, std::string_view what) {
    std::string code;
    switch (status) {
        case 401: code = "UNAUTHORIZED"; break;
        case 404: code = "NOT_FOUND"; break;
        case 429: code = "TOOMANYREQUESTS"; break;
        default: code = fmt::format("UPSTREAM_{}", status); break;
    }
    // Registry API error bodies name the reason ({"errors":[{"code":"MANIFEST_UNKNOWN",...}]}).
    std::string detail;
    auto doc = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
    if (!doc.is_discarded() && doc.is_object() && doc.contains("errors") &&
        doc["errors"].is_array()) {
        for (const auto& e : doc["errors"]) {
            if (!e.is_object()) continue;
            if (!detail.empty()) detail += "; ";
            detail += e.value("code", std::string("?"));
            std::string msg = e.value("message", std::string());
            if (!msg.empty()) detail += " (" + msg + ")";
        }
    } else {
        for (char c : body.substr(0, 200))
            detail += (c >= 0x20 && c < 0x7f) ? c : ' ';
    }
    std::string message = fmt::format("{} answered {}", what, status);
    if (!detail.empty()) message += ": " + detail;
    return make_error(std::move(code), std::move(message), status);
}

// What a buffered exchange returns.
struct Reply {
    net::CallResponse head;
    std::string body;
};

class Exchange;

struct UpstreamRegistry::Impl {
    net::CurlLoop& loop;
    config::UpstreamConfig cfg;
    std::string base;  // config URL without trailing '/'

    // What the registry asked for in its last challenge. Unknown until the first 401: until then
    // requests go anonymous (a registry that wants nothing never costs a round trip).
    enum class Scheme { kUnknown, kBasic, kBearer };
    Scheme scheme = Scheme::kUnknown;
    std::string realm;
    std::string service;
    TokenCache tokens;
    std::uint64_t token_fetches = 0;

    // Every exchange not yet finished, so the destructor can cancel them.
    std::map<Exchange*, std::shared_ptr<Exchange>> live;

    Impl(net::CurlLoop& l, config::UpstreamConfig c) : loop(l), cfg(std::move(c)) {
        base = cfg.url;
        while (!base.empty() && base.back() == '/')
            base.pop_back();
    }
    ~Impl();

    std::string token_key(const std::string& scope) const {
        return realm + ' ' + service + ' ' + scope;
    }
    static std::string basic_header(const UpstreamCredentials& c) {
        return "Basic " + base64(c.username + ":" + c.password);
    }

    std::shared_ptr<Exchange> make(std::string op, std::string method, std::string url);
    // `keep`: store the token for later operations (not for an operation's own credentials).
    void fetch_token(const std::string& key, const std::string& scope,
                     const UpstreamCredentials& creds, bool keep);
};

// One operation. Lifetime: owned by Impl::live until it finishes (or by the caller's BlobFetch
// pointer after that); callbacks from HttpCall, the token cache and the timer hold weak_ptrs.
class Exchange : public BlobFetch, public std::enable_shared_from_this<Exchange> {
public:
    Exchange(UpstreamRegistry::Impl* impl, std::string op, std::string method, std::string url)
        : impl_(impl), op_(std::move(op)), method_(std::move(method)), url_(std::move(url)) {
        timer_ = event_new(impl_->loop.base(), -1, 0, &Exchange::on_timer, this);
    }
    ~Exchange() override {
        if (call_) call_->cancel();
        if (timer_ != nullptr) event_free(timer_);
    }
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;

    // Configuration, set before start().
    net::HeaderList headers;  // Accept, Range, and for token fetches Authorization
    std::string scope;        // token scope; empty: no registry auth (token endpoint calls)
    bool follow_redirects = false;
    bool stream = false;    // body goes to `blob` handlers instead of being buffered
    std::uint64_t cap = 0;  // buffered body limit
    std::optional<UpstreamCredentials> as;  // this operation's own credentials
    std::function<void(Result<Reply>)> on_reply;
    BlobHandlers blob;

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
    enum class Job { kNone, kStart, kHeadTimeout, kFail };

    void arm(Job job, std::chrono::milliseconds after) {
        job_ = job;
        timeval tv{static_cast<time_t>(after.count() / 1000),
                   static_cast<suseconds_t>((after.count() % 1000) * 1000)};
        event_add(timer_, &tv);
    }

    static void on_timer(evutil_socket_t, short, void* arg) {
        auto* raw = static_cast<Exchange*>(arg);
        std::shared_ptr<Exchange> self = raw->shared_from_this();
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
            case Job::kHeadTimeout:
                raw->fail(make_error(
                    "TIMEOUT", fmt::format("{} {}: no response within {} ms", raw->method_,
                                           raw->url_, raw->impl_->cfg.response_timeout.count())));
                break;
            case Job::kFail: raw->fail(std::move(raw->deferred_error_)); break;
            case Job::kNone: break;
        }
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
        std::weak_ptr<Exchange> weak = weak_from_this();
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
        head_ = net::CallResponse{};
        body_.clear();
        got_head_ = false;
        retry_after_401_ = false;
        delivering_ = false;
        paused_ = false;
        sent_credentials_ = !authorization.empty();

        net::CallOptions o;
        o.method = method_;
        o.url = url_;
        o.headers = headers;
        o.headers.emplace_back("User-Agent", "drayage/0.1");
        if (!authorization.empty()) o.headers.emplace_back("Authorization", authorization);
        o.follow_redirects = follow_redirects;
        o.connect_timeout = impl_->cfg.connect_timeout;
        o.stall_timeout = impl_->cfg.stall_timeout;

        std::weak_ptr<Exchange> weak = weak_from_this();
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
        if (impl_->cfg.response_timeout.count() > 0)
            arm(Job::kHeadTimeout, impl_->cfg.response_timeout);
        call_ = net::HttpCall::start(impl_->loop, std::move(o), std::move(h));
    }

    bool handle_head(const net::CallResponse& r) {
        if (finished_) return false;
        got_head_ = true;
        if (job_ == Job::kHeadTimeout) {
            event_del(timer_);
            job_ = Job::kNone;
        }
        head_ = r;
        // The first 401 of an authenticating exchange is a challenge to answer, not a result;
        // except for an operation's own credentials, used fresh (their tokens are never stored,
        // so none can be stale): a 401 to them is the answer.
        if (r.status == 401 && !scope.empty() && attempt_ == 0 && !(as && sent_credentials_)) {
            retry_after_401_ = true;
            return true;
        }
        if (stream && is_2xx(r.status)) {
            delivering_ = true;
            UpstreamBlobHead bh = blob_head(r);
            if (blob.on_head && !blob.on_head(bh)) {
                aborted_by_consumer_ = true;
                return false;
            }
        } else if (!stream && is_2xx(r.status)) {
            std::uint64_t len = 0;
            if (parse_u64(net::find_header(r.headers, "Content-Length"), len) && len > cap &&
                method_ != "HEAD") {
                defer_fail(make_error("TOO_LARGE", fmt::format("{} {}: {} bytes, over the {} byte "
                                                               "limit",
                                                               method_, url_, len, cap)));
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
        // Buffered success bodies up to `cap`; error and challenge bodies up to kMaxErrorBody
        // (kept only for the message, the rest is read and dropped so the connection stays usable).
        bool wanted = is_2xx(head_.status) && !retry_after_401_;
        std::size_t limit = wanted ? cap : kMaxErrorBody;
        if (body_.size() + data.size() > limit) {
            if (wanted) {
                defer_fail(make_error("TOO_LARGE", fmt::format("{} {}: body over the {} byte limit",
                                                               method_, url_, cap)));
                return false;
            }
            body_.append(data.substr(0, limit - std::min(limit, body_.size())));
            return true;
        }
        body_.append(data);
        return true;
    }

    void handle_done(Status st, const net::CallResponse& r) {
        if (finished_) return;
        if (job_ == Job::kHeadTimeout) {
            event_del(timer_);
            job_ = Job::kNone;
        }
        call_.reset();
        count_request(op_, st ? std::to_string(r.status) : "error");
        spdlog::debug("upstream {} {} attempt {}: {}", method_, url_, attempt_ + 1,
                      st ? std::to_string(r.status) : st.error().message);
        if (job_ == Job::kFail) return;  // a deferred failure is on its way
        if (!st) {
            if (aborted_by_consumer_) {
                fail(make_error("ABORTED", "blob transfer aborted by its consumer"));
            } else {
                fail(transport_error(st.error(), r, got_head_));
            }
            return;
        }
        head_ = r;
        if (retry_after_401_) {
            answer_challenge();
            return;
        }
        if (delivering_) {
            finish_stream(Status{});
            return;
        }
        if (!is_2xx(r.status)) {
            Error e = upstream_status_error(r.status, body_, fmt::format("{} {}", method_, url_));
            if (stream) {
                finish_stream(std::move(e));
            } else {
                finish_reply(std::move(e));
            }
            return;
        }
        finish_reply(Reply{r, std::move(body_)});
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
            impl->scheme = UpstreamRegistry::Impl::Scheme::kBearer;
            impl->realm = bearer->param("realm");
            impl->service = bearer->param("service");
            // The registry's scope wins over our guess (it knows what this request needs).
            std::string asked = bearer->param("scope");
            if (!asked.empty()) scope = asked;
            authorize_and_send();
            return;
        }
        if (basic != nullptr && !credentials().username.empty()) {
            impl->scheme = UpstreamRegistry::Impl::Scheme::kBasic;
            send(impl->basic_header(credentials()));
            return;
        }
        Error e = upstream_status_error(401, body_, fmt::format("{} {}", method_, url_));
        e.message += basic != nullptr ? " (Basic auth asked for; upstream.username is not set)"
                                      : " (no Bearer or Basic challenge to answer)";
        fail(std::move(e));
    }

    UpstreamBlobHead blob_head(const net::CallResponse& r) const {
        UpstreamBlobHead bh;
        bh.status = r.status;
        bh.has_length = parse_u64(net::find_header(r.headers, "Content-Length"), bh.length);
        bh.digest = std::string(net::find_header(r.headers, "Docker-Content-Digest"));
        bh.content_range = std::string(net::find_header(r.headers, "Content-Range"));
        bh.effective_url = r.effective_url;
        bh.headers = r.headers;
        return bh;
    }

    void defer_fail(Error e) {
        deferred_error_ = std::move(e);
        arm(Job::kFail, std::chrono::milliseconds(0));
    }

    void fail(Error e) {
        if (call_) call_->cancel();
        call_.reset();
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
    std::string op_;
    std::string method_;
    std::string url_;
    event* timer_ = nullptr;
    Job job_ = Job::kNone;
    Error deferred_error_;

    std::shared_ptr<net::HttpCall> call_;
    int attempt_ = 0;
    std::string token_key_;
    std::string sent_token_;
    net::CallResponse head_;
    std::string body_;
    bool got_head_ = false;
    bool retry_after_401_ = false;
    bool sent_credentials_ = false;
    bool delivering_ = false;
    bool paused_ = false;
    bool aborted_by_consumer_ = false;
    bool finished_ = false;

    friend struct UpstreamRegistry::Impl;
};

UpstreamRegistry::Impl::~Impl() {
    auto all = std::move(live);
    live.clear();
    for (auto& [raw, ex] : all)
        ex->abandon();
}

std::shared_ptr<Exchange> UpstreamRegistry::Impl::make(std::string op, std::string method,
                                                       std::string url) {
    auto ex = std::make_shared<Exchange>(this, std::move(op), std::move(method), std::move(url));
    live.emplace(ex.get(), ex);
    return ex;
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
    auto ex = make("token", "GET", url);
    ex->cap = kMaxTokenBody;
    ex->follow_redirects = true;
    ex->headers.emplace_back("Accept", "application/json");
    if (!creds.username.empty()) ex->headers.emplace_back("Authorization", basic_header(creds));
    ex->on_reply = [this, key, keep](Result<Reply> r) {
        if (!r) {
            Error e = r.error();
            // 401 from the token endpoint: the credentials are refused, for any scope (a scope
            // they may not read gets a token without that access). 403: no access at all.
            // Other failures (down, 5xx) keep their own code: retrying later may help.
            if (e.status == 401) e.code = "TOKEN_REFUSED";
            if (e.status == 403) e.code = "UNAUTHORIZED";
            e.message = "token endpoint: " + e.message;
            tokens.complete(key, std::move(e), steady_clock::now());
            return;
        }
        auto grant = parse_token_response(r->body, std::chrono::system_clock::now());
        if (grant && !keep) grant->lifetime = std::chrono::seconds(0);  // used once, not stored
        tokens.complete(key, std::move(grant), steady_clock::now());
    };
    ex->start();
}

UpstreamRegistry::UpstreamRegistry(net::CurlLoop& loop, config::UpstreamConfig config)
    : impl_(std::make_unique<Impl>(loop, std::move(config))) {}

UpstreamRegistry::~UpstreamRegistry() = default;

std::uint64_t UpstreamRegistry::token_fetches() const {
    return impl_->token_fetches;
}

namespace {

std::string repo_scope(std::string_view repo) {
    return fmt::format("repository:{}:pull", repo);
}

UpstreamManifest manifest_from(const Reply& r, bool with_body) {
    UpstreamManifest m;
    m.status = r.head.status;
    m.media_type = std::string(net::find_header(r.head.headers, "Content-Type"));
    m.digest = std::string(net::find_header(r.head.headers, "Docker-Content-Digest"));
    m.headers = r.head.headers;
    if (with_body) {
        m.body = r.body;
        m.size = r.body.size();
    } else {
        parse_u64(net::find_header(r.head.headers, "Content-Length"), m.size);
    }
    return m;
}

}  // namespace

void UpstreamRegistry::head_manifest(std::string_view repo, std::string_view reference,
                                     std::string_view accept, Done<UpstreamManifest> done,
                                     std::optional<UpstreamCredentials> as) {
    auto ex = impl_->make("manifest_head", "HEAD",
                          fmt::format("{}/v2/{}/manifests/{}", impl_->base, repo, reference));
    ex->scope = repo_scope(repo);
    ex->as = std::move(as);
    if (!accept.empty()) ex->headers.emplace_back("Accept", std::string(accept));
    ex->on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(manifest_from(*r, false));
    };
    ex->start();
}

void UpstreamRegistry::get_manifest(std::string_view repo, std::string_view reference,
                                    std::string_view accept, Done<UpstreamManifest> done) {
    std::string url = fmt::format("{}/v2/{}/manifests/{}", impl_->base, repo, reference);
    auto ex = impl_->make("manifest_get", "GET", url);
    ex->scope = repo_scope(repo);
    ex->cap = kMaxManifestBytes;
    if (!accept.empty()) ex->headers.emplace_back("Accept", std::string(accept));
    ex->on_reply = [done = std::move(done), ref = std::string(reference), url](Result<Reply> r) {
        if (!r) return done(r.error());
        UpstreamManifest m = manifest_from(*r, true);
        // Only sha256 can be checked here; other algorithms pass through unverified.
        std::string actual = sha256_digest(m.body);
        std::string expected = ref.rfind("sha256:", 0) == 0 ? ref : std::string();
        if (expected.empty() && m.digest.rfind("sha256:", 0) == 0) expected = m.digest;
        if (!expected.empty() && expected != actual) {
            return done(make_error(
                "DIGEST_MISMATCH",
                fmt::format("GET {}: body hashes to {}, expected {}", url, actual, expected)));
        }
        if (m.digest.empty()) m.digest = actual;
        done(std::move(m));
    };
    ex->start();
}

void UpstreamRegistry::head_blob(std::string_view repo, std::string_view digest,
                                 Done<UpstreamBlobHead> done,
                                 std::optional<UpstreamCredentials> as) {
    auto ex = impl_->make("blob_head", "HEAD",
                          fmt::format("{}/v2/{}/blobs/{}", impl_->base, repo, digest));
    ex->scope = repo_scope(repo);
    ex->as = std::move(as);
    ex->follow_redirects = true;
    ex->on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        UpstreamBlobHead bh;
        bh.status = r->head.status;
        bh.has_length = parse_u64(net::find_header(r->head.headers, "Content-Length"), bh.length);
        bh.digest = std::string(net::find_header(r->head.headers, "Docker-Content-Digest"));
        bh.effective_url = r->head.effective_url;
        bh.headers = r->head.headers;
        done(std::move(bh));
    };
    ex->start();
}

std::shared_ptr<BlobFetch> UpstreamRegistry::get_blob(std::string_view repo,
                                                      std::string_view digest,
                                                      std::optional<ByteRange> range,
                                                      BlobHandlers handlers) {
    auto ex =
        impl_->make("blob_get", "GET", fmt::format("{}/v2/{}/blobs/{}", impl_->base, repo, digest));
    ex->scope = repo_scope(repo);
    ex->follow_redirects = true;
    ex->stream = true;
    if (range) {
        ex->headers.emplace_back(
            "Range", range->last ? fmt::format("bytes={}-{}", range->first, *range->last)
                                 : fmt::format("bytes={}-", range->first));
    }
    ex->blob = std::move(handlers);
    ex->start();
    return ex;
}

void UpstreamRegistry::get_tags(std::string_view repo, std::string_view query,
                                Done<UpstreamListing> done) {
    std::string url = fmt::format("{}/v2/{}/tags/list", impl_->base, repo);
    if (!query.empty()) url += fmt::format("?{}", query);
    auto ex = impl_->make("tags", "GET", url);
    ex->scope = repo_scope(repo);
    ex->cap = kMaxListingBytes;
    ex->on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(UpstreamListing{r->head.status, r->head.headers, std::move(r->body)});
    };
    ex->start();
}

void UpstreamRegistry::get_catalog(std::string_view query, Done<UpstreamListing> done) {
    std::string url = impl_->base + "/v2/_catalog";
    if (!query.empty()) url += fmt::format("?{}", query);
    auto ex = impl_->make("catalog", "GET", url);
    ex->scope = "registry:catalog:*";
    ex->cap = kMaxListingBytes;
    ex->on_reply = [done = std::move(done)](Result<Reply> r) {
        if (!r) return done(r.error());
        done(UpstreamListing{r->head.status, r->head.headers, std::move(r->body)});
    };
    ex->start();
}

}  // namespace drayage::registry
