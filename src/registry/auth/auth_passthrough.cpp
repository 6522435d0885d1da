// auth.passthrough: access decided by the upstream with the client's own credentials (auth.hpp).
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <map>

#include "drayage/registry/auth.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/metrics.hpp"

namespace drayage::registry {

// ---- PassthroughQueue ---------------------------------------------------------------------------

bool PassthroughQueue::submit(const std::string& client, Job job) {
    Client& c = clients_[client];
    if (waiting_ >= limits_.waiting || c.waiting.size() >= limits_.waiting_per_client) {
        if (c.running == 0 && c.waiting.empty()) clients_.erase(client);
        return false;
    }
    if (c.waiting.empty()) turns_.push_back(client);
    c.waiting.push_back(std::move(job));
    ++waiting_;
    pump();
    return true;
}

void PassthroughQueue::finish(const std::string& client) {
    auto it = clients_.find(client);
    if (it == clients_.end() || it->second.running == 0) return;
    --it->second.running;
    --running_;
    if (it->second.running == 0 && it->second.waiting.empty()) clients_.erase(it);
    pump();
}

void PassthroughQueue::pump() {
    // A job that finishes (or submits) at once re-enters: the loop below picks that up.
    if (pumping_) return;
    pumping_ = true;
    // Addresses at their own limit go to the back; a whole round of them ends the loop.
    std::size_t passed = 0;
    while (running_ < limits_.running && !turns_.empty() && passed < turns_.size()) {
        std::string client = std::move(turns_.front());
        turns_.pop_front();
        Client& c = clients_[client];
        if (c.running >= limits_.running_per_client) {
            turns_.push_back(std::move(client));
            ++passed;
            continue;
        }
        passed = 0;
        Job job = std::move(c.waiting.front());
        c.waiting.pop_front();
        --waiting_;
        ++c.running;
        ++running_;
        if (!c.waiting.empty()) turns_.push_back(client);
        job();  // may finish() at once: `c` is not used after this
    }
    pumping_ = false;
}

// ---- UpstreamAccessCheck ------------------------------------------------------------------------

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
        "cached: answered from the decision cache; busy: too many checks waiting, not asked).",
        {{"result", std::string(result)}});
}

metrics::Gauge& queue_gauge(std::string_view state) {
    return metrics::global().gauge(
        "drayage_auth_passthrough_checks",
        "Pass-through checks in flight upstream (running) and waiting for their turn (waiting).",
        {{"state", std::string(state)}});
}

// The address of an "ip:port" or "[v6]:port" peer.
std::string address_of(std::string_view peer) {
    auto colon = peer.rfind(':');
    return std::string(colon == std::string_view::npos ? peer : peer.substr(0, colon));
}

// Answers by HMAC key, each until it expires; at the cap the expired ones go first, then all.
template <typename T>
struct Memo {
    std::map<std::string, std::pair<T, Clock::time_point>> entries;

    std::optional<T> find(const std::string& key) {
        auto it = entries.find(key);
        if (it == entries.end()) return std::nullopt;
        if (it->second.second > Clock::now()) return it->second.first;
        entries.erase(it);
        return std::nullopt;
    }
    void put(const std::string& key, T value, std::chrono::seconds ttl) {
        auto now = Clock::now();
        if (entries.size() >= kMaxDecisions)
            std::erase_if(entries, [now](const auto& e) { return e.second.second <= now; });
        if (entries.size() >= kMaxDecisions) entries.clear();
        entries[key] = {std::move(value), now + ttl};
    }
};

}  // namespace

struct UpstreamAccessCheck::Impl {
    std::chrono::seconds ttl;
    std::string key;  // HMAC key: credentials are never kept in the clear
    bool configured;  // upstream.url is set
    // Every check asks through this one client, each with the client's credentials: the
    // registry's challenge is learned once and connections are reused.
    UpstreamRegistry upstream;
    PassthroughQueue queue{{kMaxRunning, kMaxRunningPerClient, kMaxWaiting, kMaxWaitingPerClient}};

    Memo<bool> decisions;  // HMAC(credentials, repository) -> readable
    Memo<bool> refused;    // HMAC(credentials) -> the token endpoint answered 401
    std::map<std::string, std::vector<std::function<void(PassthroughVerdict)>>> pending;

    static config::UpstreamConfig without_credentials(config::UpstreamConfig u) {
        // drayage's own upstream credentials must never answer for a client.
        u.username.clear();
        u.password.clear();
        return u;
    }

