// The in-memory BlobStore for tests: same contract as the LMDB one, including snapshot reads
// during a write (a write works on a copy of the state that replaces it at commit) and
// kErrMapFull once the charged bytes pass the map size the LMDB store would have.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "drayage/cache/blob_store.hpp"
#include "store_common.hpp"

namespace drayage::cache {
namespace {

using detail::kPageSize;

struct MemState {
    std::map<std::string, BlobMeta, std::less<>> meta;
    std::map<std::pair<std::uint64_t, std::uint32_t>, std::shared_ptr<const std::string>> chunks;
    std::set<std::pair<std::int64_t, std::string>> lru;
    std::set<std::string, std::less<>> links;
    std::map<std::string, TagRecord, std::less<>> tags;
    std::set<std::uint64_t> garbage;
    std::uint64_t charged = 0;
    std::uint64_t next_id = 1;
};

class MemoryStore;

class MemoryWrite final : public StoreWrite {
public:
    MemoryWrite(MemoryStore& store, std::unique_lock<std::mutex> writer_lock, MemState state,
                std::uint64_t map_limit)
        : store_(store),
          lock_(std::move(writer_lock)),
          s_(std::move(state)),
          map_limit_(map_limit) {}

    Result<std::optional<BlobMeta>> get_meta(std::string_view digest) override {
        auto it = s_.meta.find(digest);
        if (it == s_.meta.end()) return std::optional<BlobMeta>{};
        return std::optional<BlobMeta>{it->second};
    }

    Status put_meta(const BlobMeta& meta) override {
        if (dead_) return make_error(kErrMapFull, "transaction is dead");
        auto it = s_.meta.find(meta.digest);
        if (it != s_.meta.end()) {
            s_.lru.erase({it->second.last_access, it->second.digest});
        } else {
            s_.charged += kMetaCharge;
        }
        s_.meta[meta.digest] = meta;
        s_.lru.insert({meta.last_access, meta.digest});
        return {};
    }

    Result<std::uint64_t> new_blob_id() override { return s_.next_id++; }

    Status put_chunk(std::uint64_t blob_id, std::uint32_t index, std::string_view bytes) override {
        if (dead_) return make_error(kErrMapFull, "transaction is dead");
        std::uint64_t c = detail::chunk_charge(bytes.size(), kPageSize);
        if (s_.charged + c > map_limit_) {
            dead_ = true;
            return make_error(kErrMapFull, "writing chunk: MDB_MAP_FULL (memory store)");
        }
        s_.chunks[{blob_id, index}] = std::make_shared<const std::string>(bytes);
        s_.charged += c;
        return {};
    }

    Result<bool> drop_blob(std::string_view digest) override {
        auto it = s_.meta.find(digest);
        if (it == s_.meta.end()) return false;
        s_.lru.erase({it->second.last_access, it->second.digest});
        s_.garbage.insert(it->second.blob_id);
        s_.meta.erase(it);
        s_.charged = s_.charged >= kMetaCharge ? s_.charged - kMetaCharge : 0;
        return true;
    }

    Result<std::uint64_t> collect_garbage(std::uint64_t max_chunks) override {
        std::uint64_t deleted = 0;
        while (deleted < max_chunks && !s_.garbage.empty()) {
            std::uint64_t id = *s_.garbage.begin();
            auto it = s_.chunks.lower_bound({id, 0});
            while (deleted < max_chunks && it != s_.chunks.end() && it->first.first == id) {
                std::uint64_t c = detail::chunk_charge(it->second->size(), kPageSize);
                s_.charged = s_.charged >= c ? s_.charged - c : 0;
                it = s_.chunks.erase(it);
                ++deleted;
            }
            if (it == s_.chunks.end() || it->first.first != id) {
                s_.garbage.erase(id);
            }
        }
        return deleted;
    }

    Result<bool> has_garbage() override { return !s_.garbage.empty(); }

    Result<std::vector<BlobMeta>> oldest(std::size_t skip, std::size_t n) override {
        std::vector<BlobMeta> out;
        std::size_t seen = 0;
        for (const auto& [atime, digest] : s_.lru) {
            if (out.size() >= n) break;
            if (seen++ < skip) continue;
            out.push_back(s_.meta.at(digest));
        }
        return out;
    }

    Status link(std::string_view repo, std::string_view digest) override {
        s_.links.insert(detail::link_key(repo, digest));
        return {};
    }

    Result<bool> unlink(std::string_view repo, std::string_view digest) override {
        return s_.links.erase(detail::link_key(repo, digest)) > 0;
    }

    // A scan: the memory store is for tests (the LMDB store keeps an index by digest).
    Result<bool> has_links(std::string_view digest) override {
        return std::any_of(s_.links.begin(), s_.links.end(), [digest](const std::string& k) {
            std::string_view key(k);
            std::size_t z = key.find('\0');
            return z != std::string_view::npos && key.substr(z + 1) == digest;
        });
    }

    Result<std::uint64_t> drop_tags_naming(std::string_view repo,
                                           std::string_view digest) override {
        std::string prefix = std::string(repo) + ":";
        return std::erase_if(s_.tags, [&](const auto& kv) {
            return std::string_view(kv.first).substr(0, prefix.size()) == prefix &&
                   kv.second.digest == digest;
        });
    }

    Status put_tag(std::string_view key, const TagRecord& record) override {
        s_.tags[std::string(key)] = record;
        return {};
    }

    Status drop_tag(std::string_view key) override {
        if (auto it = s_.tags.find(key); it != s_.tags.end()) s_.tags.erase(it);
        return {};
    }

