// BlobStore contract, run against both implementations.
#include <lmdb.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "drayage/cache/blob_store.hpp"
#include "support.hpp"

using namespace drayage::cache;
using cachetest::random_bytes;
using cachetest::sha256_digest;
using cachetest::TempDir;

namespace {

struct LmdbKind {
    static std::unique_ptr<BlobStore> make(const StoreOptions& o) {
        auto s = open_lmdb_store(o);
        REQUIRE(s.ok());
        return std::move(*s);
    }
};
struct MemoryKind {
    static std::unique_ptr<BlobStore> make(const StoreOptions& o) { return make_memory_store(o); }
};

void write_blob(BlobStore& store, const std::string& digest, const std::string& data,
                std::int64_t atime = 100) {
    auto w = store.begin_write();
    REQUIRE(w.ok());
    auto id = (*w)->new_blob_id();
    REQUIRE(id.ok());
    const std::uint64_t cs = store.chunk_size();
    for (std::uint64_t off = 0, i = 0; off < data.size(); off += cs, ++i) {
        REQUIRE((*w)->put_chunk(*id, static_cast<std::uint32_t>(i),
                                std::string_view(data).substr(off, cs))
                    .ok());
    }
    BlobMeta m;
    m.digest = digest;
    m.blob_id = *id;
    m.size = data.size();
    m.state = BlobState::complete;
    m.created = m.last_access = atime;
    REQUIRE((*w)->put_meta(m).ok());
    REQUIRE((*w)->commit().ok());
}

std::string read_blob(BlobStore& store, const std::string& digest) {
    auto m = store.stat(digest);
    REQUIRE(m.ok());
    REQUIRE(m->has_value());
    std::string out;
    ChunkBuffer buf;
    const std::uint64_t cs = store.chunk_size();
    for (std::uint64_t i = 0; i * cs < (*m)->size; ++i) {
        REQUIRE(store.read_chunk((*m)->blob_id, static_cast<std::uint32_t>(i), buf).ok());
        out += buf.view();
    }
    return out;
}

}  // namespace

TEMPLATE_TEST_CASE("store round trips at chunk boundaries", "[store]", LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 256 * 1024});
    const std::uint64_t cs = store->chunk_size();
    // A chunk fills its overflow pages exactly: 64 pages minus LMDB's page header.
    CHECK(cs == 256 * 1024 - 16);
    for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, cs - 1, cs, cs + 1,
                               std::uint64_t{5 * 1024 * 1024 + 123}}) {
        DYNAMIC_SECTION("size " << size) {
            std::string data = random_bytes(size, size);
            std::string digest = sha256_digest(data);
            write_blob(*store, digest, data);
            CHECK(read_blob(*store, digest) == data);
            auto m = store->stat(digest);
            REQUIRE(m.ok());
            CHECK((*m)->size == size);
            CHECK((*m)->state == BlobState::complete);
            auto all = store->list();
            REQUIRE(all.ok());
            CHECK(all->size() == 1);
            auto u = store->usage();
            REQUIRE(u.ok());
            std::uint64_t expect = kMetaCharge;
            for (std::uint64_t off = 0; off < size; off += cs)
                expect += store->chunk_charge(std::min(cs, size - off));
            CHECK(u->charged_bytes == expect);
        }
    }
}

