// The XML bodies S3 answers with, parsed with pugixml into plain structs. Pure: bytes in, values
// out, so every parser is unit-tested on captured bodies.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "drayage/util/result.hpp"

namespace drayage::s3 {

// An S3 error body (<Error><Code/><Message/><RequestId/></Error>) as an Error: code = the S3
// code ("NoSuchKey"), status = `http_status`, message = "<Message> (request id <RequestId>)".
// A body that is empty or not an S3 error (HEAD responses, proxies' HTML) gives a code derived
// from the status ("NotFound", "Forbidden", "HTTP503", ...).
Error parse_error(std::string_view body, int http_status);

// True when `body` is an <Error> document. CompleteMultipartUpload and CopyObject can answer 200
// and still fail; the error then is in the body.
bool is_error_document(std::string_view body);

// InitiateMultipartUploadResult/UploadId.
Result<std::string> parse_upload_id(std::string_view body);
// The ETag of CopyObjectResult, CopyPartResult or CompleteMultipartUploadResult (quotes kept,
// as S3 sends it).
Result<std::string> parse_etag(std::string_view body);

struct PartInfo {
    int part_number = 0;
    std::string etag;
    std::uint64_t size = 0;
};
struct PartsPage {
    std::vector<PartInfo> parts;
    bool truncated = false;
    std::string next_part_number_marker;
};
Result<PartsPage> parse_list_parts(std::string_view body);

struct UploadInfo {
    std::string key;
    std::string upload_id;
    std::string initiated;
};
struct UploadsPage {
    std::vector<UploadInfo> uploads;
    bool truncated = false;
    std::string next_key_marker;
    std::string next_upload_id_marker;
};
Result<UploadsPage> parse_list_multipart_uploads(std::string_view body);

struct ObjectEntry {
    std::string key;
    std::uint64_t size = 0;
    std::string etag;
    std::string last_modified;
};
struct ObjectsPage {
    std::vector<ObjectEntry> objects;
    bool truncated = false;
    std::string next_continuation_token;
};
Result<ObjectsPage> parse_list_objects_v2(std::string_view body);

struct CompletedPart {
    int part_number = 0;
    std::string etag;  // as returned by UploadPart / UploadPartCopy
};
// The CompleteMultipartUpload request body, parts in the order given (callers sort them).
std::string complete_multipart_body(const std::vector<CompletedPart>& parts);

}  // namespace drayage::s3
