// render_redacted(): the effective configuration as YAML, secrets redacted, driven by the key
// table so that every key that can be set is printed.
// yaml-cpp 0.7's node/impl.h trips g++ 12's -Wdangling-pointer (a false positive on its
// temporaries); it is not our code, so silence it for that header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#include <yaml-cpp/yaml.h>
#pragma GCC diagnostic pop

#include "drayage/config/size.hpp"
#include "keys.hpp"

namespace drayage::config {

using namespace detail;

namespace {

void emit_value(YAML::Emitter& out, const Key& key, Config& c) {
    std::visit(
        [&](const auto& k) {
            using K = std::decay_t<decltype(k)>;
            if constexpr (std::is_same_v<K, StringKey>) {
                const std::string& v = k.field(c);
                out << (k.secret && !v.empty() ? std::string("<redacted>") : v);
            } else if constexpr (std::is_same_v<K, EnumKey>) {
                out << k.field(c);
            } else if constexpr (std::is_same_v<K, BoolKey>) {
                out << k.field(c);
            } else if constexpr (std::is_same_v<K, SizeKey>) {
                out << format_size(k.field(c));
            } else if constexpr (std::is_same_v<K, CountKey>) {
                if (k.u64 != nullptr) {
                    out << k.u64(c);
                } else {
                    out << k.i32(c);
                }
            } else if constexpr (std::is_same_v<K, MillisKey>) {
                out << format_duration(k.field(c));
            } else if constexpr (std::is_same_v<K, SecondsKey>) {
                out << format_duration(std::chrono::duration_cast<Millis>(k.field(c)));
            }
        },
        key.kind);
}

std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> parts;
    for (;;) {
        const std::size_t dot = path.find('.');
        parts.push_back(path.substr(0, dot));
        if (dot == std::string_view::npos) {
            return parts;
        }
        path.remove_prefix(dot + 1);
    }
}

}  // namespace

std::string render_redacted(const Config& config) {
    Config c = config;  // the key accessors take a mutable Config
    YAML::Emitter out;
    out << YAML::BeginMap;
    std::vector<std::string_view> open;  // sections currently open, outermost first
    auto close_to = [&](std::size_t depth) {
        while (open.size() > depth) {
            out << YAML::EndMap;
            open.pop_back();
        }
    };
    for (const Key& key : keys()) {
        if (std::holds_alternative<IgnoredKey>(key.kind) ||
            (is_s3_path(key.path) && !c.storage.s3) || (is_auth_path(key.path) && !c.auth)) {
            continue;
        }
        const std::vector<std::string_view> parts = split_path(key.path);
        const std::size_t sections = parts.size() - 1;
        std::size_t common = 0;
        while (common < open.size() && common < sections && open[common] == parts[common]) {
            ++common;
        }
        close_to(common);
        for (std::size_t i = common; i < sections; ++i) {
            out << YAML::Key << std::string(parts[i]) << YAML::Value << YAML::BeginMap;
            open.push_back(parts[i]);
        }
        out << YAML::Key << std::string(parts.back()) << YAML::Value;
        emit_value(out, key, c);
    }
    if (c.auth) {
        // Lists after the scalar keys: the auth section is the last one open here.
        close_to(1);
        auto list = [&](const std::vector<std::string>& l) {
            out << YAML::Flow << YAML::BeginSeq;
            for (const auto& s : l)
                out << s;
            out << YAML::EndSeq;
        };
        out << YAML::Key << "groups" << YAML::Value << YAML::BeginMap;
        for (const auto& [g, users] : c.auth->groups) {
            out << YAML::Key << g << YAML::Value;
            list(users);
        }
        out << YAML::EndMap;
        out << YAML::Key << "rules" << YAML::Value << YAML::BeginSeq;
        for (const AuthRule& r : c.auth->rules) {
            out << YAML::BeginMap << YAML::Key << "repositories" << YAML::Value;
            list(r.repositories);
            out << YAML::Key << "pull" << YAML::Value;
            list(r.pull);
            out << YAML::Key << "push" << YAML::Value;
            list(r.push);
            out << YAML::EndMap;
        }
        out << YAML::EndSeq;
        out << YAML::Key << "passthrough" << YAML::Value;
        list(c.auth->passthrough);
    }
    close_to(0);
    if (!c.storage.s3) {
        out << YAML::Key << "storage" << YAML::Value << YAML::Flow << YAML::BeginMap
            << YAML::EndMap;
    }
    out << YAML::EndMap;

    std::string text;
    if (!c.source_file.empty()) {
        text += "# effective configuration loaded from " + c.source_file + "\n";
    }
    for (const std::string& note : c.notes) {
        text += "# note: " + note + "\n";
    }
    text += out.c_str();
    text += "\n";
    return text;
}

}  // namespace drayage::config