    Result<std::uint64_t> drop_tags_checked_before(std::int64_t before) override {
        return std::erase_if(s_.tags,
                             [before](const auto& kv) { return kv.second.checked < before; });
    }

    std::uint64_t charged_bytes() const override { return s_.charged; }

    Status commit() override;

private:
    MemoryStore& store_;
    std::unique_lock<std::mutex> lock_;
    MemState s_;
    std::uint64_t map_limit_;
    bool dead_ = false;
};

class MemoryStore final : public BlobStore {
public:
    explicit MemoryStore(const StoreOptions& o)
        : max_size_(o.max_size),
          map_size_(o.map_size != 0 ? o.map_size : map_size_for(o.max_size)),
          chunk_size_(detail::round_chunk_size(o.chunk_size, kPageSize)) {}

    std::uint64_t chunk_size() const override { return chunk_size_; }
    std::uint64_t max_size() const override { return max_size_; }
    std::uint64_t chunk_charge(std::uint64_t len) const override {
        return detail::chunk_charge(len, kPageSize);
    }

    Result<std::optional<BlobMeta>> stat(std::string_view digest) override {
        std::lock_guard lock(mu_);
        auto it = state_.meta.find(digest);
        if (it == state_.meta.end()) return std::optional<BlobMeta>{};
        return std::optional<BlobMeta>{it->second};
    }

    Status read_chunk(std::uint64_t blob_id, std::uint32_t index, ChunkBuffer& out) override {
        std::shared_ptr<const std::string> c;
        {
            std::lock_guard lock(mu_);
            auto it = state_.chunks.find({blob_id, index});
            if (it == state_.chunks.end())
                return make_error(kErrNotFound, "reading chunk: not found");
            c = it->second;
        }
        std::memcpy(out.resize(c->size()), c->data(), c->size());
        return {};
    }

    Result<std::optional<SmallRead>> read_small(std::string_view digest, std::uint64_t max_bytes,
                                                const std::function<char*(std::size_t)>& place,
                                                std::string_view linked_to) override {
        std::lock_guard lock(mu_);
        if (!linked_to.empty() && state_.links.count(detail::link_key(linked_to, digest)) == 0) {
            SmallRead unlinked;
            unlinked.linked = false;
            return std::optional<SmallRead>{std::move(unlinked)};
        }
        auto it = state_.meta.find(digest);
        if (it == state_.meta.end()) return std::optional<SmallRead>{};
        SmallRead out{it->second, false};
        const BlobMeta& m = out.meta;
        if (!detail::small_read_copies(m, max_bytes, chunk_size_)) {
            return std::optional<SmallRead>{std::move(out)};
        }
        if (m.size > 0) {
            auto c = state_.chunks.find({m.blob_id, 0});
            if (c == state_.chunks.end())
                return make_error(kErrNotFound, "reading chunk: not found");
            if (c->second->size() != m.size) {
                return detail::short_chunk_error(m.digest);
            }
            char* dst = place(m.size);
            if (dst == nullptr) return make_error(kErrStore, "no memory to read a chunk into");
            std::memcpy(dst, c->second->data(), m.size);
        }
        out.copied = true;
        return std::optional<SmallRead>{std::move(out)};
    }

    Result<std::unique_ptr<StoreWrite>> begin_write() override {
        std::unique_lock writer(writer_mu_);
        MemState copy;
        {
            std::lock_guard lock(mu_);
            copy = state_;
        }
        return std::unique_ptr<StoreWrite>(
            std::make_unique<MemoryWrite>(*this, std::move(writer), std::move(copy), map_size_));
    }

    Result<std::vector<BlobMeta>> list() override {
        std::lock_guard lock(mu_);
        std::vector<BlobMeta> out;
        for (const auto& [d, m] : state_.meta)
            out.push_back(m);
        return out;
    }

    Result<bool> is_linked(std::string_view repo, std::string_view digest) override {
        std::lock_guard lock(mu_);
        return state_.links.count(detail::link_key(repo, digest)) > 0;
    }

    Result<std::optional<TagRecord>> get_tag(std::string_view key) override {
        std::lock_guard lock(mu_);
        auto it = state_.tags.find(key);
        if (it == state_.tags.end()) return std::optional<TagRecord>{};
        return std::optional<TagRecord>{it->second};
    }

    Status sync() override { return {}; }

    Result<StoreUsage> usage() override {
        std::lock_guard lock(mu_);
        StoreUsage u;
        u.charged_bytes = state_.charged;
        u.used_bytes = state_.charged;
        u.file_bytes = state_.charged;
        u.map_bytes = map_size_;
        u.max_size = max_size_;
        u.blobs = state_.meta.size();
        u.garbage_blobs = state_.garbage.size();
        u.chunk_size = chunk_size_;
        return u;
    }

    void install(MemState&& s) {
        std::lock_guard lock(mu_);
        state_ = std::move(s);
    }

private:
    std::mutex writer_mu_;  // the single writer, like LMDB's write lock
    std::mutex mu_;         // guards state_ for snapshot reads
    MemState state_;
    std::uint64_t max_size_;
    std::uint64_t map_size_;
    std::uint64_t chunk_size_;
};

Status MemoryWrite::commit() {
    if (dead_) return make_error(kErrMapFull, "committing a dead transaction");
    store_.install(std::move(s_));
    lock_.unlock();
    return {};
}

}  // namespace

std::unique_ptr<BlobStore> make_memory_store(const StoreOptions& options) {
    return std::make_unique<MemoryStore>(options);
}

}  // namespace drayage::cache
