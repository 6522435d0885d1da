// upstream_tool: drives UpstreamRegistry from the command line, for the integration tests.
//
//   upstream_tool --url URL [--user U --password P] [--connect-timeout MS]
//                 [--response-timeout MS] [--stall-timeout MS]
//                 [--repeat N] [--parallel N] [--wait-stdin] [--metrics] COMMAND ARGS...
//   COMMAND: manifest REPO REF [--accept TYPES] [--head]
//            head-blob REPO DIGEST
//            blob REPO DIGEST [--out FILE|-] [--range FIRST-[LAST]] [--pause-every BYTES]
//            tags REPO [--query Q]
//            catalog [--query Q]
//
// Runs the operation --repeat times one after another, each time --parallel copies at once, all in
// one process (so one token cache), then prints one JSON line per operation and a summary line
// {"summary":true,"ok":K,"failed":F,"token_fetches":T}. Results go to stdout, or to stderr when
// the blob bytes go to stdout (--out -). With --wait-stdin, after each round but the last it
// prints "round done" to stderr and waits for a line on stdin (so a test can change the peers
// between rounds while the token cache lives on). --metrics prints the /metrics text to stderr at
// the end. Exit status: 0 all ok, 1 some failed, 2 usage.
#include <event2/event.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "drayage/net/curl_loop.hpp"
#include "drayage/registry/upstream.hpp"
#include "drayage/util/metrics.hpp"

using drayage::Error;
using drayage::Result;
using drayage::Status;
using namespace drayage::registry;
using nlohmann::json;

namespace {

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr, "upstream_tool: %s (see the comment at the top of upstream_tool.cpp)\n",
                 why.c_str());
    std::exit(2);
}

json error_json(const Error& e) {
    return json{{"ok", false}, {"code", e.code}, {"status", e.status}, {"message", e.message}};
}

json headers_json(const drayage::net::HeaderList& h) {
    json out = json::array();
    for (const auto& [k, v] : h)
        out.push_back(json::array({k, v}));
    return out;
}

// Hashes a streamed blob and writes it where asked; deletes the EVP context on destruction.
struct BlobSink {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    std::FILE* out = nullptr;
    bool close_out = false;
    std::uint64_t bytes = 0;
    std::uint64_t since_pause = 0;
    std::uint64_t pauses = 0;

    BlobSink() { EVP_DigestInit_ex(md, EVP_sha256(), nullptr); }
    ~BlobSink() {
        EVP_MD_CTX_free(md);
        if (close_out) std::fclose(out);
    }
    BlobSink(const BlobSink&) = delete;
    BlobSink& operator=(const BlobSink&) = delete;

    std::string hex() {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_DigestFinal_ex(md, d, &n);
        std::string s = "sha256:";
        for (unsigned int i = 0; i < n; ++i)
            s += fmt::format("{:02x}", d[i]);
        return s;
    }
};

struct Timer {
    event* ev = nullptr;
    std::function<void()> fn;
};

}  // namespace

