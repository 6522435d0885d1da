// drayage entry point: arguments, configuration, logging, signals, and the wiring of the modules.
//
//   drayage [--config FILE]                     serve
//   drayage --check-config [--config FILE]      validate, print the effective config, exit
//   drayage cache stats|ls|verify|evict ...     operator commands on cache.path
//   drayage healthcheck [--config FILE]         GET /healthz on http.addr (container HEALTHCHECK)
//
// Exit status: 0 ok, 1 runtime failure (cannot listen, cannot open the cache), 2 bad arguments or
// an invalid configuration.
#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <malloc.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "drayage/cache/cache.hpp"
#include "drayage/cache/cli.hpp"
#include "drayage/config/config.hpp"
#include "drayage/http/server.hpp"
#include "drayage/http/tls.hpp"
#include "drayage/net/curl_loop.hpp"
#include "drayage/registry/auth.hpp"
#include "drayage/registry/bucket_origin.hpp"
#include "drayage/registry/front.hpp"
#include "drayage/registry/passthrough.hpp"
#include "drayage/registry/push.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/util/log.hpp"
#include "workers.hpp"

namespace {

constexpr const char* kDefaultConfig = "/etc/drayage/drayage.yml";
constexpr const char* kVersion = "0.1.0";

void usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: drayage [--config FILE]                 serve\n"
                 "       drayage --check-config [--config FILE]  validate and print the config\n"
                 "       drayage cache stats|ls|verify|evict DIGEST|--all [--config FILE]\n"
                 "       drayage healthcheck [--config FILE]     GET /healthz on http.addr\n"
                 "       drayage --version\n"
                 "The default config file is %s.\n",
                 kDefaultConfig);
}

struct Args {
    std::string config = kDefaultConfig;
    bool check_config = false;
    bool healthcheck = false;
    std::vector<std::string> cache_args;  // non-empty: `drayage cache ...`
};

// Returns an exit status to stop with, or -1 to go on.
int parse_args(int argc, char** argv, Args& args) {
    bool in_cache = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--config" || a == "-c") {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "drayage: %s needs a file\n", a.c_str());
                return 2;
            }
            args.config = argv[++i];
        } else if (a.rfind("--config=", 0) == 0) {
            args.config = a.substr(9);
        } else if (a == "--help" || a == "-h") {
            usage(stdout);
            return 0;
        } else if (a == "--version") {
            std::printf("drayage %s\n", kVersion);
            return 0;
        } else if (in_cache) {
            args.cache_args.push_back(a);
        } else if (a == "--check-config") {
            args.check_config = true;
        } else if (a == "cache" && i == 1) {
            in_cache = true;
        } else if (a == "healthcheck" && i == 1) {
            args.healthcheck = true;
        } else {
            std::fprintf(stderr, "drayage: unknown argument '%s'\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    if (in_cache && args.cache_args.empty()) {
        std::fprintf(stderr, "drayage: cache needs a command: stats, ls, verify, evict\n");
        return 2;
    }
    return -1;
}

// GET /healthz on the configured address; 0 when it answers 200.
int healthcheck(const drayage::config::Config& cfg) {
    std::string addr = cfg.http.addr;
    auto colon = addr.rfind(':');
    std::string host = colon == std::string::npos ? "" : addr.substr(0, colon);
    std::string port = colon == std::string::npos ? addr : addr.substr(colon + 1);
    if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || !res) {
        std::fprintf(stderr, "drayage: healthcheck: cannot resolve %s\n", addr.c_str());
        return 1;
    }
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    timeval tv{3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0) {
        std::fprintf(stderr, "drayage: healthcheck: cannot connect to %s: %s\n", addr.c_str(),
                     std::strerror(errno));
        close(fd);
        return 1;
    }
    std::string req = "GET /healthz HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
    if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
        close(fd);
        return 1;
    }
    char buf[64] = {};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    bool ok = n > 12 && std::strncmp(buf, "HTTP/1.1 200", 12) == 0;
    if (!ok) std::fprintf(stderr, "drayage: healthcheck: unhealthy answer from %s\n", addr.c_str());
    return ok ? 0 : 1;
}

