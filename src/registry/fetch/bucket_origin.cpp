// The bucket as a BlobOrigin (include/drayage/registry/bucket_origin.hpp): an adapter of
// s3::Client::get (s3::ReadHandlers/ObjectRead) to OriginSink/OriginTransfer.
#include "drayage/registry/bucket_origin.hpp"

#include <utility>

#include "drayage/registry/reference.hpp"
#include "drayage/s3/layout.hpp"

namespace drayage::registry {
namespace {

Error as_origin_error(const Error& e) {
    if (e.status == 404 || e.code == "NoSuchKey" || e.code == "NotFound")
        return make_error("NOT_FOUND", "not in the bucket", 404);
    return e;
}

class BucketOrigin final : public BlobOrigin {
public:
    BucketOrigin(s3::Client& client, std::string_view root) : client_(client), layout_(root) {}
    std::string_view name() const override { return "s3"; }

    void head(std::string_view, std::string_view digest,
              std::function<void(Result<OriginHead>)> done) override {
        auto d = BlobDigest::parse(digest);
        if (!d) return done(d.error());
        client_.head(layout_.blob_data_key(*d), [done](Result<s3::ObjectInfo> info) {
            if (!info) return done(as_origin_error(info.error()));
            done(OriginHead{info->size});
        });
    }

    std::shared_ptr<OriginTransfer> get(std::string_view, std::string_view digest,
                                        OriginSink sink) override {
        struct Transfer final : OriginTransfer {
            std::shared_ptr<s3::ObjectRead> read;
            bool cancelled = false;
            void resume() override {
                if (read) read->resume();
            }
            void cancel() override {
                cancelled = true;
                if (read) read->cancel();
                read.reset();
            }
        };
        auto t = std::make_shared<Transfer>();
        auto d = BlobDigest::parse(digest);
        if (!d) {
            // Routes validate digests first; this is a programming error, reported as a failure.
            sink.on_done(d.error());
            return t;
        }
        std::weak_ptr<Transfer> weak = t;
        s3::ReadHandlers h;
        h.on_head = [weak, on_head = sink.on_head](const s3::ObjectInfo& info) {
            if (!on_head(OriginHead{info.total_size})) {
                if (auto tr = weak.lock()) tr->cancel();
            }
        };
        h.on_body = sink.on_data;
        h.on_done = [weak, on_done = sink.on_done](Status st) {
            if (auto tr = weak.lock(); tr && tr->cancelled) return;
            if (!st) return on_done(as_origin_error(st.error()));
            on_done(st);
        };
        t->read = client_.get(layout_.blob_data_key(*d), std::nullopt, std::move(h));
        return t;
    }

private:
    s3::Client& client_;
    s3::BucketLayout layout_;
};

}  // namespace

std::shared_ptr<BlobOrigin> make_bucket_origin(s3::Client& client, std::string_view rootdirectory) {
    return std::make_shared<BucketOrigin>(client, rootdirectory);
}

}  // namespace drayage::registry