int main(int argc, char** argv) {
    drayage::config::UpstreamConfig cfg;
    cfg.url.clear();
    int repeat = 1;
    int parallel = 1;
    bool print_metrics = false;
    bool wait_stdin = false;
    std::vector<std::string> pos;
    std::map<std::string, std::string> opt;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto need = [&]() -> std::string {
            if (i + 1 >= argc) usage("missing value for " + a);
            return argv[++i];
        };
        if (a == "--url") {
            cfg.url = need();
        } else if (a == "--user") {
            cfg.username = need();
        } else if (a == "--password") {
            cfg.password = need();
        } else if (a == "--connect-timeout") {
            cfg.connect_timeout = std::chrono::milliseconds(std::atol(need().c_str()));
        } else if (a == "--response-timeout") {
            cfg.response_timeout = std::chrono::milliseconds(std::atol(need().c_str()));
        } else if (a == "--stall-timeout") {
            cfg.stall_timeout = std::chrono::milliseconds(std::atol(need().c_str()));
        } else if (a == "--repeat") {
            repeat = std::atoi(need().c_str());
        } else if (a == "--parallel") {
            parallel = std::atoi(need().c_str());
        } else if (a == "--wait-stdin") {
            wait_stdin = true;
        } else if (a == "--metrics") {
            print_metrics = true;
        } else if (a == "--head") {
            opt.emplace("head", "yes");
        } else if (a == "--accept" || a == "--out" || a == "--range" || a == "--pause-every" ||
                   a == "--query") {
            opt[a.substr(2)] = need();
        } else if (a.rfind("--", 0) == 0) {
            usage("unknown option " + a);
        } else {
            pos.push_back(a);
        }
    }
    if (pos.empty()) usage("no command");
    const std::string cmd = pos[0];
    auto arg = [&](std::size_t i) -> std::string {
        if (i >= pos.size()) usage("missing argument for " + cmd);
        return pos[i];
    };

    event_base* base = event_base_new();
    int ok = 0;
    int failed = 0;
    {
        drayage::net::CurlLoop loop(base);
        UpstreamRegistry reg(loop, cfg);
        std::FILE* results = opt["out"] == "-" ? stderr : stdout;
        int outstanding = 0;
        int round = 0;
        std::vector<std::unique_ptr<BlobSink>> sinks;
        std::vector<std::shared_ptr<BlobFetch>> fetches;
        std::vector<std::unique_ptr<Timer>> timers;

        std::function<void()> start_round;
        auto report = [&](json j) {
            (j.value("ok", false) ? ok : failed)++;
            // Bodies are passed through as-is: replace invalid UTF-8 instead of throwing.
            std::fprintf(results, "%s\n",
                         j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
            std::fflush(results);
            if (--outstanding == 0) {
                if (++round < repeat) {
                    if (wait_stdin) {
                        std::fprintf(stderr, "round done\n");
                        std::fflush(stderr);
                        char line[256];
                        if (std::fgets(line, sizeof line, stdin) == nullptr) usage("stdin closed");
                    }
                    start_round();
                } else {
                    event_base_loopbreak(base);
                }
            }
        };

        auto one = [&]() {
            ++outstanding;
            if (cmd == "manifest") {
                auto done = [&](Result<UpstreamManifest> r) {
                    if (!r) return report(error_json(r.error()));
                    report(json{{"ok", true},
                                {"status", r->status},
                                {"media_type", r->media_type},
                                {"digest", r->digest},
                                {"size", r->size},
                                {"body", r->body}});
                };
                if (opt.count("head")) {
                    reg.head_manifest(arg(1), arg(2), opt["accept"], done);
                } else {
                    reg.get_manifest(arg(1), arg(2), opt["accept"], done);
                }
            } else if (cmd == "head-blob") {
                reg.head_blob(arg(1), arg(2), [&](Result<UpstreamBlobHead> r) {
                    if (!r) return report(error_json(r.error()));
                    report(json{{"ok", true},
                                {"status", r->status},
                                {"size", r->length},
                                {"digest", r->digest},
                                {"effective_url", r->effective_url}});
                });
            } else if (cmd == "blob") {
                sinks.push_back(std::make_unique<BlobSink>());
                BlobSink* sink = sinks.back().get();
                const std::string& out = opt["out"];
                if (out == "-") {
                    sink->out = stdout;
                } else if (!out.empty()) {
                    sink->out = std::fopen(out.c_str(), "wb");
                    if (sink->out == nullptr) usage("cannot open " + out);
                    sink->close_out = true;
                }
                std::optional<ByteRange> range;
                if (opt.count("range")) {
                    const std::string& r = opt["range"];
                    auto dash = r.find('-');
                    if (dash == std::string::npos) usage("--range FIRST-[LAST]");
                    range = ByteRange{std::stoull(r.substr(0, dash)), std::nullopt};
                    if (dash + 1 < r.size()) range->last = std::stoull(r.substr(dash + 1));
                }
                std::uint64_t pause_every =
                    opt.count("pause-every") ? std::stoull(opt["pause-every"]) : 0;
                auto head = std::make_shared<UpstreamBlobHead>();
                // The resume timer: a paused transfer is resumed from the loop, as a cache fill
                // would once its buffer drains.
                timers.push_back(std::make_unique<Timer>());
                Timer* timer = timers.back().get();
                fetches.emplace_back();
                std::size_t fetch_index = fetches.size() - 1;
                timer->ev = event_new(
                    base, -1, 0,
                    [](evutil_socket_t, short, void* t) { static_cast<Timer*>(t)->fn(); }, timer);
                timer->fn = [&fetches, fetch_index] { fetches[fetch_index]->resume(); };
                BlobHandlers h;
                h.on_head = [head](const UpstreamBlobHead& bh) {
                    *head = bh;
                    return true;
                };
                h.on_data = [sink, pause_every, timer](std::string_view data) {
                    EVP_DigestUpdate(sink->md, data.data(), data.size());
                    if (sink->out != nullptr) std::fwrite(data.data(), 1, data.size(), sink->out);
                    sink->bytes += data.size();
                    sink->since_pause += data.size();
                    if (pause_every > 0 && sink->since_pause >= pause_every) {
                        sink->since_pause = 0;
                        ++sink->pauses;
                        timeval ms{0, 1000};
                        event_add(timer->ev, &ms);
                        return false;
                    }
                    return true;
                };
                h.on_done = [&report, sink, head](Status st) {
                    if (!st) return report(error_json(st.error()));
                    if (sink->out != nullptr) std::fflush(sink->out);
                    report(json{{"ok", true},
                                {"status", head->status},
                                {"size", sink->bytes},
                                {"sha256", sink->hex()},
                                {"content_length", head->length},
                                {"digest", head->digest},
                                {"content_range", head->content_range},
                                {"effective_url", head->effective_url},
                                {"pauses", sink->pauses}});
                };
                fetches[fetch_index] = reg.get_blob(arg(1), arg(2), range, std::move(h));
            } else if (cmd == "tags" || cmd == "catalog") {
                auto done = [&](Result<UpstreamListing> r) {
                    if (!r) return report(error_json(r.error()));
                    report(json{{"ok", true},
                                {"status", r->status},
                                {"headers", headers_json(r->headers)},
                                {"body", r->body}});
                };
                if (cmd == "tags") {
                    reg.get_tags(arg(1), opt["query"], done);
                } else {
                    reg.get_catalog(opt["query"], done);
                }
            } else {
                usage("unknown command " + cmd);
            }
        };
        start_round = [&] {
            for (int i = 0; i < parallel; ++i)
                one();
        };
        // fetches must not reallocate while callbacks index into it: reserve up front.
        fetches.reserve(static_cast<std::size_t>(repeat * parallel));
        timers.reserve(static_cast<std::size_t>(repeat * parallel));
        start_round();
        event_base_dispatch(base);

        std::fprintf(results, "%s\n",
                     json{{"summary", true},
                          {"ok", ok},
                          {"failed", failed},
                          {"token_fetches", reg.token_fetches()}}
                         .dump()
                         .c_str());
        if (print_metrics) std::fprintf(stderr, "%s", drayage::metrics::global().render().c_str());
        for (auto& t : timers)
            event_free(t->ev);
    }
    event_base_free(base);
    return failed == 0 ? 0 : 1;
}
