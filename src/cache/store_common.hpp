// Helpers shared by the two BlobStore implementations (not part of the public interface).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "drayage/cache/blob_store.hpp"

namespace drayage::cache::detail {

// LMDB's page header (PAGEHDRSZ on 64-bit): an overflow run of n pages holds n * page - 16 bytes.
inline constexpr std::uint64_t kPageHeader = 16;
inline constexpr std::uint64_t kPageSize = 4096;  // the memory store's stand-in for the OS page

// Rounds a requested chunk size so a chunk fills its overflow pages exactly.
inline std::uint64_t round_chunk_size(std::uint64_t requested, std::uint64_t page) {
    std::uint64_t pages = (requested + page / 2) / page;
    if (pages < 2) pages = 2;
    return pages * page - kPageHeader;
}

inline std::uint64_t chunk_charge(std::uint64_t len, std::uint64_t page) {
    if (len == 0) return 0;
    // Values under half a page live in leaf pages next to their key; larger ones get whole
    // overflow pages of their own.
    if (len < page / 2) return len + 24;
    return (len + kPageHeader + page - 1) / page * page;
}

// BlobStore::read_small: whether the bytes of `m` are to be copied (complete, and within both
// `max_bytes` and one chunk).
inline bool small_read_copies(const BlobMeta& m, std::uint64_t max_bytes,
                              std::uint64_t chunk_size) {
    return m.state == BlobState::complete && m.size <= max_bytes && m.size <= chunk_size;
}

inline Error short_chunk_error(const std::string& digest) {
    return make_error(kErrStore, "chunk shorter than its blob says: " + digest);
}

inline void put_be64(std::string& out, std::uint64_t v) {
    for (int i = 7; i >= 0; --i)
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void put_be32(std::string& out, std::uint32_t v) {
    for (int i = 3; i >= 0; --i)
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline std::uint64_t get_be64(const unsigned char* p) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v = (v << 8) | p[i];
    return v;
}

// be64(blob_id) be32(index), built in place: every chunk read of every hit looks one up, and a
// std::string built a byte at a time cost a small hit about 230 instructions.
class ChunkKey {
public:
    ChunkKey(std::uint64_t blob_id, std::uint32_t index) {
        for (int i = 0; i < 8; ++i)
            bytes_[i] = static_cast<char>((blob_id >> (8 * (7 - i))) & 0xff);
        for (int i = 0; i < 4; ++i)
            bytes_[8 + i] = static_cast<char>((index >> (8 * (3 - i))) & 0xff);
    }
    std::string_view view() const { return {bytes_, sizeof bytes_}; }

private:
    char bytes_[12];
};

inline std::string chunk_key(std::uint64_t blob_id, std::uint32_t index) {
    return std::string(ChunkKey(blob_id, index).view());
}

inline std::string lru_key(std::int64_t last_access, std::string_view digest) {
    std::string k;
    put_be64(k, static_cast<std::uint64_t>(last_access));
    k.append(digest);
    return k;
}

inline std::string link_key(std::string_view repo, std::string_view digest) {
    std::string k;
    k.reserve(repo.size() + 1 + digest.size());
    k.append(repo);
    k.push_back('\0');
    k.append(digest);
    return k;
}

// repo '\0' digest, built on the stack when it fits (it does for every repository name the
// registry accepts, at most 255 characters, with a sha256 or sha512 digest): the proof on every
// hit looks one up, without allocating.
class LinkKey {
public:
    LinkKey(std::string_view repo, std::string_view digest) {
        const std::size_t n = repo.size() + 1 + digest.size();
        if (n > sizeof inline_) {
            long_ = link_key(repo, digest);
            view_ = long_;
            return;
        }
        std::memcpy(inline_, repo.data(), repo.size());
        inline_[repo.size()] = '\0';
        std::memcpy(inline_ + repo.size() + 1, digest.data(), digest.size());
        view_ = {inline_, n};
    }
    LinkKey(const LinkKey&) = delete;
    LinkKey& operator=(const LinkKey&) = delete;
    std::string_view view() const { return view_; }

private:
    char inline_[400];
    std::string long_;
    std::string_view view_;
};

// "<checked> <digest> <media type>"; false when the bytes are not such a record.
std::string encode_tag(const TagRecord& r);
bool decode_tag(std::string_view bytes, TagRecord& out);

// Fixed little binary record; the digest is the key, not stored again.
std::string encode_meta(const BlobMeta& m);
bool decode_meta(std::string_view digest, std::string_view bytes, BlobMeta& out);

}  // namespace drayage::cache::detail
