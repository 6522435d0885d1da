// Paginated listings (parts of an upload, multipart uploads, objects): one Pager per listing
// follows the markers page after page.
#include "client_impl.hpp"

namespace drayage::s3 {

namespace {

// Drives a paginated listing: requests `base` plus the previous page's markers, parses each page,
// collects its items, and stops when a page names no next markers.
template <typename Item, typename Page>
struct Pager : std::enable_shared_from_this<Pager<Item, Page>> {
    using Markers = std::vector<std::pair<std::string, std::string>>;

    Client::Impl* impl = nullptr;
    Request base;
    Result<Page> (*parse)(std::string_view) = nullptr;
    Markers (*next_markers)(const Page&) = nullptr;
    std::vector<Item>& (*page_items)(Page&) = nullptr;
    std::function<void(Result<std::vector<Item>>)> done;
    std::vector<Item> items;

    void step(Markers markers) {
        Request r = base;
        for (auto& [k, v] : markers)
            r.query.push_back(QueryParam{k, v, false});
        auto self = this->shared_from_this();
        impl->execute(std::move(r), [self](Result<Response> res) {
            if (!res) {
                self->done(res.error());
                return;
            }
            Result<Page> page = self->parse(res->body);
            if (!page) {
                self->done(page.error());
                return;
            }
            auto& got = self->page_items(*page);
            std::move(got.begin(), got.end(), std::back_inserter(self->items));
            Markers following = self->next_markers(*page);
            if (following.empty()) {
                self->done(std::move(self->items));
                return;
            }
            self->step(std::move(following));
        });
    }
};

}  // namespace

void Client::list_parts(std::string key, std::string upload_id,
                        std::function<void(Result<std::vector<PartInfo>>)> done,
                        std::size_t page_size) {
    auto pager = std::make_shared<Pager<PartInfo, PartsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListParts";
    r.method = "GET";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    if (page_size > 0) r.query.push_back(QueryParam{"max-parts", std::to_string(page_size), false});
    pager->parse = &parse_list_parts;
    pager->next_markers = [](const PartsPage& p) {
        Pager<PartInfo, PartsPage>::Markers m;
        if (p.truncated && !p.next_part_number_marker.empty()) {
            m.emplace_back("part-number-marker", p.next_part_number_marker);
        }
        return m;
    };
    pager->page_items = [](PartsPage& p) -> std::vector<PartInfo>& { return p.parts; };
    pager->done = std::move(done);
    pager->step({});
}

void Client::list_multipart_uploads(std::string prefix,
                                    std::function<void(Result<std::vector<UploadInfo>>)> done,
                                    std::size_t page_size) {
    auto pager = std::make_shared<Pager<UploadInfo, UploadsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListMultipartUploads";
    r.method = "GET";
    r.query.push_back(QueryParam{"uploads", "", true});
    if (!prefix.empty()) r.query.push_back(QueryParam{"prefix", std::move(prefix), false});
    if (page_size > 0) {
        r.query.push_back(QueryParam{"max-uploads", std::to_string(page_size), false});
    }
    pager->parse = &parse_list_multipart_uploads;
    pager->next_markers = [](const UploadsPage& p) {
        Pager<UploadInfo, UploadsPage>::Markers m;
        if (p.truncated && (!p.next_key_marker.empty() || !p.next_upload_id_marker.empty())) {
            m.emplace_back("key-marker", p.next_key_marker);
            m.emplace_back("upload-id-marker", p.next_upload_id_marker);
        }
        return m;
    };
    pager->page_items = [](UploadsPage& p) -> std::vector<UploadInfo>& { return p.uploads; };
    pager->done = std::move(done);
    pager->step({});
}

void Client::list_objects(std::string prefix,
                          std::function<void(Result<std::vector<ObjectEntry>>)> done,
                          std::size_t page_size) {
    auto pager = std::make_shared<Pager<ObjectEntry, ObjectsPage>>();
    pager->impl = impl_.get();
    Request& r = pager->base;
    r.op = "ListObjectsV2";
    r.method = "GET";
    r.query.push_back(QueryParam{"list-type", "2", false});
    if (!prefix.empty()) r.query.push_back(QueryParam{"prefix", std::move(prefix), false});
    if (page_size > 0) r.query.push_back(QueryParam{"max-keys", std::to_string(page_size), false});
    pager->parse = &parse_list_objects_v2;
    pager->next_markers = [](const ObjectsPage& p) {
        Pager<ObjectEntry, ObjectsPage>::Markers m;
        if (p.truncated && !p.next_continuation_token.empty()) {
            m.emplace_back("continuation-token", p.next_continuation_token);
        }
        return m;
    };
    pager->page_items = [](ObjectsPage& p) -> std::vector<ObjectEntry>& { return p.objects; };
    pager->done = std::move(done);
    pager->step({});
}

}  // namespace drayage::s3
