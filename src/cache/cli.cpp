// Operator commands: see include/drayage/cache/cli.hpp.
#include "drayage/cache/cli.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>

#include "cache_dir.hpp"
#include "drayage/cache/blob_store.hpp"
#include "drayage/util/digest.hpp"
#include "drayage/util/text.hpp"

namespace drayage::cache {
namespace {

// A one-line progress bar on stderr, only when stderr is a terminal.
class Progress {
public:
    Progress(const char* what, std::uint64_t total)
        : what_(what), total_(total), tty_(::isatty(STDERR_FILENO) == 1) {}
    ~Progress() {
        if (tty_ && drawn_) std::fputc('\n', stderr);
    }
    void update(std::uint64_t done) {
        if (!tty_ || total_ == 0) return;
        int pct = static_cast<int>(done * 100 / total_);
        if (pct == last_ && done != total_) return;
        last_ = pct;
        drawn_ = true;
        constexpr int kWidth = 40;
        int fill = pct * kWidth / 100;
        std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% (%llu/%llu)", what_, fill,
                     "########################################", kWidth - fill, "", pct,
                     static_cast<unsigned long long>(done),
                     static_cast<unsigned long long>(total_));
        std::fflush(stderr);
    }

private:
    const char* what_;
    std::uint64_t total_;
    bool tty_;
    bool drawn_ = false;
    int last_ = -1;
};

std::string human(std::uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
    return buf;
}

std::string utc(std::int64_t t) {
    return text::rfc3339_utc(t);
}

int fail(const std::string& message) {
    std::fprintf(stderr, "drayage cache: %s\n", message.c_str());
    return 1;
}

int usage() {
    std::fprintf(stderr,
                 "usage: drayage cache stats|ls|verify|evict DIGEST|evict --all --config FILE\n");
    return 2;
}

// Deletes dropped blobs' chunks in bounded transactions.
Status collect_all_garbage(BlobStore& store) {
    for (;;) {
        auto w = store.begin_write();
        if (!w) return w.error();
        auto n = (*w)->collect_garbage(1024);
        if (!n) return n.error();
        if (auto st = (*w)->commit(); !st) return st;
        if (*n == 0) return {};
    }
}

int cmd_stats(BlobStore& store) {
    auto u = store.usage();
    if (!u) return fail(u.error().to_string());
    auto all = store.list();
    if (!all) return fail(all.error().to_string());
    std::uint64_t complete = 0, filling = 0, documents = 0, bytes = 0, hits = 0;
    for (const BlobMeta& m : *all) {
        if (m.state == BlobState::complete) {
            ++complete;
            bytes += m.size;
            hits += m.hits;
            if (!m.media_type.empty()) ++documents;
        } else {
            ++filling;
        }
    }
    std::printf("max_size:      %llu (%s)\n", static_cast<unsigned long long>(u->max_size),
                human(u->max_size).c_str());
    std::printf("charged_bytes: %llu (%s)\n", static_cast<unsigned long long>(u->charged_bytes),
                human(u->charged_bytes).c_str());
    std::printf("blob_bytes:    %llu (%s)\n", static_cast<unsigned long long>(bytes),
                human(bytes).c_str());
    std::printf("used_bytes:    %llu (%s)\n", static_cast<unsigned long long>(u->used_bytes),
                human(u->used_bytes).c_str());
    std::printf("file_bytes:    %llu (%s)\n", static_cast<unsigned long long>(u->file_bytes),
                human(u->file_bytes).c_str());
    std::printf("map_bytes:     %llu (%s)\n", static_cast<unsigned long long>(u->map_bytes),
                human(u->map_bytes).c_str());
    std::printf("chunk_size:    %llu\n", static_cast<unsigned long long>(u->chunk_size));
    std::printf("blobs:         %llu\n", static_cast<unsigned long long>(complete));
    std::printf("documents:     %llu\n", static_cast<unsigned long long>(documents));
    std::printf("filling:       %llu\n", static_cast<unsigned long long>(filling));
    std::printf("garbage:       %llu\n", static_cast<unsigned long long>(u->garbage_blobs));
    std::printf("hits:          %llu\n", static_cast<unsigned long long>(hits));
    return 0;
}

int cmd_ls(BlobStore& store) {
    auto all = store.list();
    if (!all) return fail(all.error().to_string());
    std::vector<BlobMeta> v = std::move(*all);
    std::stable_sort(v.begin(), v.end(), [](const BlobMeta& a, const BlobMeta& b) {
        return a.last_access < b.last_access;
    });
    std::printf("%-71s %14s %-20s %8s %s\n", "DIGEST", "SIZE", "LAST_ACCESS", "HITS",
                "STATE/MEDIA_TYPE");
    for (const BlobMeta& m : v) {
        std::string kind = m.state == BlobState::filling ? "filling"
                           : m.media_type.empty()        ? "blob"
                                                         : m.media_type;
        std::printf("%-71s %14llu %-20s %8llu %s\n", m.digest.c_str(),
                    static_cast<unsigned long long>(m.size), utc(m.last_access).c_str(),
                    static_cast<unsigned long long>(m.hits), kind.c_str());
    }
    return 0;
}

// Rehashes one blob chunk by chunk (each read its own short transaction). Returns an empty
// string when it verifies, "gone" when it vanished meanwhile (evicted by the server), or why it
// is corrupt.
std::string check_blob(BlobStore& store, const BlobMeta& m) {
    auto sha = digest::Sha256::start();
    if (!sha) {
        // Not the blob's fault: stop rather than call it corrupt and drop it.
        std::fprintf(stderr, "drayage cache check: OpenSSL cannot allocate a hash context\n");
        std::exit(1);
    }
    const std::uint64_t cs = store.chunk_size();
    std::uint64_t chunks = (m.size + cs - 1) / cs;
    ChunkBuffer buf;
    for (std::uint64_t i = 0; i < chunks; ++i) {
        Status st = store.read_chunk(m.blob_id, static_cast<std::uint32_t>(i), buf);
        if (!st) {
            auto now = store.stat(m.digest);
            if (now && (!*now || (*now)->blob_id != m.blob_id)) return "gone";
            return "chunk " + std::to_string(i) + " unreadable: " + st.error().message;
        }
        std::uint64_t want = std::min(cs, m.size - i * cs);
        if (buf.size() != want) {
            return "chunk " + std::to_string(i) + " holds " + std::to_string(buf.size()) +
                   " bytes, expected " + std::to_string(want);
        }
        sha->update(std::string_view(buf.data(), buf.size()));
    }
    std::string hex = sha->finish_hex();
    if ("sha256:" + hex != m.digest) return "bytes hash to sha256:" + hex;
    return "";
}

// Drops `m` if its record is still the one we looked at (the server may have replaced it).
Status drop_if_same(BlobStore& store, const BlobMeta& m, bool& dropped) {
    dropped = false;
    auto w = store.begin_write();
    if (!w) return w.error();
    auto now = (*w)->get_meta(m.digest);
    if (!now) return now.error();
    if (!*now || (*now)->blob_id != m.blob_id || (*now)->state != BlobState::complete) return {};
    auto d = (*w)->drop_blob(m.digest);
    if (!d) return d.error();
    if (auto st = (*w)->commit(); !st) return st;
    dropped = true;
    return {};
}

int cmd_verify(BlobStore& store) {
    auto all = store.list();
    if (!all) return fail(all.error().to_string());
    std::vector<BlobMeta> v;
    for (BlobMeta& m : *all) {
        if (m.state == BlobState::complete) v.push_back(std::move(m));
    }
    std::uint64_t corrupt = 0, ok = 0;
    {
        Progress progress("verify", v.size());
        for (std::size_t i = 0; i < v.size(); ++i) {
            std::string why = check_blob(store, v[i]);
            if (why.empty()) {
                ++ok;
            } else if (why != "gone") {
                bool dropped = false;
                if (auto st = drop_if_same(store, v[i], dropped); !st)
                    return fail(st.error().to_string());
                if (dropped) {
                    ++corrupt;
                    std::fprintf(stderr, "%scorrupt: %s: %s (dropped)\n",
                                 ::isatty(STDERR_FILENO) ? "\n" : "", v[i].digest.c_str(),
                                 why.c_str());
                }
            }
            progress.update(i + 1);
        }
    }
    if (auto st = collect_all_garbage(store); !st) return fail(st.error().to_string());
    std::printf("verified %llu blobs: %llu ok, %llu corrupt (dropped)\n",
                static_cast<unsigned long long>(v.size()), static_cast<unsigned long long>(ok),
                static_cast<unsigned long long>(corrupt));
    return corrupt > 0 ? 1 : 0;
}

int cmd_evict(BlobStore& store, const std::string& what) {
    if (what != "--all") {
        if (!is_sha256_digest(what)) return fail("not a sha256 digest: " + what);
        auto m = store.stat(what);
        if (!m) return fail(m.error().to_string());
        if (!*m) return fail(what + " is not in the cache");
        if ((*m)->state != BlobState::complete) {
            return fail(what + " is being filled by the server; try again when it is complete");
        }
        bool dropped = false;
        if (auto st = drop_if_same(store, **m, dropped); !st) return fail(st.error().to_string());
        if (!dropped) return fail(what + " changed while evicting; try again");
        if (auto st = collect_all_garbage(store); !st) return fail(st.error().to_string());
        std::printf("evicted %s (%llu bytes)\n", what.c_str(),
                    static_cast<unsigned long long>((*m)->size));
        return 0;
    }
    auto all = store.list();
    if (!all) return fail(all.error().to_string());
    std::vector<std::string> digests;
    for (const BlobMeta& m : *all) {
        if (m.state == BlobState::complete) digests.push_back(m.digest);
    }
    std::uint64_t evicted = 0;
    {
        Progress progress("evict", digests.size());
        constexpr std::size_t kBatch = 64;  // bounded work per write transaction
        for (std::size_t i = 0; i < digests.size(); i += kBatch) {
            auto w = store.begin_write();
            if (!w) return fail(w.error().to_string());
            for (std::size_t j = i; j < std::min(digests.size(), i + kBatch); ++j) {
                auto m = (*w)->get_meta(digests[j]);
                if (!m) return fail(m.error().to_string());
                if (!*m || (*m)->state != BlobState::complete) continue;
                auto d = (*w)->drop_blob(digests[j]);
                if (!d) return fail(d.error().to_string());
                if (*d) ++evicted;
            }
            if (auto n = (*w)->collect_garbage(1024); !n) return fail(n.error().to_string());
            if (auto st = (*w)->commit(); !st) return fail(st.error().to_string());
            progress.update(std::min(digests.size(), i + kBatch));
        }
    }
    if (auto st = collect_all_garbage(store); !st) return fail(st.error().to_string());
    std::printf("evicted %llu blobs\n", static_cast<unsigned long long>(evicted));
    return 0;
}

}  // namespace

