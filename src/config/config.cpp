// drayage's configuration: the public entry points (config.hpp). The jobs, by file:
//   keys.hpp/.cpp    the key table (type, range, field of every key) and lookups over it
//   checks.cpp       text helpers and value checks (host:port, URLs, booleans, counts)
//   loader.hpp/.cpp  the YAML walk and setting one key from its text
//   overrides.cpp    DRAYAGE_* environment overrides, environment()
//   cross_check.cpp  checks across keys after loading
//   render.cpp       render_redacted()
//   size.cpp         sizes and durations as text
//
// yaml-cpp throws; nothing here lets an exception out: load_string() catches at its edge and
// turns whatever went wrong into one line naming the key path and where it was set.
#include "drayage/config/config.hpp"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "loader.hpp"

namespace drayage::config {

using detail::check_host_port;
using detail::Loader;

int default_http_workers() {
    // The CPUs this process may run on (a container's cpuset, taskset), not the host's.
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return std::clamp(cpus - 1, 0, 7);
}

Result<ListenAddress> parse_listen_address(std::string_view addr) {
    ListenAddress out;
    std::string problem = check_host_port(addr, true, out.host, out.port);
    if (!problem.empty()) {
        return make_error("config.invalid", problem);
    }
    return out;
}

Result<Config> load_string(const std::string& yaml, const std::string& name,
                           const std::map<std::string, std::string>& env) {
    try {
        return Loader(name, env).run(yaml);
    } catch (const std::exception& e) {
        // Nothing above throws by design; this is the edge that keeps it so.
        return make_error("config.invalid", name + ": " + e.what());
    }
}

Result<Config> load_file(const std::string& path, const std::map<std::string, std::string>& env) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return make_error("config.invalid",
                          path + ": cannot read the config file: " + std::strerror(errno));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        return make_error("config.invalid",
                          path + ": cannot read the config file: " + std::strerror(errno));
    }
    return load_string(text.str(), path, env);
}

}  // namespace drayage::config
