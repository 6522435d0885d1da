// Loading: the YAML walk over a config file, the auth lists, and setting one key from its text
// (type and range checked), each error naming the key path and where it was set.
#include "loader.hpp"

#include <algorithm>
#include <set>

#include "drayage/config/size.hpp"

namespace drayage::config::detail {

Result<Config> Loader::run(const std::string& yaml) {
    YAML::Node root;
    try {
        std::vector<YAML::Node> documents = YAML::LoadAll(yaml);
        if (documents.size() > 1) {
            // Only one would be used; which one is a guess the operator should not need.
            return fail(origin_of(documents[1]), "(top level)",
                        "a second YAML document; expected one document per file");
        }
        if (!documents.empty()) {
            root = documents.front();
        }
    } catch (const YAML::Exception& e) {
        Origin at;
        at.line = e.mark.is_null() ? 0 : e.mark.line + 1;
        return make_error("config.invalid", where(at) + ": YAML syntax error: " + e.msg);
    }
    if (!root.IsNull() && !root.IsMap()) {
        return fail(
            origin_of(root), "(top level)",
            "expected a mapping of sections (log, http, cache, upstream, uploads, storage)");
    }
    if (root.IsMap()) {
        if (Status s = walk(root, ""); !s) {
            return s.error();
        }
    }
    if (Status s = apply_env(); !s) {
        return s.error();
    }
    if (Status s = cross_check(); !s) {
        return s.error();
    }
    return std::move(config_);
}

std::string Loader::where(const Origin& o) const {
    if (!o.env_var.empty()) {
        return o.env_var;
    }
    if (o.line > 0) {
        return file_ + ":" + std::to_string(o.line);
    }
    return file_;
}

Error Loader::fail(const Origin& o, std::string_view path, const std::string& what) const {
    return make_error("config.invalid", where(o) + ": " + std::string(path) + ": " + what);
}

Origin Loader::origin_of(const YAML::Node& node) const {
    Origin o;
    const YAML::Mark m = node.Mark();
    o.line = m.is_null() ? 0 : m.line + 1;
    return o;
}

// The origin of a path if it was set, else of its nearest set section, else the file.
Origin Loader::origin_or_section(std::string path) const {
    for (;;) {
        if (auto it = origins_.find(path); it != origins_.end()) {
            return it->second;
        }
        const std::size_t dot = path.rfind('.');
        if (dot == std::string::npos) {
            return Origin{};
        }
        path.resize(dot);
    }
}

void Loader::ensure_s3(const Origin& o) {
    if (!config_.storage.s3) {
        config_.storage.s3.emplace();
        origins_.emplace("storage.s3", o);
    }
}

void Loader::ensure_auth(const Origin& o) {
    if (!config_.auth) {
        config_.auth.emplace();
        origins_.emplace("auth", o);
    }
}

// A list of non-empty strings ("[a, b]" or a block list); a single string is taken as a
// list of one.
Result<std::vector<std::string>> Loader::string_list(const YAML::Node& v, const std::string& path) {
    std::vector<std::string> out;
    if (v.IsNull()) return out;
    if (v.IsScalar()) {
        out.push_back(v.Scalar());
        return out;
    }
    if (!v.IsSequence()) return fail(origin_of(v), path, "expected a list of names");
    for (const auto& item : v) {
        if (!item.IsScalar() || item.Scalar().empty())
            return fail(origin_of(item), path, "expected a list of non-empty names");
        out.push_back(item.Scalar());
    }
    return out;
}

Status Loader::auth_list(const std::string& path, const YAML::Node& v, const Origin& at) {
    ensure_auth(at);
    AuthConfig& a = *config_.auth;
    origins_[path] = at;
    if (path == "auth.passthrough") {
        auto l = string_list(v, path);
        if (!l) return l.error();
        a.passthrough = std::move(*l);
        return {};
    }
    if (path == "auth.groups") {
        if (v.IsNull()) return {};
        if (!v.IsMap()) return fail(at, path, "expected a mapping of group name -> users");
        for (const auto& entry : v) {
            const YAML::Node k = entry.first;
            if (!k.IsScalar()) return fail(at, path, "group names must be plain names");
            auto l = string_list(entry.second, path + "." + k.Scalar());
            if (!l) return l.error();
            a.groups[k.Scalar()] = std::move(*l);
        }
        return {};
    }
    // auth.rules
    if (v.IsNull()) return {};
    if (!v.IsSequence())
        return fail(at, path, "expected a list of rules ({repositories, pull, push})");
    std::size_t i = 0;
    for (const auto& item : v) {
        const std::string here = path + "[" + std::to_string(i++) + "]";
        if (!item.IsMap())
            return fail(origin_of(item), here,
                        "expected a mapping with repositories, pull and/or push");
        AuthRule rule;
        for (const auto& entry : item) {
            const YAML::Node k = entry.first;
            const std::string name = k.IsScalar() ? k.Scalar() : std::string();
            std::vector<std::string>* field = name == "repositories" ? &rule.repositories
                                              : name == "pull"       ? &rule.pull
                                              : name == "push"       ? &rule.push
                                                                     : nullptr;
            if (field == nullptr)
                return fail(origin_of(k), here + "." + name,
                            "unknown key; expected repositories, pull or push");
            auto l = string_list(entry.second, here + "." + name);
            if (!l) return l.error();
            *field = std::move(*l);
        }
        if (rule.repositories.empty())
            return fail(origin_of(item), here + ".repositories",
                        "required: the repository patterns the rule covers");
        a.rules.push_back(std::move(rule));
    }
    return {};
}

Status Loader::walk(const YAML::Node& map, const std::string& prefix) {
    std::set<std::string> seen;
    // By value: yaml-cpp's iterators hand out temporaries (it->first would dangle).
    for (const auto& entry : map) {
        const YAML::Node k = entry.first;
        const YAML::Node v = entry.second;
        const Origin at = origin_of(k);
        if (!k.IsScalar()) {
            return fail(at, prefix.empty() ? "(top level)" : prefix, "keys must be plain names");
        }
        const std::string path = prefix.empty() ? k.Scalar() : prefix + "." + k.Scalar();
        if (!seen.insert(k.Scalar()).second) {
            return fail(at, path, "duplicate key (the earlier value would be lost)");
        }
        if (is_section(path)) {
            if (!v.IsMap() && !v.IsNull()) {
                return fail(at, path, "expected a section (a mapping of keys)");
            }
            if (path == "storage.s3") {
                ensure_s3(at);
            }
            if (path == "auth") {
                ensure_auth(at);
            }
            origins_.emplace(path, at);
            if (v.IsMap()) {
                if (Status s = walk(v, path); !s) {
                    return s;
                }
            }
            continue;
        }
        if (std::find(kAuthLists.begin(), kAuthLists.end(), path) != kAuthLists.end()) {
            if (Status s = auth_list(path, v, at); !s) {
                return s;
            }
            continue;
        }
        const Key* key = find_key(path);
        if (key == nullptr) {
            return fail(at, path, unknown_key_hint(path));
        }
        if (!v.IsScalar() && !v.IsNull()) {
            return fail(at, path,
                        std::string("expected a single value, got a ") +
                            (v.IsSequence() ? "list" : "mapping"));
        }
        if (Status s = apply(*key, v.IsNull() ? nullptr : &v.Scalar(), at); !s) {
            return s;
        }
    }
    return {};
}

std::string Loader::unknown_key_hint(const std::string& path) {
    std::string msg = "unknown key";
    const std::string near = suggestion(path);
    if (!near.empty()) {
        msg += "; did you mean " + near + "?";
    } else if (path.starts_with("storage.") && !path.starts_with("storage.s3.")) {
        msg += "; storage.s3 is the only storage section (the local cache is under cache)";
    }
    return msg;
}

// Sets one key from its text (`text` null: YAML null, i.e. "key:" with nothing after it).
Status Loader::apply(const Key& key, const std::string* text, const Origin& at) {
    if (is_s3_path(key.path)) {
        ensure_s3(at);
    }
    if (is_auth_path(key.path)) {
        ensure_auth(at);
    }
    origins_[std::string(key.path)] = at;
    const std::string_view path = key.path;
    return std::visit([&](const auto& kind) -> Status { return set(kind, path, text, at); },
                      key.kind);
}

Status Loader::set(const StringKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    // Null is the empty string, as in Distribution ("accesskey:" means none).
    std::string value = text == nullptr ? std::string() : *text;
    if (k.check != nullptr) {
        if (std::string problem = k.check(value); !problem.empty()) {
            return fail(at, path, problem);
        }
    }
    k.field(config_) = std::move(value);
    return {};
}

Status Loader::set(const EnumKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};  // default stays
    }
    const std::string want = ascii_lower(*text);
    for (std::string_view allowed : k.allowed) {
        if (ascii_lower(allowed) == want) {
            k.field(config_) = std::string(allowed);
            return {};
        }
    }
    std::string list;
    for (std::string_view allowed : k.allowed) {
        list += (list.empty() ? "" : "|") + std::string(allowed);
    }
    return fail(at, path, "expected one of " + list + ", got " + quoted(*text));
}

