#include "store_common.hpp"

#include <charconv>

namespace drayage::cache {

namespace {
constexpr std::uint8_t kMetaVersion = 1;

template <typename T>
void append_raw(std::string& out, T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    out.append(buf, sizeof(T));
}

template <typename T>
bool read_raw(std::string_view& in, T& v) {
    if (in.size() < sizeof(T)) return false;
    std::memcpy(&v, in.data(), sizeof(T));
    in.remove_prefix(sizeof(T));
    return true;
}
}  // namespace

std::uint64_t map_size_for(std::uint64_t max_size) {
    std::uint64_t map = max_size + max_size / 4 + 64 * 1024 * 1024;
    return (map + 0xfffff) & ~std::uint64_t{0xfffff};
}

bool is_sha256_digest(std::string_view digest) {
    constexpr std::string_view prefix = "sha256:";
    if (digest.size() != prefix.size() + 64 || digest.substr(0, prefix.size()) != prefix) {
        return false;
    }
    for (char c : digest.substr(prefix.size())) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

namespace detail {

std::string encode_meta(const BlobMeta& m) {
    std::string out;
    out.reserve(48 + m.media_type.size());
    append_raw(out, kMetaVersion);
    append_raw(out, static_cast<std::uint8_t>(m.state));
    append_raw(out, m.blob_id);
    append_raw(out, m.size);
    append_raw(out, m.created);
    append_raw(out, m.last_access);
    append_raw(out, m.hits);
    append_raw(out, static_cast<std::uint16_t>(m.media_type.size()));
    out.append(m.media_type);
    return out;
}

bool decode_meta(std::string_view digest, std::string_view in, BlobMeta& out) {
    std::uint8_t version = 0;
    std::uint8_t state = 0;
    std::uint16_t media_len = 0;
    if (!read_raw(in, version) || version != kMetaVersion || !read_raw(in, state) ||
        !read_raw(in, out.blob_id) || !read_raw(in, out.size) || !read_raw(in, out.created) ||
        !read_raw(in, out.last_access) || !read_raw(in, out.hits) || !read_raw(in, media_len) ||
        in.size() != media_len) {
        return false;
    }
    if (state != static_cast<std::uint8_t>(BlobState::filling) &&
        state != static_cast<std::uint8_t>(BlobState::complete)) {
        return false;
    }
    out.state = static_cast<BlobState>(state);
    out.media_type.assign(in);
    out.digest.assign(digest);
    return true;
}

std::string encode_tag(const TagRecord& r) {
    return std::to_string(r.checked) + " " + r.digest + " " + r.media_type;
}

bool decode_tag(std::string_view in, TagRecord& out) {
    auto sp1 = in.find(' ');
    if (sp1 == std::string_view::npos) return false;
    auto sp2 = in.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return false;
    std::string_view checked = in.substr(0, sp1);
    std::int64_t t = 0;
    auto [end, ec] = std::from_chars(checked.data(), checked.data() + checked.size(), t);
    if (ec != std::errc() || end != checked.data() + checked.size()) return false;
    out.checked = t;
    out.digest = std::string(in.substr(sp1 + 1, sp2 - sp1 - 1));
    out.media_type = std::string(in.substr(sp2 + 1));
    return !out.digest.empty();
}

}  // namespace detail
}  // namespace drayage::cache
