// s3_tool: runs one S3 client operation on an event loop, for the integration tests and the
// benchmark. Not part of drayage itself.
//
//   s3_tool CONFIG put KEY FILE           small PUT of FILE
//   s3_tool CONFIG get KEY OUT [--range A-B|A-] [--pause]
//                                         streamed GET into OUT ('-': discard); --pause pauses
//                                         delivery after every piece and resumes on the next turn
//   s3_tool CONFIG head KEY | rm KEY | copy SRC DST
//   s3_tool CONFIG mpu-put KEY FILE|- [--expected-size N] [--abort-after N]
//                                         parallel multipart upload of FILE or stdin (a pipe);
//                                         --abort-after: abort once N bytes were written
//   s3_tool CONFIG mpu-copy SRC DST       parallel UploadPartCopy
//   s3_tool CONFIG stream-part KEY FILE   multipart upload of FILE as one streamed part
//   s3_tool CONFIG create-mpu KEY | abort-mpu KEY ID | list-parts KEY ID
//   s3_tool CONFIG ls-uploads [PREFIX] | ls [PREFIX]   (listings take --page-size N)
//
// CONFIG is a YAML file holding the `storage.s3` keys (same names as drayage's config; the
// durations retry.base_delay/max_delay in milliseconds; plus `stall_timeout`, milliseconds).
// Output: one JSON object on stdout (always with "peak_rss_kib"); failure: "error: ..." on stderr,
// exit status 1.
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "drayage/net/curl_loop.hpp"
#include "drayage/s3/client.hpp"
#include "drayage/s3/multipart.hpp"

extern char** environ;

using namespace drayage;
using json = nlohmann::json;

namespace {

struct Sha256 {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    Sha256() { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
    ~Sha256() { EVP_MD_CTX_free(ctx); }
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    void update(std::string_view d) { EVP_DigestUpdate(ctx, d.data(), d.size()); }
    std::string hex() {
        unsigned char out[32];
        unsigned int n = 0;
        EVP_DigestFinal_ex(ctx, out, &n);
        static const char* digits = "0123456789abcdef";
        std::string s;
        for (unsigned i = 0; i < n; ++i) {
            s += digits[out[i] >> 4];
            s += digits[out[i] & 15];
        }
        return s;
    }
};

// VmHWM, not getrusage's ru_maxrss: the latter survives exec and so reports the (possibly much
// larger) parent that forked us when that was bigger than we ever got.
long peak_rss_kib() {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (f == nullptr) {
        return 0;
    }
    char line[256];
    long kib = 0;
    while (std::fgets(line, sizeof(line), f) != nullptr) {
        if (std::strncmp(line, "VmHWM:", 6) == 0) {
            kib = std::strtol(line + 6, nullptr, 10);
        }
    }
    std::fclose(f);
    return kib;
}

std::optional<config::S3Config> load_config(const std::string& path, s3::ClientTuning& tuning,
                                            std::string& err) {
    try {
        YAML::Node n = YAML::LoadFile(path);
        if (n["stall_timeout"]) {  // tool-only key, milliseconds
            tuning.stall_timeout = std::chrono::milliseconds(n["stall_timeout"].as<long>());
        }
        config::S3Config c;
        auto str = [&](const char* k, std::string& out) {
            if (n[k]) {
                out = n[k].as<std::string>();
            }
        };
        auto boolean = [&](const char* k, bool& out) {
            if (n[k]) {
                out = n[k].as<bool>();
            }
        };
        str("accesskey", c.accesskey);
        str("secretkey", c.secretkey);
        str("sessiontoken", c.sessiontoken);
        str("region", c.region);
        str("regionendpoint", c.regionendpoint);
        str("bucket", c.bucket);
        str("keyid", c.keyid);
        str("storageclass", c.storageclass);
        boolean("encrypt", c.encrypt);
        boolean("secure", c.secure);
        boolean("skipverify", c.skipverify);
        boolean("v4auth", c.v4auth);
        if (n["chunksize"]) {
            c.chunksize = n["chunksize"].as<std::uint64_t>();
        }
        if (n["multipart"] && n["multipart"]["concurrency"]) {
            c.multipart.concurrency = n["multipart"]["concurrency"].as<int>();
        }
        if (YAML::Node r = n["retry"]) {
            if (r["max_attempts"]) {
                c.retry.max_attempts = r["max_attempts"].as<int>();
            }
            if (r["base_delay"]) {
                c.retry.base_delay = std::chrono::milliseconds(r["base_delay"].as<long>());
            }
            if (r["max_delay"]) {
                c.retry.max_delay = std::chrono::milliseconds(r["max_delay"].as<long>());
            }
        }
        return c;
    } catch (const std::exception& e) {
        err = path + ": " + e.what();
        return std::nullopt;
    }
}

std::map<std::string, std::string> environment_map() {
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        std::string kv = *e;
        auto eq = kv.find('=');
        if (eq != std::string::npos) {
            env[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
    }
    return env;
}

// The outcome of the command, printed by main once the loop stopped.
struct Outcome {
    json out = json::object();
    std::optional<Error> error;
};

std::string read_file(const std::string& path) {
    std::string out;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        return out;
    }
    char buf[65536];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
        out.append(buf, n);
    }
    std::fclose(f);
    return out;
}

// Feeds a file or a pipe into a MultipartUpload without blocking the loop: a pipe is read when
// libevent says it is readable, a regular file a megabyte per loop turn; both stop while the
// upload says "pause" and start again on its on_writable.
struct StreamFeeder {
    event_base* base = nullptr;
    int fd = -1;
    bool pipe = false;
    event* ev = nullptr;
    std::shared_ptr<s3::MultipartUpload> upload;
    Sha256 sha;
    std::uint64_t abort_after = 0;  // 0: never
    std::function<void()> on_eof;
    std::function<void()> on_abort_point;
    std::vector<char> buf = std::vector<char>(1 << 20);
    bool stopped = false;

