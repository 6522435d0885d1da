// The upstream registry as a BlobOrigin (include/drayage/registry/upstream_origin.hpp): an
// adapter of UpstreamRegistry::get_blob (BlobHandlers/BlobFetch) to OriginSink/OriginTransfer.
#include "drayage/registry/upstream_origin.hpp"

#include <functional>
#include <memory>
#include <string_view>
#include <utility>

namespace drayage::registry {
namespace {

class UpstreamOrigin final : public BlobOrigin {
public:
    explicit UpstreamOrigin(UpstreamRegistry& upstream) : upstream_(upstream) {}
    std::string_view name() const override { return "upstream"; }

    void head(std::string_view repo, std::string_view digest,
              std::function<void(Result<OriginHead>)> done) override {
        upstream_.head_blob(repo, digest, [done](Result<UpstreamBlobHead> r) {
            if (!r) return done(r.error());
            OriginHead h;
            if (r->has_length) h.size = r->length;
            done(h);
        });
    }

    std::shared_ptr<OriginTransfer> get(std::string_view repo, std::string_view digest,
                                        OriginSink sink) override {
        struct Transfer final : OriginTransfer {
            std::shared_ptr<BlobFetch> fetch;
            void resume() override {
                if (fetch) fetch->resume();
            }
            void cancel() override {
                if (fetch) fetch->cancel();
                fetch.reset();
            }
        };
        auto t = std::make_shared<Transfer>();
        // UpstreamRegistry reports a transfer its on_head refused with on_done("ABORTED"); a
        // sink that abandoned the transfer is promised no on_done at all.
        auto abandoned = std::make_shared<bool>(false);
        BlobHandlers h;
        h.on_head = [on_head = sink.on_head, abandoned](const UpstreamBlobHead& head) {
            OriginHead oh;
            if (head.has_length) oh.size = head.length;
            *abandoned = !on_head(oh);
            return !*abandoned;
        };
        h.on_data = sink.on_data;
        h.on_done = [on_done = sink.on_done, abandoned](Status st) {
            if (!*abandoned) on_done(std::move(st));
        };
        t->fetch = upstream_.get_blob(repo, digest, std::nullopt, std::move(h));
        return t;
    }

private:
    UpstreamRegistry& upstream_;
};

}  // namespace

std::shared_ptr<BlobOrigin> make_upstream_origin(UpstreamRegistry& upstream) {
    return std::make_shared<UpstreamOrigin>(upstream);
}

}  // namespace drayage::registry