TEMPLATE_TEST_CASE("store reads small complete blobs whole in one go", "[store]", LmdbKind,
                   MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 256 * 1024});
    const std::uint64_t cs = store->chunk_size();
    std::string placed;
    int calls = 0;
    auto place = [&](std::size_t n) {
        ++calls;
        placed.assign(n, '\0');
        return placed.data();
    };
    for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{16384}, cs}) {
        DYNAMIC_SECTION("size " << size) {
            std::string data = random_bytes(size, size + 7);
            std::string digest = sha256_digest(data);
            write_blob(*store, digest, data);
            auto r = store->read_small(digest, cs, place, {});
            REQUIRE(r.ok());
            REQUIRE(r->has_value());
            CHECK((*r)->copied);
            CHECK((*r)->meta.size == size);
            CHECK(calls == (size == 0 ? 0 : 1));
            if (size > 0) CHECK(placed == data);
        }
    }
    SECTION("larger than asked, or than a chunk: the meta only") {
        std::string data = random_bytes(cs + 1, 3);
        std::string digest = sha256_digest(data);
        write_blob(*store, digest, data);
        for (std::uint64_t max : {std::uint64_t{1024}, cs + 1, std::uint64_t{1} << 30}) {
            auto r = store->read_small(digest, max, place, {});
            REQUIRE(r.ok());
            REQUIRE(r->has_value());
            CHECK_FALSE((*r)->copied);
            CHECK((*r)->meta.size == cs + 1);
        }
        CHECK(calls == 0);
    }
    SECTION("absent, and still filling") {
        auto r = store->read_small(sha256_digest("nothing"), cs, place, {});
        REQUIRE(r.ok());
        CHECK_FALSE(r->has_value());
        auto w = store->begin_write();
        REQUIRE(w.ok());
        BlobMeta m;
        m.digest = sha256_digest("filling");
        m.blob_id = *(*w)->new_blob_id();
        REQUIRE((*w)->put_chunk(m.blob_id, 0, "fill").ok());
        REQUIRE((*w)->put_meta(m).ok());  // state filling
        REQUIRE((*w)->commit().ok());
        r = store->read_small(m.digest, cs, place, {});
        REQUIRE(r.ok());
        REQUIRE(r->has_value());
        CHECK_FALSE((*r)->copied);
        CHECK((*r)->meta.state == BlobState::filling);
        CHECK(calls == 0);
    }
}

TEMPLATE_TEST_CASE("store reads a small blob only for a repository that links it", "[store]",
                   LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 256 * 1024});
    const std::uint64_t cs = store->chunk_size();
    std::string placed;
    auto place = [&](std::size_t n) {
        placed.assign(n, '\0');
        return placed.data();
    };
    std::string data = random_bytes(16384, 11);
    std::string digest = sha256_digest(data);
    write_blob(*store, digest, data);
    {
        auto w = store->begin_write();
        REQUIRE((*w)->link("team/a", digest).ok());
        REQUIRE((*w)->commit().ok());
    }
    auto r = store->read_small(digest, cs, place, "team/a");
    REQUIRE(r.ok());
    REQUIRE(r->has_value());
    CHECK((*r)->linked);
    CHECK((*r)->copied);
    CHECK(placed == data);
    for (std::string_view other : {"team/b", "team", "team/aa"}) {
        placed.clear();
        r = store->read_small(digest, cs, place, other);
        REQUIRE(r.ok());
        REQUIRE(r->has_value());
        CHECK_FALSE((*r)->linked);
        CHECK_FALSE((*r)->copied);
        CHECK(placed.empty());
    }
    // Linked but not cached: no meta, as without the proof.
    const std::string absent = sha256_digest("absent");
    {
        auto w = store->begin_write();
        REQUIRE((*w)->link("team/a", absent).ok());
        REQUIRE((*w)->commit().ok());
    }
    r = store->read_small(absent, cs, place, "team/a");
    REQUIRE(r.ok());
    CHECK_FALSE(r->has_value());
}

