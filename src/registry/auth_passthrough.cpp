// auth.passthrough: access decided by the upstream with the client's own credentials (auth.hpp).
#include <event2/event.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <map>

#include "drayage/registry/auth.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/s3/sigv4.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMaxDecisions = 10'000;
constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

metrics::Counter& checks(std::string_view result) {
    return metrics::global().counter(
        "drayage_auth_passthrough_checks_total",
        "Pass-through access decisions, by result (allow, deny, error: denied, not cached; "
        "cached: answered from the decision cache).",
        {{"result", std::string(result)}});
}

}  // namespace

struct UpstreamAccessCheck::Impl {
    net::CurlLoop& loop;
    config::UpstreamConfig upstream;
    std::chrono::seconds ttl;
    std::string key;  // HMAC key: credentials are never kept in the clear

    struct Decision {
        bool allowed = false;
        Clock::time_point expires;
    };
    std::map<std::string, Decision> decisions;
    struct Pending {
        std::unique_ptr<UpstreamRegistry> client;
        std::vector<std::function<void(bool)>> waiters;
    };
    std::map<std::string, Pending> pending;
    // A client cannot be destroyed from inside its own callback; finished ones wait here for
    // the next loop turn.
    std::vector<std::unique_ptr<UpstreamRegistry>> finished;
    event* reaper = nullptr;

    Impl(net::CurlLoop& l, config::UpstreamConfig u, std::chrono::seconds t)
        : loop(l), upstream(std::move(u)), ttl(t), key(32, '\0') {
        if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), 32) != 1) {
            spdlog::critical("RAND_bytes failed: cannot make a pass-through cache key");
            std::abort();
        }
        reaper = event_new(loop.base(), -1, 0, &Impl::reap_cb, this);
    }
    ~Impl() {
        event_free(reaper);
        // Destroying the clients cancels their requests without callbacks.
        pending.clear();
        finished.clear();
    }

    static void reap_cb(evutil_socket_t, short, void* arg) {
        static_cast<Impl*>(arg)->finished.clear();
    }

    void settle(const std::string& id, bool allowed, bool cache) {
        auto it = pending.find(id);
        if (it == pending.end()) return;
        Pending p = std::move(it->second);
        pending.erase(it);
        finished.push_back(std::move(p.client));
        event_active(reaper, EV_TIMEOUT, 0);
        if (cache && ttl.count() > 0) {
            if (decisions.size() >= kMaxDecisions) decisions.clear();
            decisions[id] = Decision{allowed, Clock::now() + ttl};
        }
        for (auto& w : p.waiters)
            w(allowed);
    }

    // 200/404 after the registry's own access check: readable; 401/403: not; else: unknown.
    void answer(const std::string& id, const std::string& repo, const Error* e) {
        if (e == nullptr || e->code == "NOT_FOUND") {
            checks("allow").inc();
            return settle(id, true, true);
        }
        bool refused = e->code == "UNAUTHORIZED" || e->status == 401 || e->status == 403;
        checks(refused ? "deny" : "error").inc();
        if (!refused)
            spdlog::warn("auth: pass-through check of {} failed, denying: {}", repo,
                         e->to_string());
        settle(id, false, refused);
    }
};

UpstreamAccessCheck::UpstreamAccessCheck(net::CurlLoop& loop, config::UpstreamConfig upstream,
                                         std::chrono::seconds ttl)
    : impl_(std::make_unique<Impl>(loop, std::move(upstream), ttl)) {}

UpstreamAccessCheck::~UpstreamAccessCheck() = default;

void UpstreamAccessCheck::check(std::string_view user, std::string_view password,
                                const std::string& repo, const std::string& reference, bool blob,
                                std::function<void(bool)> done) {
    Impl& m = *impl_;
    std::string id =
        s3::hmac_sha256(m.key, std::string(user) + '\0' + std::string(password) + '\0' + repo);
    if (auto it = m.decisions.find(id); it != m.decisions.end()) {
        if (it->second.expires > Clock::now()) {
            checks("cached").inc();
            return done(it->second.allowed);
        }
        m.decisions.erase(it);
    }
    if (auto it = m.pending.find(id); it != m.pending.end()) {
        it->second.waiters.push_back(std::move(done));
        return;
    }
    if (m.upstream.url.empty() || user.empty()) {
        checks("deny").inc();
        return done(false);
    }
    config::UpstreamConfig c = m.upstream;
    c.username = std::string(user);
    c.password = std::string(password);
    Impl::Pending& p = m.pending[id];
    p.client = std::make_unique<UpstreamRegistry>(m.loop, std::move(c));
    p.waiters.push_back(std::move(done));
    Impl* impl = impl_.get();
    UpstreamRegistry& client = *p.client;
    if (blob) {
        client.head_blob(repo, reference, [impl, id, repo](Result<UpstreamBlobHead> r) {
            impl->answer(id, repo, r ? nullptr : &r.error());
        });
    } else {
        client.head_manifest(repo, reference, kManifestAccept,
                             [impl, id, repo](Result<UpstreamManifest> r) {
                                 impl->answer(id, repo, r ? nullptr : &r.error());
                             });
    }
}

}  // namespace drayage::registry