Status Loader::set(const BoolKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};
    }
    if (!parse_bool(*text, k.field(config_))) {
        return fail(at, path, "expected true or false, got " + quoted(*text));
    }
    return {};
}

Status Loader::set(const SizeKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};
    }
    Result<std::uint64_t> v = parse_size(*text);
    if (!v) {
        return fail(
            at, path,
            "expected a size like 512MiB, got " + quoted(*text) + reason(*text, v.error().message));
    }
    if (*v < k.min) {
        return fail(
            at, path,
            *text + " is below " + std::string(k.min_why.empty() ? "the minimum" : k.min_why) +
                "; expected at least " + std::to_string(k.min) + " (" + format_size(k.min) + ")");
    }
    if (*v > k.max) {
        return fail(
            at, path,
            *text + " is above " + std::string(k.max_why.empty() ? "the maximum" : k.max_why) +
                "; expected at most " + std::to_string(k.max) + " (" + format_size(k.max) + ")");
    }
    k.field(config_) = *v;
    return {};
}

Status Loader::set(const CountKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};
    }
    std::uint64_t v = 0;
    if (!parse_count(*text, v)) {
        return fail(at, path, "expected a whole number, got " + quoted(*text));
    }
    if (v < k.min || v > k.max) {
        return fail(
            at, path,
            "expected " + std::to_string(k.min) + ".." + std::to_string(k.max) + ", got " + *text);
    }
    if (k.u64 != nullptr) {
        k.u64(config_) = v;
    } else {
        k.i32(config_) = static_cast<int>(v);
    }
    return {};
}