TEMPLATE_TEST_CASE("store drops blobs and collects their chunks in bounded steps", "[store]",
                   LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    std::string data = random_bytes(10 * store->chunk_size() + 5, 7);
    std::string digest = sha256_digest(data);
    write_blob(*store, digest, data);
    {
        auto w = store->begin_write();
        REQUIRE(w.ok());
        auto d = (*w)->drop_blob(digest);
        REQUIRE(d.ok());
        CHECK(*d);
        auto n = (*w)->collect_garbage(3);
        REQUIRE(n.ok());
        CHECK(*n == 3);
        REQUIRE((*w)->commit().ok());
    }
    auto m = store->stat(digest);
    REQUIRE(m.ok());
    CHECK_FALSE(m->has_value());
    ChunkBuffer buf;
    CHECK(store->read_chunk(1, 0, buf).error().code == kErrNotFound);  // chunk 0 went first
    CHECK(store->read_chunk(1, 5, buf).ok());                          // not yet collected
    CHECK(store->usage()->garbage_blobs == 1);
    {
        auto w = store->begin_write();
        REQUIRE(w.ok());
        CHECK(*(*w)->collect_garbage(1000) == 8);
        CHECK_FALSE(*(*w)->has_garbage());
        REQUIRE((*w)->commit().ok());
    }
    CHECK(store->usage()->charged_bytes == 0);
    CHECK(store->usage()->garbage_blobs == 0);
    // The same digest again lands under a new blob id, clear of any leftovers.
    write_blob(*store, digest, data);
    CHECK(read_blob(*store, digest) == data);
    CHECK((*store->stat(digest))->blob_id == 2);
}

TEMPLATE_TEST_CASE("store keeps an LRU index in step with last access", "[store]", LmdbKind,
                   MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    std::vector<std::string> digests;
    for (int i = 0; i < 5; ++i) {
        std::string data =
            random_bytes(100 + static_cast<std::size_t>(i), static_cast<std::uint64_t>(i));
        digests.push_back(sha256_digest(data));
        write_blob(*store, digests.back(), data, 1000 - i);  // later ones are older
    }
    {
        auto w = store->begin_write();
        REQUIRE(w.ok());
        BlobMeta m = **(*w)->get_meta(digests[4]);
        m.last_access = 5000;  // the oldest becomes the newest
        m.hits = 3;
        REQUIRE((*w)->put_meta(m).ok());
        auto oldest = (*w)->oldest(0, 2);
        REQUIRE(oldest.ok());
        REQUIRE(oldest->size() == 2);
        CHECK((*oldest)[0].digest == digests[3]);
        CHECK((*oldest)[1].digest == digests[2]);
        auto skipped = (*w)->oldest(4, 10);
        REQUIRE(skipped->size() == 1);
        CHECK((*skipped)[0].digest == digests[4]);
        REQUIRE((*w)->commit().ok());
    }
    CHECK((*store->stat(digests[4]))->hits == 3);
}

TEMPLATE_TEST_CASE("store records which repositories a blob belongs to", "[store]", LmdbKind,
                   MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    std::string d = sha256_digest("x");
    {
        auto w = store->begin_write();
        REQUIRE((*w)->link("library/alpine", d).ok());
        REQUIRE((*w)->commit().ok());
    }
    CHECK(*store->is_linked("library/alpine", d));
    CHECK_FALSE(*store->is_linked("library/alpin", d));
    CHECK_FALSE(*store->is_linked("library/alpine", sha256_digest("y")));
    CHECK_FALSE(*store->is_linked("library", d));
}

TEMPLATE_TEST_CASE("store unlinks a repository and knows whether any other still links a blob",
                   "[store]", LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    const std::string d = sha256_digest("x"), other = sha256_digest("y");
    {
        auto w = store->begin_write();
        REQUIRE((*w)->link("team/a", d).ok());
        REQUIRE((*w)->link("team/b", d).ok());
        REQUIRE((*w)->link("team/a", other).ok());
        REQUIRE((*w)->commit().ok());
    }
    auto w = store->begin_write();
    REQUIRE(w.ok());
    CHECK(*(*w)->unlink("team/a", d));
    CHECK_FALSE(*(*w)->unlink("team/a", d));  // gone already
    CHECK_FALSE(*(*w)->unlink("team/c", d));  // never linked
    CHECK(*(*w)->has_links(d));               // team/b still links it
    CHECK(*(*w)->unlink("team/b", d));
    CHECK_FALSE(*(*w)->has_links(d));  // read inside the same transaction
    CHECK(*(*w)->has_links(other));
    CHECK_FALSE(*(*w)->has_links(sha256_digest("never")));
    REQUIRE((*w)->commit().ok());
    CHECK_FALSE(*store->is_linked("team/a", d));
    CHECK_FALSE(*store->is_linked("team/b", d));
    CHECK(*store->is_linked("team/a", other));
}

