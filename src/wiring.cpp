// serve(): one function per component, called in dependency order, each owning what it builds
// in Components (see wiring.hpp).
#include "wiring.hpp"

#include <event2/event.h>
#include <event2/thread.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <memory>
#include <string>
#include <thread>

#include "drayage/cache/cache.hpp"
#include "drayage/http/server.hpp"
#include "drayage/http/tls.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/registry/bucket_origin.hpp"
#include "drayage/registry/forwarder.hpp"
#include "drayage/registry/front.hpp"
#include "drayage/registry/push.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/registry/upstream_origin.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/util/log.hpp"
#include "workers.hpp"

namespace drayage {
namespace {

struct EventDeleter {
    void operator()(event* e) const { event_free(e); }
};
struct BaseDeleter {
    void operator()(event_base* b) const { event_base_free(b); }
};

// What serve() builds. Members are destroyed in reverse order: the servers before the front,
// the front before what it uses, the loop last.
struct Components {
    std::unique_ptr<event_base, BaseDeleter> base;
    std::unique_ptr<cache::Cache> cache;
    std::unique_ptr<net::CurlLoop> curl;
    std::unique_ptr<registry::UpstreamRegistry> upstream;
    registry::FrontDeps deps;  // filled by the wire_* steps, then moved into the front
    std::unique_ptr<s3::Client> s3_client;
    std::shared_ptr<registry::Fetcher> fetcher;  // misses and push read-backs, one flight each
    std::unique_ptr<registry::BlobUploads> uploads;
    std::unique_ptr<registry::Forwarder> forwarder;
    std::unique_ptr<registry::Authenticator> authenticator;
    std::unique_ptr<registry::UpstreamAccessCheck> upstream_access;
    std::unique_ptr<registry::RegistryFront> front;
    std::unique_ptr<http::TlsContext> tls;
    std::unique_ptr<http::Server> server;
    std::unique_ptr<HitWorkers> hit_workers;
};

// Raises the open-files soft limit to the hard one and warns when max_connections cannot be
// reached under it. Before anything opens descriptors of its own.
void check_open_files(const config::Config& cfg) {
    const std::uint64_t max_connections = cfg.http.limits.max_connections;
    const auto files = http::raise_open_files_limit(max_connections, 1 + cfg.http.workers);
    if (files.soft != files.soft_before) {
        spdlog::info("open-files limit raised from {} to {} (the hard limit)", files.soft_before,
                     files.soft);
    }
    if (files.fits()) return;
    spdlog::warn(
        "open-files limit {} is below the {} that http.limits.max_connections {} needs (one per "
        "connection, {} for the rest of the process): when they run out, accepting pauses until "
        "a connection closes. Raise the hard limit (systemd LimitNOFILE=, docker run --ulimit "
        "nofile=N:N) or lower max_connections",
        files.soft, files.needed, max_connections, files.needed - max_connections);
}

bool open_cache(Components& c, const config::Config& cfg) {
    cache::CacheOptions cache_options;
    cache_options.config = cfg.cache;
    auto opened = cache::Cache::open(c.base.get(), cache_options);
    if (!opened) {
        spdlog::critical("cannot open the cache: {}", opened.error().message);
        return false;
    }
    c.cache = std::move(*opened);
    return true;
}

// The origins of a miss, in order: the bucket (storage.s3), then the upstream registry.
bool wire_origins(Components& c, const config::Config& cfg) {
    c.curl = std::make_unique<net::CurlLoop>(c.base.get());
    if (!cfg.upstream.url.empty())
        c.upstream = std::make_unique<registry::UpstreamRegistry>(*c.curl, cfg.upstream);

    c.deps.config = &cfg;
    c.deps.cache = c.cache.get();
    c.deps.upstream = c.upstream.get();
    if (cfg.storage.s3) {
        s3::ClientTuning tuning;
        tuning.connect_timeout = cfg.storage.s3->connect_timeout;
        tuning.stall_timeout = cfg.storage.s3->stall_timeout;
        auto client = s3::Client::create(*c.curl, *cfg.storage.s3, config::environment(), tuning);
        if (!client) {
            spdlog::critical("storage.s3: {}", client.error().message);
            return false;
        }
        c.s3_client = std::move(*client);
        c.deps.bucket = c.s3_client.get();
        c.deps.origins.sources.push_back(
            {registry::make_bucket_origin(*c.s3_client, cfg.storage.s3->rootdirectory), false});
    }
    // storage.s3.writethrough: what the upstream sends is kept in the bucket too.
    if (c.upstream) {
        c.deps.origins.sources.push_back({registry::make_upstream_origin(*c.upstream),
                                          cfg.storage.s3 && cfg.storage.s3->writethrough});
    }
    c.fetcher = std::make_shared<registry::Fetcher>(
        *c.cache, c.s3_client.get(), cfg.storage.s3 ? cfg.storage.s3->rootdirectory : "");
    c.deps.fetcher = c.fetcher;
    return true;
}

// Push path: uploads into the bucket (none without storage.s3).
void wire_uploads(Components& c, const config::Config& cfg) {
    if (!c.s3_client) return;
    registry::UploadOptions upload_options;
    upload_options.session_ttl = cfg.uploads.session_ttl;
    upload_options.max_sessions = static_cast<std::size_t>(cfg.uploads.max_sessions);
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    auto listen = config::parse_listen_address(cfg.http.addr);
    upload_options.node = std::string(host) + "-" + (listen ? std::to_string(listen->port) : "0");
    c.uploads = std::make_unique<registry::BlobUploads>(c.base.get(), *c.s3_client, c.cache.get(),
                                                        c.fetcher, upload_options);
    c.uploads->recover([](Status st) {
        if (!st) spdlog::warn("cleanup of leftover uploads failed: {}", st.error().message);
    });
    c.deps.uploads = [u = c.uploads.get()](std::shared_ptr<http::Exchange> ex,
                                           const registry::Route& r) { u->handle(ex, r); };
}

// Everything drayage does not serve itself goes to the upstream registry.
void wire_forwarder(Components& c, const config::Config& cfg) {
    if (cfg.upstream.url.empty()) return;
    registry::ForwarderOptions forward_options;
    forward_options.upstream_url = cfg.upstream.url;
    forward_options.client_scheme = cfg.http.tls.certificate.empty() ? "http" : "https";
    forward_options.connect_timeout = cfg.upstream.connect_timeout;
    forward_options.stall_timeout = cfg.upstream.stall_timeout;
    forward_options.total_timeout = cfg.upstream.timeout;
    // With drayage's own realm, clients' credentials stay here; drayage's go upstream.
    if (cfg.auth) forward_options.credentials = c.upstream.get();
    c.forwarder = std::make_unique<registry::Forwarder>(*c.curl, forward_options);
    c.deps.forward = [f = c.forwarder.get()](std::shared_ptr<http::Exchange> ex,
                                             registry::ForwardGate gate) {
        f->handle(ex, std::move(gate));
    };
}

// Client authentication and per-repository rules; without `auth` an open mirror.
bool wire_auth(Components& c, const config::Config& cfg) {
    if (!cfg.auth) return true;
    auto a = registry::Authenticator::create(*cfg.auth, registry::is_docker_hub(cfg.upstream.url),
                                             !cfg.http.tls.certificate.empty());
    if (!a) {
        spdlog::critical("auth: {}", a.error().message);
        return false;
    }
    c.authenticator = std::move(*a);
    // bcrypt off the loop: 2 threads, up to 4 on larger machines (half the CPUs).
    const int verifiers =
        std::clamp(static_cast<int>(std::thread::hardware_concurrency() / 2), 2, 4);
    if (auto st = c.authenticator->start_verifier(c.base.get(), verifiers); !st) {
        spdlog::critical("auth: {}", st.error().message);
        return false;
    }
    c.deps.auth = c.authenticator.get();
    if (!cfg.auth->passthrough.empty() && !cfg.upstream.url.empty()) {
        c.upstream_access = std::make_unique<registry::UpstreamAccessCheck>(
            *c.curl, cfg.upstream, cfg.auth->passthrough_ttl);
        c.deps.upstream_access = c.upstream_access.get();
        c.authenticator->set_upstream_access(c.upstream_access.get());
    }
    spdlog::info("auth: on ({} rule(s)); tokens at /auth/token", cfg.auth->rules.size());
    return true;
}

// The main loop's server (TLS when configured) and the hit workers beside it.
bool start_http(Components& c, const config::Config& cfg) {
    http::ServerOptions server_options;
    server_options.addr = cfg.http.addr;
    server_options.limits = cfg.http.limits;
    if (!cfg.http.tls.certificate.empty()) {
        auto t = http::TlsContext::load(cfg.http.tls.certificate, cfg.http.tls.key);
        if (!t) {
            spdlog::critical("{}", t.error().message);
            return false;
        }
        c.tls = std::move(*t);
        server_options.tls = c.tls.get();
    }
    // Hit workers only over plain HTTP: a TLS session cannot be carried across a hand-off.
    const int workers = c.tls ? 0 : cfg.http.workers;
    server_options.reuse_port = workers > 0;
    // One max_connections for the process, however the kernel spreads accepts over the loops.
    server_options.connection_count = std::make_shared<std::atomic<std::size_t>>(0);
    c.server = std::make_unique<http::Server>(
        c.base.get(), server_options,
        [front = c.front.get()](std::shared_ptr<http::Exchange> ex) { front->handle(ex); });
    if (auto st = c.server->listen(); !st) {
        spdlog::critical("cannot listen on {}: {}", cfg.http.addr, st.error().message);
        return false;
    }
    c.hit_workers =
        std::make_unique<HitWorkers>(c.base.get(), *c.server, *c.cache, c.authenticator.get());
    if (workers > 0) {
        if (auto st = c.hit_workers->start(workers, server_options); !st) {
            spdlog::critical("http.workers: {}", st.error().message);
            return false;
        }
    }
    return true;
}

// What the signal handlers act on.
struct SignalContext {
    event_base* base;
    http::Server* server;
    std::chrono::milliseconds grace;
    registry::Authenticator* auth;
    http::TlsContext* tls;
    std::string config_file;
    HitWorkers* workers;
    bool stopping = false;
    int pending = 0;
};

// SIGTERM, SIGINT: let transfers finish within the grace, then end the loop; a second signal
// ends it at once.
void on_stop_signal(evutil_socket_t sig, short, void* arg) {
    auto* c = static_cast<SignalContext*>(arg);
    if (c->stopping) {
        spdlog::warn("second signal {}: exiting now", sig);
        event_base_loopbreak(c->base);
        return;
    }
    c->stopping = true;
    spdlog::info("signal {}: shutting down (grace {} ms)", sig, c->grace.count());
    // The loop ends once the main server and every hit worker have let their transfers
    // finish (or the grace ran out).
    c->pending = 2;
    auto one_done = [c] {
        if (--c->pending == 0) event_base_loopexit(c->base, nullptr);
    };
    c->workers->stop(c->grace, one_done);
    c->server->shutdown(c->grace, one_done);
}

// Rules and the htpasswd file come from the config file as it is now.
void reload_auth(registry::Authenticator& auth, const std::string& config_file) {
    auto fresh = config::load_file(config_file, config::environment());
    if (!fresh) {
        spdlog::error("SIGHUP: auth rules not reloaded, the old ones stay: {}",
                      fresh.error().message);
    } else if (!fresh->auth) {
        spdlog::error(
            "SIGHUP: the auth section is gone; turning auth off needs a "
            "restart, the old rules stay");
    } else if (auto st = auth.reload(*fresh->auth); !st) {
        spdlog::error("SIGHUP: auth rules not reloaded, the old ones stay: {}", st.error().message);
    } else {
        spdlog::info("SIGHUP: auth rules and htpasswd reloaded ({} rule(s))",
                     fresh->auth->rules.size());
    }
}

// New connections get the new certificate; running ones keep theirs.
void reload_tls(http::TlsContext& tls) {
    if (auto st = tls.reload(); !st)
        spdlog::error("SIGHUP: TLS certificate not reloaded, the old one stays: {}",
                      st.error().message);
    else
        spdlog::info("SIGHUP: TLS certificate reloaded (generation {})", tls.generation());
}

// SIGHUP: reopen the log file, reload the auth rules and the TLS certificate.
void on_hup_signal(evutil_socket_t, short, void* arg) {
    auto* c = static_cast<SignalContext*>(arg);
    // Failure is logged by reopen(); the old file stays in use.
    (void)drayage::log::reopen();
    if (c->auth) reload_auth(*c->auth, c->config_file);
    if (c->tls) reload_tls(*c->tls);
}

// Runs the loop until SIGTERM or SIGINT has stopped the servers.
void run_until_stopped(Components& c, const config::Config& cfg) {
    SignalContext ctx{c.base.get(),          c.server.get(), cfg.http.limits.shutdown_grace,
                      c.authenticator.get(), c.tls.get(),    cfg.source_file,
                      c.hit_workers.get()};
    event_base* base = c.base.get();
    std::unique_ptr<event, EventDeleter> sigterm(evsignal_new(base, SIGTERM, on_stop_signal, &ctx));
    std::unique_ptr<event, EventDeleter> sigint(evsignal_new(base, SIGINT, on_stop_signal, &ctx));
    std::unique_ptr<event, EventDeleter> sighup(evsignal_new(base, SIGHUP, on_hup_signal, &ctx));
    evsignal_add(sigterm.get(), nullptr);
    evsignal_add(sigint.get(), nullptr);
    evsignal_add(sighup.get(), nullptr);
    event_base_dispatch(base);
}

}  // namespace

int serve(const config::Config& cfg, const char* version) {
    std::signal(SIGPIPE, SIG_IGN);
    check_open_files(cfg);
    // The hit workers wake the main loop (and it them) across threads, and so do the password
    // verifier threads.
    evthread_use_pthreads();
    Components c;
    c.base.reset(event_base_new());
    if (!c.base) {
        spdlog::critical("cannot create the event loop");
        return 1;
    }
    if (!open_cache(c, cfg) || !wire_origins(c, cfg)) return 1;
    wire_uploads(c, cfg);
    wire_forwarder(c, cfg);
    if (!wire_auth(c, cfg)) return 1;
    c.front = std::make_unique<registry::RegistryFront>(std::move(c.deps));
    if (!start_http(c, cfg)) return 1;
    spdlog::info("drayage {} listening on {} (port {}); cache {} (max {} bytes); upstream {}{}",
                 version, cfg.http.addr, c.server->port(), cfg.cache.path, cfg.cache.max_size,
                 cfg.upstream.url.empty() ? "none" : cfg.upstream.url,
                 cfg.storage.s3 ? "; bucket " + cfg.storage.s3->bucket : "");
    run_until_stopped(c, cfg);
    spdlog::info("drayage stopped");
    return 0;
}

}  // namespace drayage