int run_cache_command(const std::vector<std::string>& args, const config::CacheConfig& cfg) {
    if (args.empty()) return usage();
    const std::string& cmd = args[0];
    if (cmd != "stats" && cmd != "ls" && cmd != "verify" && cmd != "evict") return usage();
    if ((cmd == "evict" && args.size() != 2) || (cmd != "evict" && args.size() != 1))
        return usage();
    std::error_code ec;
    if (!std::filesystem::exists(cfg.path + "/data.mdb", ec)) {
        return fail("no cache at " + cfg.path + " (cache.path): nothing to " + cmd);
    }
    // With no server running, the marker must show the cache survived its last stop; with one
    // running, the server vouches for it (and its clean stop syncs what this command writes).
    std::optional<DirLock> lock;
    if (auto got = DirLock::acquire(cfg.path)) {
        lock.emplace(std::move(*got));
        if (last_shutdown(cfg.path) == Shutdown::system_down) {
            return fail("the cache at " + cfg.path +
                        " was open when the system went down and may be torn; the next "
                        "`drayage serve` discards and refills it");
        }
    } else if (got.error().code != kErrBusy) {
        return fail(got.error().to_string());
    }
    StoreOptions so;
    so.path = cfg.path;
    so.max_size = cfg.max_size;
    auto store = open_lmdb_store(so);
    if (!store) return fail(store.error().to_string());
    if (cmd == "stats") return cmd_stats(**store);
    if (cmd == "ls") return cmd_ls(**store);
    if (cmd == "verify") return cmd_verify(**store);
    return cmd_evict(**store, args[1]);
}

}  // namespace drayage::cache
