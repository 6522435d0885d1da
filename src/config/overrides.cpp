// DRAYAGE_* environment overrides: each variable names one key of the table (dots as '_'); a
// variable that names nothing, or a whole section, is an error that suggests the near name.
#include <algorithm>

#include "drayage/config/config.hpp"
#include "loader.hpp"

extern char** environ;

namespace drayage::config::detail {

Status Loader::apply_env() {
    for (const auto& [name, value] : env_) {
        if (!name.starts_with(kEnvPrefix) ||
            std::find(kReservedEnv.begin(), kReservedEnv.end(), name) != kReservedEnv.end()) {
            continue;
        }
        const Key* key = nullptr;
        for (const Key& k : keys()) {
            if (env_name(k.path) == name) {
                key = &k;
            }
        }
        Origin at;
        at.env_var = name;
        if (key == nullptr) {
            for (std::string_view s : kSections) {
                if (env_name(s) == name) {
                    return make_error("config.invalid",
                                      name + ": " + std::string(s) +
                                          " is a section; set its keys one by one, e.g. " +
                                          env_name(example_key(s)));
                }
            }
            std::string msg = name + ": no configuration key has this name";
            const std::string guess = ascii_lower(name.substr(kEnvPrefix.size()));
            if (const std::string near = suggestion(guess, true); !near.empty()) {
                msg += "; did you mean " + env_name(near) + "?";
            }
            return make_error("config.invalid", msg);
        }
        if (Status s = apply(*key, &value, at); !s) {
            return s;
        }
    }
    return {};
}

std::string Loader::example_key(std::string_view section) {
    for (const Key& k : keys()) {
        if (k.path.starts_with(std::string(section) + ".")) {
            return std::string(k.path);
        }
    }
    return std::string(section);
}

}  // namespace drayage::config::detail

namespace drayage::config {

std::map<std::string, std::string> environment() {
    std::map<std::string, std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const std::size_t eq = entry.find('=');
        if (eq != std::string_view::npos) {
            env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
        }
    }
    return env;
}

}  // namespace drayage::config