TEST_CASE("lmdb store indexes the links of a store written before the index existed", "[store]") {
    TempDir dir;
    const std::string d = sha256_digest("old");
    {
        // A store of the earlier format: links, no linked_by. Written with LMDB directly.
        MDB_env* env = nullptr;
        REQUIRE(mdb_env_create(&env) == 0);
        mdb_env_set_maxdbs(env, 8);
        std::filesystem::create_directories(dir.path);
        REQUIRE(mdb_env_open(env, dir.path.c_str(), MDB_NOTLS, 0644) == 0);
        MDB_txn* txn = nullptr;
        REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
        MDB_dbi links = 0;
        REQUIRE(mdb_dbi_open(txn, "links", MDB_CREATE, &links) == 0);
        std::string key = "team/a";
        key.push_back('\0');
        key += d;
        MDB_val k{key.size(), key.data()};
        MDB_val v{0, nullptr};
        REQUIRE(mdb_put(txn, links, &k, &v, 0) == 0);
        REQUIRE(mdb_txn_commit(txn) == 0);
        mdb_env_close(env);
    }
    auto store = LmdbKind::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    CHECK(*store->is_linked("team/a", d));
    auto w = store->begin_write();
    REQUIRE(w.ok());
    CHECK(*(*w)->has_links(d));
    CHECK(*(*w)->unlink("team/a", d));
    CHECK_FALSE(*(*w)->has_links(d));
}

TEMPLATE_TEST_CASE("store drops the tag records of one repository that name a digest", "[store]",
                   LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    const std::string d1 = sha256_digest("one"), d2 = sha256_digest("two");
    {
        auto w = store->begin_write();
        REQUIRE((*w)->put_tag("team/a:v1", TagRecord{d1, "application/json", 1}).ok());
        REQUIRE((*w)->put_tag("team/a:latest", TagRecord{d1, "application/json", 1}).ok());
        REQUIRE((*w)->put_tag("team/a:v2", TagRecord{d2, "application/json", 1}).ok());
        REQUIRE((*w)->put_tag("team/ab:v1", TagRecord{d1, "application/json", 1}).ok());
        REQUIRE((*w)->put_tag("team/b:v1", TagRecord{d1, "application/json", 1}).ok());
        REQUIRE((*w)->commit().ok());
    }
    {
        auto w = store->begin_write();
        auto n = (*w)->drop_tags_naming("team/a", d1);
        REQUIRE(n.ok());
        CHECK(*n == 2);
        REQUIRE((*w)->commit().ok());
    }
    CHECK_FALSE(store->get_tag("team/a:v1")->has_value());
    CHECK_FALSE(store->get_tag("team/a:latest")->has_value());
    CHECK(store->get_tag("team/a:v2")->has_value());
    CHECK(store->get_tag("team/ab:v1")->has_value());  // another repository, same prefix
    CHECK(store->get_tag("team/b:v1")->has_value());
}

TEMPLATE_TEST_CASE("store keeps tag records and drops those checked too long ago", "[store]",
                   LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    const std::string d1 = sha256_digest("one"), d2 = sha256_digest("two");
    const std::string oci = "application/vnd.oci.image.index.v1+json";
    {
        auto w = store->begin_write();
        REQUIRE((*w)->put_tag("library/alpine:3.19", TagRecord{d1, oci, 1000}).ok());
        REQUIRE((*w)->put_tag("library/alpine:latest", TagRecord{d1, oci, 2000}).ok());
        REQUIRE((*w)->put_tag("team/app:v1", TagRecord{d2, "application/json", 3000}).ok());
        REQUIRE((*w)->commit().ok());
    }
    auto t = store->get_tag("library/alpine:latest");
    REQUIRE(t.ok());
    REQUIRE(t->has_value());
    CHECK((*t)->digest == d1);
    CHECK((*t)->media_type == oci);
    CHECK((*t)->checked == 2000);
    CHECK_FALSE(store->get_tag("library/alpine:edge")->has_value());
    {
        // Replaced, dropped, expired.
        auto w = store->begin_write();
        REQUIRE((*w)->put_tag("library/alpine:latest", TagRecord{d2, oci, 2500}).ok());
        REQUIRE((*w)->drop_tag("team/app:v1").ok());
        REQUIRE((*w)->drop_tag("team/app:absent").ok());
        auto n = (*w)->drop_tags_checked_before(2000);
        REQUIRE(n.ok());
        CHECK(*n == 1);
        REQUIRE((*w)->commit().ok());
    }
    CHECK_FALSE(store->get_tag("library/alpine:3.19")->has_value());
    CHECK_FALSE(store->get_tag("team/app:v1")->has_value());
    CHECK((*store->get_tag("library/alpine:latest"))->digest == d2);
    CHECK((*store->get_tag("library/alpine:latest"))->checked == 2500);
}