Result<Millis> Loader::duration_in(std::string_view path, const std::string& text, Millis min,
                                   Millis max, const Origin& at) const {
    Result<Millis> v = parse_duration(text);
    if (!v) {
        return fail(at, path,
                    "expected a duration like 30s, 250ms or 2h30m, got " + quoted(text) +
                        reason(text, v.error().message));
    }
    if (*v < min || *v > max) {
        return fail(
            at, path,
            "expected " + format_duration(min) + ".." + format_duration(max) + ", got " + text);
    }
    return *v;
}

Status Loader::set(const MillisKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};
    }
    Result<Millis> v = duration_in(path, *text, k.min, k.max, at);
    if (!v) {
        return v.error();
    }
    k.field(config_) = *v;
    return {};
}

Status Loader::set(const SecondsKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text == nullptr) {
        return {};
    }
    Result<Millis> v = duration_in(path, *text, k.min, k.max, at);
    if (!v) {
        return v.error();
    }
    if (v->count() % 1000 != 0) {
        return fail(at, path, "expected whole seconds, got " + *text);
    }
    k.field(config_) = std::chrono::duration_cast<Seconds>(*v);
    return {};
}

Status Loader::set(const IgnoredKey& k, std::string_view path, const std::string* text,
                   const Origin& at) {
    if (text != nullptr) {
        bool b = false;
        std::uint64_t n = 0;
        if (k.type == ValueType::kBool && !parse_bool(*text, b)) {
            return fail(at, path, "expected true or false, got " + quoted(*text));
        }
        if (k.type == ValueType::kInteger && !parse_count(*text, n) && !parse_size(*text)) {
            return fail(at, path, "expected a whole number, got " + quoted(*text));
        }
    }
    config_.notes.push_back(where(at) + ": " + std::string(path) + ": accepted and not used (" +
                            std::string(k.why) + ")");
    return {};
}

}  // namespace drayage::config::detail
