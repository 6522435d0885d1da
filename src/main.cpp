// drayage entry point: arguments, configuration and logging; serve() (wiring.cpp) builds and
// runs the server.
//
//   drayage [--config FILE]                     serve
//   drayage --check-config [--config FILE]      validate, print the effective config, exit
//   drayage cache stats|ls|verify|evict ...     operator commands on cache.path
//   drayage healthcheck [--config FILE]         GET /healthz on http.addr (container HEALTHCHECK)
//
// Exit status: 0 ok, 1 runtime failure (cannot listen, cannot open the cache), 2 bad arguments or
// an invalid configuration.
#include <malloc.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "drayage/cache/cli.hpp"
#include "drayage/config/config.hpp"
#include "drayage/util/log.hpp"
#include "wiring.hpp"

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
    return drayage::serve(cfg, kVersion);
}
