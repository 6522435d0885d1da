// A BlobOrigin whose transfers the test plays by hand (the fetch layer's unit tests): get()
// records each request with its sink, and the test calls the sink's on_head/on_data/on_done
// exactly when it wants that step to happen. No sockets.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drayage/registry/origin.hpp"

namespace fetchtest {

using namespace drayage;
using namespace drayage::registry;

struct ScriptedTransfer : OriginTransfer {
    bool cancelled = false;
    int resumes = 0;
    void resume() override { ++resumes; }
    void cancel() override { cancelled = true; }
};

class ScriptedOrigin : public BlobOrigin {
public:
    explicit ScriptedOrigin(std::string name) : name_(std::move(name)) {}
    std::string_view name() const override { return name_; }
    void head(std::string_view, std::string_view,
              std::function<void(Result<OriginHead>)> done) override {
        done(make_error("NOT_FOUND", "not scripted"));
    }
    std::shared_ptr<OriginTransfer> get(std::string_view repo, std::string_view digest,
                                        OriginSink sink) override {
        gets.push_back({std::string(repo), std::string(digest), std::move(sink),
                        std::make_shared<ScriptedTransfer>()});
        return gets.back().transfer;
    }

    struct Get {
        std::string repo;
        std::string digest;
        OriginSink sink;
        std::shared_ptr<ScriptedTransfer> transfer;
    };
    // A real origin lets go of a sink when its transfer ends; these are kept (with whatever the
    // sink holds) until the test clears them.
    std::vector<Get> gets;

private:
    std::string name_;
};

}  // namespace fetchtest
