#include "drayage/s3/xml.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <pugixml.hpp>

namespace drayage::s3 {

namespace {

// S3 documents carry a default namespace; pugixml matches element names literally, which is
// what we want (names are unique in these documents).
bool load(pugi::xml_document& doc, std::string_view body) {
    return doc.load_buffer(body.data(), body.size(), pugi::parse_default, pugi::encoding_utf8);
}

std::string text(const pugi::xml_node& node, const char* child) {
    return node.child(child).text().as_string();
}

bool truthy(const pugi::xml_node& node, const char* child) {
    return std::string_view(node.child(child).text().as_string()) == "true";
}

Error malformed(std::string_view what, std::string_view body) {
    std::string_view head = body.substr(0, 200);
    return make_error("MalformedResponse",
                      fmt::format("cannot parse {} from S3 response: {}", what, head));
}

std::string code_for_status(int status) {
    switch (status) {
        case 400: return "BadRequest";
        case 403: return "Forbidden";
        case 404: return "NotFound";
        case 412: return "PreconditionFailed";
        case 416: return "InvalidRange";
        case 500: return "InternalError";
        case 503: return "ServiceUnavailable";
        default: return fmt::format("HTTP{}", status);
    }
}

}  // namespace

bool is_error_document(std::string_view body) {
    pugi::xml_document doc;
    return load(doc, body) && doc.child("Error");
}

Error parse_error(std::string_view body, int http_status) {
    pugi::xml_document doc;
    if (!body.empty() && load(doc, body)) {
        if (pugi::xml_node err = doc.child("Error"); err) {
            std::string code = text(err, "Code");
            std::string message = text(err, "Message");
            std::string request_id = text(err, "RequestId");
            if (code.empty()) {
                code = code_for_status(http_status);
            }
            if (message.empty()) {
                message = code;
            }
            if (!request_id.empty()) {
                message += fmt::format(" (request id {})", request_id);
            }
            return make_error(std::move(code), std::move(message), http_status);
        }
    }
    return make_error(code_for_status(http_status),
                      fmt::format("S3 answered HTTP {} without an error document", http_status),
                      http_status);
}

Result<std::string> parse_upload_id(std::string_view body) {
    pugi::xml_document doc;
    if (!load(doc, body)) {
        return malformed("UploadId", body);
    }
    std::string id = text(doc.child("InitiateMultipartUploadResult"), "UploadId");
    if (id.empty()) {
        return malformed("UploadId", body);
    }
    return id;
}

Result<std::string> parse_etag(std::string_view body) {
    pugi::xml_document doc;
    if (!load(doc, body)) {
        return malformed("ETag", body);
    }
    pugi::xml_node root = doc.document_element();
    std::string etag = text(root, "ETag");
    if (etag.empty()) {
        return malformed("ETag", body);
    }
    return etag;
}

Result<PartsPage> parse_list_parts(std::string_view body) {
    pugi::xml_document doc;
    pugi::xml_node root;
    if (!load(doc, body) || !(root = doc.child("ListPartsResult"))) {
        return malformed("ListPartsResult", body);
    }
    PartsPage page;
    for (pugi::xml_node p : root.children("Part")) {
        page.parts.push_back(PartInfo{p.child("PartNumber").text().as_int(), text(p, "ETag"),
                                      p.child("Size").text().as_ullong()});
    }
    page.truncated = truthy(root, "IsTruncated");
    page.next_part_number_marker = text(root, "NextPartNumberMarker");
    return page;
}

Result<UploadsPage> parse_list_multipart_uploads(std::string_view body) {
    pugi::xml_document doc;
    pugi::xml_node root;
    if (!load(doc, body) || !(root = doc.child("ListMultipartUploadsResult"))) {
        return malformed("ListMultipartUploadsResult", body);
    }
    UploadsPage page;
    for (pugi::xml_node u : root.children("Upload")) {
        page.uploads.push_back(
            UploadInfo{text(u, "Key"), text(u, "UploadId"), text(u, "Initiated")});
    }
    page.truncated = truthy(root, "IsTruncated");
    page.next_key_marker = text(root, "NextKeyMarker");
    page.next_upload_id_marker = text(root, "NextUploadIdMarker");
    return page;
}

Result<ObjectsPage> parse_list_objects_v2(std::string_view body) {
    pugi::xml_document doc;
    pugi::xml_node root;
    if (!load(doc, body) || !(root = doc.child("ListBucketResult"))) {
        return malformed("ListBucketResult", body);
    }
    ObjectsPage page;
    for (pugi::xml_node c : root.children("Contents")) {
        page.objects.push_back(ObjectEntry{text(c, "Key"), c.child("Size").text().as_ullong(),
                                           text(c, "ETag"), text(c, "LastModified")});
    }
    page.truncated = truthy(root, "IsTruncated");
    page.next_continuation_token = text(root, "NextContinuationToken");
    return page;
}

std::string complete_multipart_body(const std::vector<CompletedPart>& parts) {
    pugi::xml_document doc;
    pugi::xml_node root = doc.append_child("CompleteMultipartUpload");
    root.append_attribute("xmlns") = "http://s3.amazonaws.com/doc/2006-03-01/";
    for (const auto& part : parts) {
        pugi::xml_node p = root.append_child("Part");
        p.append_child("PartNumber").text().set(part.part_number);
        p.append_child("ETag").text().set(part.etag.c_str());
    }
    struct Writer : pugi::xml_writer {
        std::string out;
        void write(const void* data, std::size_t size) override {
            out.append(static_cast<const char*>(data), size);
        }
    } writer;
    doc.save(writer, "", pugi::format_raw | pugi::format_no_declaration);
    return std::move(writer.out);
}

}  // namespace drayage::s3
