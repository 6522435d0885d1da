// The Cache's records besides blobs: documents (manifests), repository links and tag records,
// all written through the writer thread in order with everything else.
#include <memory>
#include <string>
#include <utility>

#include "cache_impl.hpp"
#include "drayage/cache/cache.hpp"
#include "drayage/util/clock.hpp"
#include "reader_core.hpp"
#include "store_common.hpp"

namespace drayage::cache {

Status Cache::put_document(std::string_view digest, std::string_view media_type, std::string bytes,
                           std::function<void(Status)> done) {
    Impl& impl = *impl_;
    if (!is_sha256_digest(digest)) {
        return make_error("DIGEST_INVALID", "not a sha256 digest: " + std::string(digest), 400);
    }
    if (bytes.size() > 16 * 1024 * 1024) {
        return make_error("cache.too_large", "documents over 16 MiB are not cached");
    }
    std::uint64_t id = ++impl.next_doc_id;
    std::string d(digest);
    auto shared = std::make_shared<const std::string>(std::move(bytes));
    impl.pending_docs[d] = Impl::PendingDoc{id, std::string(media_type), shared};
    if (done) impl.doc_callbacks[id] = std::move(done);
    WriterOp op;
    op.kind = WriterOp::Kind::document;
    op.id = id;
    op.digest = d;
    op.media_type = std::string(media_type);
    op.data = std::move(shared);
    op.now = clock::unix_now();
    impl.writer->push(std::move(op));
    return {};
}

Result<std::optional<Document>> Cache::get_document(std::string_view digest) {
    Impl& impl = *impl_;
    std::string d(digest);
    auto p = impl.pending_docs.find(d);
    if (p != impl.pending_docs.end()) {
        return std::optional<Document>{Document{p->second.media_type, *p->second.bytes}};
    }
    auto reader = open_reader(digest, 0, std::nullopt);
    if (!reader) {
        if (reader.error().code == kErrNotFound) return std::optional<Document>{};
        return reader.error();
    }
    if ((*reader)->core_->fill)
        return std::optional<Document>{};  // a blob being filled, not a document
    auto m = impl.store->stat(digest);
    if (!m) return m.error();
    if (!*m) return std::optional<Document>{};
    Document doc;
    doc.media_type = (*m)->media_type;
    for (;;) {
        ReadResult r = (*reader)->read(impl.store->chunk_size());
        if (r.kind == ReadResult::Kind::data) {
            doc.bytes.append(r.bytes);
        } else if (r.kind == ReadResult::Kind::end) {
            break;
        } else {
            return r.error;
        }
    }
    return std::optional<Document>{std::move(doc)};
}

using detail::link_key;

void Cache::link(std::string_view repo, std::string_view digest) {
    Impl& impl = *impl_;
    std::string key = link_key(repo, digest);
    impl.pending_unlinks.erase(key);
    impl.pending_links.insert(key);
    WriterOp op;
    op.kind = WriterOp::Kind::link;
    op.digest = std::move(key);
    impl.writer->push(std::move(op));
}

void Cache::unlink(std::string_view repo, std::string_view digest, std::function<void()> done) {
    Impl& impl = *impl_;
    std::string key = link_key(repo, digest);
    impl.pending_links.erase(key);
    impl.pending_unlinks.insert(key);
    WriterOp op;
    op.kind = WriterOp::Kind::unlink;
    op.digest = std::move(key);
    impl.writer->push(std::move(op));
    if (done) when_idle(std::move(done));
}

std::optional<bool> Cache::Impl::queued_link(std::string_view repo, std::string_view digest) const {
    if (pending_links.empty() && pending_unlinks.empty()) return std::nullopt;  // rare on a hit
    std::string key = link_key(repo, digest);
    if (pending_links.count(key) > 0) return true;
    if (pending_unlinks.count(key) > 0) return false;
    return std::nullopt;
}

Result<bool> Cache::is_linked(std::string_view repo, std::string_view digest) {
    if (auto queued = impl_->queued_link(repo, digest)) return *queued;
    return impl_->store->is_linked(repo, digest);
}

void Cache::put_tag(std::string_view key, TagRecord record) {
    WriterOp op;
    op.kind = WriterOp::Kind::tag_put;
    op.digest = std::string(key);
    op.tag = std::move(record);
    impl_->writer->push(std::move(op));
}

void Cache::drop_tag(std::string_view key) {
    WriterOp op;
    op.kind = WriterOp::Kind::tag_drop;
    op.digest = std::string(key);
    impl_->writer->push(std::move(op));
}

void Cache::drop_tags_checked_before(std::int64_t unix_seconds) {
    WriterOp op;
    op.kind = WriterOp::Kind::tags_expire;
    op.now = unix_seconds;
    impl_->writer->push(std::move(op));
}

Result<std::optional<TagRecord>> Cache::get_tag(std::string_view key) {
    return impl_->store->get_tag(key);
}

bool Cache::evict(std::string_view digest) {
    std::string d(digest);
    if (impl_->pins.count(d) > 0) return false;
    WriterOp op;
    op.kind = WriterOp::Kind::evict;
    op.digest = d;
    impl_->writer->push(std::move(op));
    return true;
}

void Cache::when_idle(std::function<void()> cb) {
    std::uint64_t id = ++impl_->next_doc_id;
    impl_->idle_callbacks[id] = std::move(cb);
    WriterOp op;
    op.kind = WriterOp::Kind::barrier;
    op.id = id;
    impl_->writer->push(std::move(op));
}

}  // namespace drayage::cache