struct EventDeleter {
    void operator()(event* e) const { event_free(e); }
};
struct BaseDeleter {
    void operator()(event_base* b) const { event_base_free(b); }
};

// Raises the open-files soft limit to the hard one and warns when max_connections cannot be
// reached under it. Before anything opens descriptors of its own.
void check_open_files(const drayage::config::Config& cfg) {
    const std::uint64_t max_connections = cfg.http.limits.max_connections;
    const auto files = drayage::http::raise_open_files_limit(max_connections, 1 + cfg.http.workers);
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

int serve(const drayage::config::Config& cfg) {
    using namespace drayage;
    std::signal(SIGPIPE, SIG_IGN);
    check_open_files(cfg);
    // The hit workers wake the main loop (and it them) across threads, and so do the password
    // verifier threads.
    evthread_use_pthreads();
    std::unique_ptr<event_base, BaseDeleter> base(event_base_new());
    if (!base) {
        spdlog::critical("cannot create the event loop");
        return 1;
    }

    cache::CacheOptions cache_options;
    cache_options.config = cfg.cache;
    auto opened = cache::Cache::open(base.get(), cache_options);
    if (!opened) {
        spdlog::critical("cannot open the cache: {}", opened.error().message);
        return 1;
    }
    std::unique_ptr<cache::Cache> blob_cache = std::move(*opened);

    net::CurlLoop curl(base.get());
    std::unique_ptr<registry::UpstreamRegistry> upstream;
    if (!cfg.upstream.url.empty())
        upstream = std::make_unique<registry::UpstreamRegistry>(curl, cfg.upstream);

    registry::FrontDeps deps;
    deps.config = &cfg;
    deps.cache = blob_cache.get();
    deps.upstream = upstream.get();
    std::unique_ptr<s3::Client> s3_client;
    if (cfg.storage.s3) {
        s3::ClientTuning tuning;
        tuning.connect_timeout = cfg.storage.s3->connect_timeout;
        tuning.stall_timeout = cfg.storage.s3->stall_timeout;
        auto client = s3::Client::create(curl, *cfg.storage.s3, config::environment(), tuning);
        if (!client) {
            spdlog::critical("storage.s3: {}", client.error().message);
            return 1;
        }
        s3_client = std::move(*client);
        deps.bucket = s3_client.get();
        deps.origins.push_back(
            registry::make_bucket_origin(*s3_client, cfg.storage.s3->rootdirectory));
    }
    if (upstream) deps.origins.push_back(registry::make_upstream_origin(*upstream));

    // Push path: uploads into the bucket, everything else drayage does not serve to the registry.
    std::unique_ptr<registry::BlobUploads> uploads;
    if (s3_client) {
        registry::UploadOptions upload_options;
        upload_options.session_ttl = cfg.uploads.session_ttl;
        upload_options.max_sessions = static_cast<std::size_t>(cfg.uploads.max_sessions);
        char host[256] = {};
        gethostname(host, sizeof host - 1);
        auto listen = config::parse_listen_address(cfg.http.addr);
        upload_options.node =
            std::string(host) + "-" + (listen ? std::to_string(listen->port) : "0");
        uploads = std::make_unique<registry::BlobUploads>(base.get(), *s3_client, blob_cache.get(),
                                                          upload_options);
        uploads->recover([](drayage::Status st) {
            if (!st) spdlog::warn("cleanup of leftover uploads failed: {}", st.error().message);
        });
        deps.uploads = [u = uploads.get()](std::shared_ptr<http::Exchange> ex,
                                           const registry::Route& r) { u->handle(ex, r); };
    }
    std::unique_ptr<registry::Passthrough> passthrough;
    if (!cfg.upstream.url.empty()) {
        registry::PassthroughOptions pass_options;
        pass_options.upstream_url = cfg.upstream.url;
        pass_options.client_scheme = cfg.http.tls.certificate.empty() ? "http" : "https";
        pass_options.connect_timeout = cfg.upstream.connect_timeout;
        pass_options.stall_timeout = cfg.upstream.stall_timeout;
        pass_options.total_timeout = cfg.upstream.timeout;
        // With drayage's own realm, clients' credentials stay here; drayage's go upstream.
        if (cfg.auth) pass_options.credentials = upstream.get();
        passthrough = std::make_unique<registry::Passthrough>(curl, pass_options);
        deps.passthrough = [p = passthrough.get()](std::shared_ptr<http::Exchange> ex) {
            p->handle(ex);
        };
    }
    // Client authentication and per-repository rules; without `auth` an open mirror.
    std::unique_ptr<registry::Authenticator> authenticator;
    std::unique_ptr<registry::UpstreamAccessCheck> upstream_access;
    if (cfg.auth) {
        auto a =
            registry::Authenticator::create(*cfg.auth, registry::is_docker_hub(cfg.upstream.url),
                                            !cfg.http.tls.certificate.empty());
        if (!a) {
            spdlog::critical("auth: {}", a.error().message);
            return 1;
        }
        authenticator = std::move(*a);
        // bcrypt off the loop: 2 threads, up to 4 on larger machines (half the CPUs).
        const int verifiers =
            std::clamp(static_cast<int>(std::thread::hardware_concurrency() / 2), 2, 4);
        if (auto st = authenticator->start_verifier(base.get(), verifiers); !st) {
            spdlog::critical("auth: {}", st.error().message);
            return 1;
        }
        deps.auth = authenticator.get();
        if (!cfg.auth->passthrough.empty() && !cfg.upstream.url.empty()) {
            upstream_access = std::make_unique<registry::UpstreamAccessCheck>(
                curl, cfg.upstream, cfg.auth->passthrough_ttl);
            deps.upstream_access = upstream_access.get();
            authenticator->set_upstream_access(upstream_access.get());
        }
        spdlog::info("auth: on ({} rule(s)); tokens at /auth/token", cfg.auth->rules.size());
    }
    registry::RegistryFront front(std::move(deps));

    http::ServerOptions server_options;
    server_options.addr = cfg.http.addr;
    server_options.limits = cfg.http.limits;
    std::unique_ptr<http::TlsContext> tls;
    if (!cfg.http.tls.certificate.empty()) {
        auto t = http::TlsContext::load(cfg.http.tls.certificate, cfg.http.tls.key);
        if (!t) {
            spdlog::critical("{}", t.error().message);
            return 1;
        }
        tls = std::move(*t);
        server_options.tls = tls.get();
    }
    // Hit workers only over plain HTTP: a TLS session cannot be carried across a hand-off.
    const int workers = tls ? 0 : cfg.http.workers;
    server_options.reuse_port = workers > 0;
    // One max_connections for the process, however the kernel spreads accepts over the loops.
    server_options.connection_count = std::make_shared<std::atomic<std::size_t>>(0);
    http::Server server(base.get(), server_options,
                        [&front](std::shared_ptr<http::Exchange> ex) { front.handle(ex); });
    if (auto st = server.listen(); !st) {
        spdlog::critical("cannot listen on {}: {}", cfg.http.addr, st.error().message);
        return 1;
    }
    HitWorkers hit_workers(base.get(), server, *blob_cache, authenticator.get());
    if (workers > 0) {
        if (auto st = hit_workers.start(workers, server_options); !st) {
            spdlog::critical("http.workers: {}", st.error().message);
            return 1;
        }
    }
    spdlog::info("drayage {} listening on {} (port {}); cache {} (max {} bytes); upstream {}{}",
                 kVersion, cfg.http.addr, server.port(), cfg.cache.path, cfg.cache.max_size,
                 cfg.upstream.url.empty() ? "none" : cfg.upstream.url,
                 cfg.storage.s3 ? "; bucket " + cfg.storage.s3->bucket : "");

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
    } ctx{base.get(),          &server,   cfg.http.limits.shutdown_grace,
          authenticator.get(), tls.get(), cfg.source_file,
          &hit_workers};

    auto on_stop = [](evutil_socket_t sig, short, void* arg) {
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
    };
    auto on_hup = [](evutil_socket_t, short, void* arg) {
        auto* c = static_cast<SignalContext*>(arg);
        // Failure is logged by reopen(); the old file stays in use.
        (void)drayage::log::reopen();
        if (c->auth) {
            // Rules and the htpasswd file come from the config file as it is now.
            auto fresh = drayage::config::load_file(c->config_file, drayage::config::environment());
            if (!fresh) {
                spdlog::error("SIGHUP: auth rules not reloaded, the old ones stay: {}",
                              fresh.error().message);
            } else if (!fresh->auth) {
                spdlog::error(
                    "SIGHUP: the auth section is gone; turning auth off needs a "
                    "restart, the old rules stay");
            } else if (auto st = c->auth->reload(*fresh->auth); !st) {
                spdlog::error("SIGHUP: auth rules not reloaded, the old ones stay: {}",
                              st.error().message);
            } else {
                spdlog::info("SIGHUP: auth rules and htpasswd reloaded ({} rule(s))",
                             fresh->auth->rules.size());
            }
        }
        if (c->tls) {
            // New connections get the new certificate; running ones keep theirs.
            if (auto st = c->tls->reload(); !st)
                spdlog::error("SIGHUP: TLS certificate not reloaded, the old one stays: {}",
                              st.error().message);
            else
                spdlog::info("SIGHUP: TLS certificate reloaded (generation {})",
                             c->tls->generation());
        }
    };
    std::unique_ptr<event, EventDeleter> sigterm(evsignal_new(base.get(), SIGTERM, on_stop, &ctx));
    std::unique_ptr<event, EventDeleter> sigint(evsignal_new(base.get(), SIGINT, on_stop, &ctx));
    std::unique_ptr<event, EventDeleter> sighup(evsignal_new(base.get(), SIGHUP, on_hup, &ctx));
    evsignal_add(sigterm.get(), nullptr);
    evsignal_add(sigint.get(), nullptr);
    evsignal_add(sighup.get(), nullptr);

    event_base_dispatch(base.get());
    spdlog::info("drayage stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // Blob chunks (ours and LMDB's overflow pages) are 256 KiB, above glibc's initial mmap
    // threshold: every chunk was an mmap, page faults on zeroed pages, and a munmap. Keep them in
    // the heap and reuse them. Measured on a cold 1 GiB pull: see docs/performance.md.
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    // Chunks are allocated on one thread and freed on another (loop, hasher, writer, workers):
    // two arenas hold less idle memory than one per thread.
    mallopt(M_ARENA_MAX, 2);
    Args args;
    if (int rc = parse_args(argc, argv, args); rc >= 0) return rc;

    auto loaded = drayage::config::load_file(args.config, drayage::config::environment());
    if (!loaded) {
        std::fprintf(stderr, "drayage: %s\n", loaded.error().message.c_str());
        return 2;
    }
    const drayage::config::Config& cfg = *loaded;
    if (args.check_config) {
        std::fputs(drayage::config::render_redacted(cfg).c_str(), stdout);
        return 0;
    }
    if (args.healthcheck) return healthcheck(cfg);
    if (!args.cache_args.empty())
        return drayage::cache::run_cache_command(args.cache_args, cfg.cache);

    drayage::log::Options log_options;
    log_options.level = cfg.log.level;
    log_options.json = cfg.log.format == "json";
    log_options.file = cfg.log.file;
    if (auto st = drayage::log::init(log_options); !st) {
        std::fprintf(stderr, "drayage: %s\n", st.error().message.c_str());
        return 1;
    }
    for (const auto& note : cfg.notes)
        spdlog::warn("config: {}", note);
    return serve(cfg);
}