    void arm() {
        if (stopped) {
            return;
        }
        if (pipe) {
            event_add(ev, nullptr);
        } else {
            event_active(ev, EV_READ, 0);
        }
    }

    static void on_ready(evutil_socket_t, short, void* arg) {
        auto* self = static_cast<StreamFeeder*>(arg);
        self->step();
    }

    void step() {
        for (int i = 0; i < 16 && !stopped; ++i) {
            ssize_t n = ::read(fd, buf.data(), buf.size());
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                return;  // pipe: wait for the next readable event (still armed, persistent)
            }
            if (n <= 0) {
                stopped = true;
                if (ev != nullptr) {
                    event_del(ev);
                }
                on_eof();
                return;
            }
            std::string_view piece(buf.data(), static_cast<std::size_t>(n));
            sha.update(piece);
            bool more = upload->write(piece);
            if (abort_after > 0 && upload->bytes_written() >= abort_after) {
                stopped = true;
                event_del(ev);
                on_abort_point();
                return;
            }
            if (!more) {
                if (upload->failed()) {
                    stopped = true;  // finish() reports the error
                    event_del(ev);
                    on_eof();
                    return;
                }
                if (pipe) {
                    event_del(ev);
                }
                return;  // on_writable re-arms
            }
        }
        if (!pipe) {
            event_active(ev, EV_READ, 0);
        }
    }
};

std::optional<s3::ByteRange> parse_range(const std::string& s) {
    auto dash = s.find('-');
    if (dash == std::string::npos) {
        return std::nullopt;
    }
    s3::ByteRange r;
    r.first = std::stoull(s.substr(0, dash));
    if (dash + 1 < s.size()) {
        r.last = std::stoull(s.substr(dash + 1));
    }
    return r;
}