    Impl(net::CurlLoop& loop, config::UpstreamConfig u, std::chrono::seconds t)
        : ttl(t),
          key(32, '\0'),
          configured(!u.url.empty()),
          upstream(loop, without_credentials(std::move(u))) {
        if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), 32) != 1) {
            spdlog::critical("RAND_bytes failed: cannot make a pass-through cache key");
            std::abort();
        }
    }

    void show_queue() {
        queue_gauge("running").set(static_cast<std::int64_t>(queue.running()));
        queue_gauge("waiting").set(static_cast<std::int64_t>(queue.waiting()));
    }

    void settle(const std::string& id, PassthroughVerdict verdict) {
        auto it = pending.find(id);
        if (it == pending.end()) return;
        auto waiters = std::move(it->second);
        pending.erase(it);
        for (auto& w : waiters)
            w(verdict);
    }

    // A check's turn: ask the upstream as the client, unless its credentials were refused
    // meanwhile (by another check of the same credentials that ran first).
    void run(const std::string& client, const std::string& id, const std::string& creds,
             UpstreamCredentials as, const std::string& repo, const std::string& reference,
             bool blob) {
        if (refused.find(creds)) {
            checks("cached").inc();
            settle(id, PassthroughVerdict::denied);
            queue.finish(client);
            return show_queue();
        }
        auto done = [this, client, id, creds, repo](const Error* e) {
            answer(id, creds, repo, e);
            queue.finish(client);
            show_queue();
        };
        if (blob) {
            upstream.head_blob(
                repo, reference,
                [done](Result<UpstreamBlobHead> r) { done(r ? nullptr : &r.error()); },
                std::move(as));
        } else {
            upstream.head_manifest(
                repo, reference, kManifestAccept,
                [done](Result<UpstreamManifest> r) { done(r ? nullptr : &r.error()); },
                std::move(as));
        }
    }

    // 200/404 after the registry's own access check: readable; 401/403: not; else: unknown.
    void answer(const std::string& id, const std::string& creds, const std::string& repo,
                const Error* e) {
        if (e == nullptr || e->code == "NOT_FOUND") {
            checks("allow").inc();
            decisions.put(id, true, ttl);
            return settle(id, PassthroughVerdict::allowed);
        }
        bool refused_credentials = e->code == "TOKEN_REFUSED";
        bool refused_repository = e->status == 401 || e->status == 403;
        checks(refused_repository ? "deny" : "error").inc();
        if (refused_credentials) refused.put(creds, true, ttl);
        if (refused_repository) {
            decisions.put(id, false, ttl);
        } else {
            spdlog::warn("auth: pass-through check of {} failed, denying: {}", repo,
                         e->to_string());
        }
        settle(id, PassthroughVerdict::denied);
    }
};

UpstreamAccessCheck::UpstreamAccessCheck(net::CurlLoop& loop, config::UpstreamConfig upstream,
                                         std::chrono::seconds ttl)
    : impl_(std::make_unique<Impl>(loop, std::move(upstream), ttl)) {}

UpstreamAccessCheck::~UpstreamAccessCheck() = default;

void UpstreamAccessCheck::check(std::string_view client, std::string_view user,
                                std::string_view password, const std::string& repo,
                                const std::string& reference, bool blob,
                                std::function<void(PassthroughVerdict)> done) {
    Impl& m = *impl_;
    std::string creds =
        digest::hmac_sha256(m.key, std::string(user) + '\0' + std::string(password));
    std::string id = digest::hmac_sha256(m.key, creds + repo);
    if (auto known = m.decisions.find(id)) {
        checks("cached").inc();
        return done(*known ? PassthroughVerdict::allowed : PassthroughVerdict::denied);
    }
    if (m.refused.find(creds)) {
        checks("cached").inc();
        return done(PassthroughVerdict::denied);
    }
    if (auto it = m.pending.find(id); it != m.pending.end()) {
        it->second.push_back(std::move(done));
        return;
    }
    if (!m.configured || user.empty()) {
        checks("deny").inc();
        return done(PassthroughVerdict::denied);
    }
    m.pending[id].push_back(std::move(done));
    std::string address = address_of(client);
    Impl* impl = impl_.get();
    UpstreamCredentials as{std::string(user), std::string(password)};
    bool queued = m.queue.submit(address, [impl, address, id, creds, as, repo, reference, blob] {
        impl->run(address, id, creds, as, repo, reference, blob);
    });
    if (!queued) {
        checks("busy").inc();
        spdlog::warn("auth: pass-through check of {} for {} not run: too many checks waiting", repo,
                     address);
        m.settle(id, PassthroughVerdict::busy);
    }
    m.show_queue();
}

}  // namespace drayage::registry