TEST_CASE("lmdb store keeps tag records across a reopen", "[store]") {
    TempDir dir;
    const std::string d = sha256_digest("m");
    {
        auto store = LmdbKind::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
        auto w = store->begin_write();
        REQUIRE(
            (*w)->put_tag("a/b:c",
                          TagRecord{d, "application/vnd.docker.distribution.manifest.v2+json", 42})
                .ok());
        REQUIRE((*w)->commit().ok());
        REQUIRE(store->sync().ok());
    }
    auto store = LmdbKind::make({dir.path.string(), 64 * 1024 * 1024, 64 * 1024});
    auto t = store->get_tag("a/b:c");
    REQUIRE(t.ok());
    REQUIRE(t->has_value());
    CHECK((*t)->digest == d);
    CHECK((*t)->checked == 42);
}

TEMPLATE_TEST_CASE("store reports a full map as kErrMapFull", "[store]", LmdbKind, MemoryKind) {
    TempDir dir;
    auto store = TestType::make({dir.path.string(), 1024 * 1024, 1024 * 1024});
    std::string chunk = random_bytes(store->chunk_size(), 1);
    auto w = store->begin_write();
    REQUIRE(w.ok());
    drayage::Status st;
    std::uint32_t i = 0;
    for (; i < 200 && st.ok(); ++i)
        st = (*w)->put_chunk(1, i, chunk);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == kErrMapFull);
    CHECK((i - 1) * store->chunk_size() <= map_size_for(1024 * 1024));  // the last put failed
}

TEST_CASE("lmdb store persists, keeps its chunk size, and its overhead is within the stated margin",
          "[store]") {
    TempDir dir;
    std::vector<std::pair<std::string, std::string>> blobs;
    {
        auto store = LmdbKind::make({dir.path.string(), 256 * 1024 * 1024, 256 * 1024});
        for (int i = 0; i < 40; ++i) {
            std::string data = random_bytes(static_cast<std::size_t>(1 + i * 97'000),
                                            static_cast<std::uint64_t>(i));
            blobs.emplace_back(sha256_digest(data), data);
            write_blob(*store, blobs.back().first, data);
        }
        auto u = store->usage();
        REQUIRE(u.ok());
        // used_bytes counts every page of every database: the part of it that charged does
        // not cover is the metadata overhead (see blob_store.hpp).
        double overhead =
            (static_cast<double>(u->used_bytes) - static_cast<double>(u->charged_bytes)) /
            static_cast<double>(u->charged_bytes);
        INFO("charged " << u->charged_bytes << " used " << u->used_bytes << " overhead "
                        << overhead);
        CHECK(overhead < 0.001);
        CHECK(u->used_bytes >= u->charged_bytes - 40 * kMetaCharge);
    }
    auto store = LmdbKind::make({dir.path.string(), 256 * 1024 * 1024, 1024 * 1024});
    CHECK(store->chunk_size() == 256 * 1024 - 16);  // an existing store keeps its chunk size
    for (auto& [d, data] : blobs)
        CHECK(read_blob(*store, d) == data);
}