json object_json(const s3::ObjectInfo& i) {
    return json{{"status", i.status},
                {"size", i.size},
                {"total_size", i.total_size},
                {"etag", i.etag},
                {"content_type", i.content_type}};
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() < 2) {
        std::cerr << "usage: s3_tool CONFIG COMMAND ARGS... (see the source)\n";
        return 2;
    }
    if (const char* lvl = std::getenv("S3_TOOL_LOG")) {
        spdlog::set_level(spdlog::level::from_str(lvl));
    } else {
        spdlog::set_level(spdlog::level::warn);
    }
    std::string err;
    s3::ClientTuning tuning;
    auto cfg = load_config(args[0], tuning, err);
    if (!cfg) {
        std::cerr << "error: " << err << "\n";
        return 2;
    }
    std::string cmd = args[1];
    std::vector<std::string> rest(args.begin() + 2, args.end());
    auto flag = [&](const std::string& name) -> std::optional<std::string> {
        for (std::size_t i = 0; i < rest.size(); ++i) {
            if (rest[i] == name) {
                if (i + 1 < rest.size() && rest[i + 1].rfind("--", 0) != 0) {
                    return rest[i + 1];
                }
                return std::string();
            }
        }
        return std::nullopt;
    };
    auto arg = [&](std::size_t i) -> std::string {
        if (i >= rest.size()) {
            std::cerr << "error: " << cmd << ": missing argument " << i + 1 << "\n";
            std::exit(2);
        }
        return rest[i];
    };

    event_base* base = event_base_new();
    auto loop = std::make_unique<net::CurlLoop>(base);
    auto created = s3::Client::create(*loop, *cfg, environment_map(), tuning);
    if (!created) {
        std::cerr << "error: " << created.error().to_string() << "\n";
        return 2;
    }
    s3::Client& client = **created;
    Outcome outcome;
    auto stop = [&] { event_base_loopbreak(base); };
    auto fail = [&](const Error& e) {
        outcome.error = e;
        stop();
    };
    auto etag_done = [&](Result<std::string> r) {
        if (!r) {
            fail(r.error());
            return;
        }
        outcome.out["etag"] = *r;
        stop();
    };
    auto status_done = [&](Status s) {
        if (!s) {
            fail(s.error());
            return;
        }
        stop();
    };

    std::string prefix_arg = rest.empty() || rest[0].rfind("--", 0) == 0 ? "" : rest[0];
    std::size_t page_size = 0;
    if (auto p = flag("--page-size")) {
        page_size = std::stoull(*p);
    }
    std::shared_ptr<s3::ObjectRead> read;
    std::unique_ptr<StreamFeeder> feeder;
    std::shared_ptr<s3::MultipartUpload> upload;
    Sha256 get_sha;
    FILE* get_out = nullptr;
    event* resume_ev = nullptr;
    FILE* stream_file = nullptr;
    std::shared_ptr<net::HttpCall> stream_call;

    if (cmd == "put") {
        auto body = std::make_shared<const std::string>(read_file(arg(1)));
        client.put(arg(0), body, s3::PutOptions{}, etag_done);
    } else if (cmd == "get") {
        std::optional<s3::ByteRange> range;
        if (auto r = flag("--range")) {
            range = parse_range(*r);
        }
        bool pause = flag("--pause").has_value();
        std::string out_path = arg(1);
        if (out_path != "-") {
            get_out = std::fopen(out_path.c_str(), "wb");
        }
        resume_ev = event_new(
            base, -1, 0,
            [](evutil_socket_t, short, void* a) {
                (*static_cast<std::shared_ptr<s3::ObjectRead>*>(a))->resume();
            },
            &read);
        int pauses = 0;
        read = client.get(
            arg(0), range,
            s3::ReadHandlers{
                [&](const s3::ObjectInfo& info) { outcome.out["head"] = object_json(info); },
                [&](std::string_view piece) {
                    get_sha.update(piece);
                    if (get_out != nullptr) {
                        std::fwrite(piece.data(), 1, piece.size(), get_out);
                    }
                    if (pause) {
                        ++pauses;
                        timeval zero{0, 0};
                        event_add(resume_ev, &zero);
                        return false;
                    }
                    return true;
                },
                [&](Status s) {
                    if (!s) {
                        fail(s.error());
                        return;
                    }
                    outcome.out["bytes"] = read->delivered();
                    outcome.out["sha256"] = get_sha.hex();
                    outcome.out["pauses"] = pauses;
                    stop();
                }});
    } else if (cmd == "head") {
        client.head(arg(0), [&](Result<s3::ObjectInfo> r) {
            if (!r) {
                fail(r.error());
                return;
            }
            outcome.out["head"] = object_json(*r);
            stop();
        });
    } else if (cmd == "rm") {
        client.remove(arg(0), status_done);
    } else if (cmd == "copy") {
        client.copy(arg(0), arg(1), etag_done);
    } else if (cmd == "mpu-copy") {
        s3::MultipartCopy::start(client, arg(0), arg(1), 0, etag_done);
    } else if (cmd == "create-mpu") {
        client.create_multipart(arg(0), s3::PutOptions{}, [&](Result<std::string> r) {
            if (!r) {
                fail(r.error());
                return;
            }
            outcome.out["upload_id"] = *r;
            stop();
        });
    } else if (cmd == "abort-mpu") {
        client.abort_multipart(arg(0), arg(1), status_done);
    } else if (cmd == "list-parts") {
        client.list_parts(
            arg(0), arg(1),
            [&](Result<std::vector<s3::PartInfo>> r) {
                if (!r) {
                    fail(r.error());
                    return;
                }
                json parts = json::array();
                for (const auto& p : *r) {
                    parts.push_back(
                        json{{"part", p.part_number}, {"etag", p.etag}, {"size", p.size}});
                }
                outcome.out["parts"] = parts;
                stop();
            },
            page_size);
    } else if (cmd == "ls-uploads") {
        client.list_multipart_uploads(
            prefix_arg,
            [&](Result<std::vector<s3::UploadInfo>> r) {
                if (!r) {
                    fail(r.error());
                    return;
                }
                json ups = json::array();
                for (const auto& u : *r) {
                    ups.push_back(json{{"key", u.key}, {"upload_id", u.upload_id}});
                }
                outcome.out["uploads"] = ups;
                stop();
            },
            page_size);
    } else if (cmd == "ls") {
        client.list_objects(
            prefix_arg,
            [&](Result<std::vector<s3::ObjectEntry>> r) {
                if (!r) {
                    fail(r.error());
                    return;
                }
                json objs = json::array();
                for (const auto& o : *r) {
                    objs.push_back(json{{"key", o.key}, {"size", o.size}, {"etag", o.etag}});
                }
                outcome.out["objects"] = objs;
                stop();
            },
            page_size);
    } else if (cmd == "mpu-put") {
        feeder = std::make_unique<StreamFeeder>();
        feeder->base = base;
        std::string src = arg(1);
        feeder->fd = src == "-" ? STDIN_FILENO : ::open(src.c_str(), O_RDONLY);
        if (feeder->fd < 0) {
            std::cerr << "error: cannot open " << src << ": " << std::strerror(errno) << "\n";
            return 2;
        }
        struct stat st {};
        fstat(feeder->fd, &st);
        feeder->pipe = !S_ISREG(st.st_mode);
        if (feeder->pipe) {
            fcntl(feeder->fd, F_SETFL, fcntl(feeder->fd, F_GETFL) | O_NONBLOCK);
        }
        s3::MultipartUpload::Options opt;
        opt.key = arg(0);
        if (auto e = flag("--expected-size")) {
            opt.expected_size = std::stoull(*e);
        } else if (!feeder->pipe) {
            opt.expected_size = static_cast<std::uint64_t>(st.st_size);
        }
        StreamFeeder* f = feeder.get();
        opt.on_writable = [f] { f->arm(); };
        upload = s3::MultipartUpload::start(client, std::move(opt));
        f->upload = upload;
        f->ev = event_new(base, f->pipe ? f->fd : -1, f->pipe ? EV_READ | EV_PERSIST : 0,
                          &StreamFeeder::on_ready, f);
        if (auto a = flag("--abort-after")) {
            f->abort_after = std::stoull(*a);
        }
        f->on_eof = [&, f] {
            outcome.out["sha256"] = f->sha.hex();
            outcome.out["bytes"] = upload->bytes_written();
            outcome.out["part_size"] = upload->part_size();
            upload->finish(etag_done);
        };
        f->on_abort_point = [&] {
            outcome.out["aborted_after"] = upload->bytes_written();
            upload->abort(status_done);
        };
        f->arm();
    } else if (cmd == "stream-part") {
        // One multipart upload with a single streamed UploadPart (UNSIGNED-PAYLOAD, Content-Length
        // known), its source pausing on every third call and resumed on the next loop turn.
        std::string k = arg(0);
        std::string path = arg(1);
        stream_file = std::fopen(path.c_str(), "rb");
        if (stream_file == nullptr) {
            std::cerr << "error: cannot open " << path << "\n";
            return 2;
        }
        struct stat st {};
        fstat(fileno(stream_file), &st);
        auto size = static_cast<std::uint64_t>(st.st_size);
        resume_ev = event_new(
            base, -1, 0,
            [](evutil_socket_t, short, void* a) {
                auto* call = static_cast<std::shared_ptr<net::HttpCall>*>(a);
                if (*call) {
                    (*call)->resume_upload();
                }
            },
            &stream_call);
        client.create_multipart(k, s3::PutOptions{}, [&, k, size](Result<std::string> id) {
            if (!id) {
                fail(id.error());
                return;
            }
            std::string upload_id = *id;
            auto calls = std::make_shared<int>(0);
            stream_call = client.upload_part_stream(
                k, upload_id, 1, size,
                [&, calls](char* buf, std::size_t cap) -> std::size_t {
                    if (++*calls % 3 == 0) {
                        timeval zero{0, 0};
                        event_add(resume_ev, &zero);
                        return net::kBodyPause;
                    }
                    return std::fread(buf, 1, cap, stream_file);
                },
                [&, k, upload_id, calls](Result<std::string> etag) {
                    if (!etag) {
                        client.abort_multipart(k, upload_id,
                                               [&, e = etag.error()](Status) { fail(e); });
                        return;
                    }
                    outcome.out["source_calls"] = *calls;
                    client.complete_multipart(k, upload_id, {{1, *etag}}, etag_done);
                });
        });
    } else {
        std::cerr << "error: unknown command " << cmd << "\n";
        return 2;
    }

    event_base_dispatch(base);
    if (get_out != nullptr) {
        std::fclose(get_out);
    }
    if (stream_file != nullptr) {
        std::fclose(stream_file);
    }
    int rc = 0;
    if (outcome.error) {
        const Error& e = *outcome.error;
        std::cerr << "error: " << e.code << " (HTTP " << e.status << "): " << e.message << "\n";
        outcome.out["error"] = json{{"code", e.code}, {"status", e.status}, {"message", e.message}};
        rc = 1;
    }
    outcome.out["peak_rss_kib"] = peak_rss_kib();
    std::cout << outcome.out.dump() << std::endl;
    if (feeder && feeder->ev != nullptr) {
        event_free(feeder->ev);
    }
    if (resume_ev != nullptr) {
        event_free(resume_ev);
    }
    read.reset();
    upload.reset();
    created->reset();
    loop.reset();
    event_base_free(base);
    return rc;
}
