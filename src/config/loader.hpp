// The Loader: one config file (or string) and the environment turned into a Config. Its jobs by
// file:
//   loader.cpp       the YAML walk, auth lists, and setting one key from its text
//   overrides.cpp    DRAYAGE_* environment overrides
//   cross_check.cpp  checks across keys, after the file and the environment are applied
// Private to src/config/.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

// yaml-cpp 0.7's node/impl.h trips g++ 12's -Wdangling-pointer (a false positive on its
// temporaries); it is not our code, so silence it for that header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#include <yaml-cpp/yaml.h>
#pragma GCC diagnostic pop

#include "keys.hpp"

namespace drayage::config::detail {

// Where a value came from, so that a message can point at it.
struct Origin {
    std::string env_var;  // set: this environment variable
    int line = 0;         // else 1-based line in the file; 0: not known
};

class Loader {
public:
    Loader(std::string file, const std::map<std::string, std::string>& env)
        : file_(std::move(file)), env_(env) {
        config_.source_file = file_;
    }

    Result<Config> run(const std::string& yaml);

private:
    std::string where(const Origin& o) const;
    Error fail(const Origin& o, std::string_view path, const std::string& what) const;
    Origin origin_of(const YAML::Node& node) const;
    // The origin of a path if it was set, else of its nearest set section, else the file.
    Origin origin_or_section(std::string path) const;

    void ensure_s3(const Origin& o);
    void ensure_auth(const Origin& o);
    // A list of non-empty strings ("[a, b]" or a block list); a single string is taken as a
    // list of one.
    Result<std::vector<std::string>> string_list(const YAML::Node& v, const std::string& path);

    Status auth_list(const std::string& path, const YAML::Node& v, const Origin& at);
    Status walk(const YAML::Node& map, const std::string& prefix);
    static std::string unknown_key_hint(const std::string& path);
    // Sets one key from its text (`text` null: YAML null, i.e. "key:" with nothing after it).
    Status apply(const Key& key, const std::string* text, const Origin& at);

    Status set(const StringKey& k, std::string_view path, const std::string* text,
               const Origin& at);
    Status set(const EnumKey& k, std::string_view path, const std::string* text, const Origin& at);
    Status set(const BoolKey& k, std::string_view path, const std::string* text, const Origin& at);
    Status set(const SizeKey& k, std::string_view path, const std::string* text, const Origin& at);
    Status set(const CountKey& k, std::string_view path, const std::string* text, const Origin& at);
    Result<Millis> duration_in(std::string_view path, const std::string& text, Millis min,
                               Millis max, const Origin& at) const;
    Status set(const MillisKey& k, std::string_view path, const std::string* text,
               const Origin& at);
    Status set(const SecondsKey& k, std::string_view path, const std::string* text,
               const Origin& at);
    Status set(const IgnoredKey& k, std::string_view path, const std::string* text,
               const Origin& at);

    // overrides.cpp
    Status apply_env();
    static std::string example_key(std::string_view section);

    // cross_check.cpp
    Status cross_check();
    std::string file_;
    const std::map<std::string, std::string>& env_;
    Config config_;
    std::map<std::string, Origin> origins_;  // key and section paths that were set
};

}  // namespace drayage::config::detail
