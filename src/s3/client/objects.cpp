// Object and multipart operations: HEAD, PUT, DELETE, copy, and the parts of a multipart
// upload, each one buffered call.
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <chrono>

#include "client_impl.hpp"
#include "drayage/net/defer.hpp"
#include "drayage/util/digest.hpp"

namespace drayage::s3 {

namespace {

using net::defer;

std::string md5_base64(std::string_view data) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_md5(), nullptr);
    std::array<unsigned char, 4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1> out{};
    int n = EVP_EncodeBlock(out.data(), digest.data(), static_cast<int>(len));
    return std::string(reinterpret_cast<const char*>(out.data()), static_cast<std::size_t>(n));
}

}  // namespace

void Client::head(std::string key, std::function<void(Result<ObjectInfo>)> done) {
    Request r;
    r.op = "HeadObject";
    r.method = "HEAD";
    r.key = std::move(key);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        ObjectInfo info;
        info.status = res->status;
        info.size = to_u64(net::find_header(res->headers, "Content-Length"));
        info.total_size = info.size;
        info.etag = std::string(net::find_header(res->headers, "ETag"));
        info.content_type = std::string(net::find_header(res->headers, "Content-Type"));
        info.last_modified = std::string(net::find_header(res->headers, "Last-Modified"));
        done(std::move(info));
    });
}

void Client::put(std::string key, std::shared_ptr<const std::string> body, PutOptions options,
                 std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "PutObject";
    r.method = "PUT";
    r.key = std::move(key);
    if (!body) {
        body = std::make_shared<const std::string>();
    }
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-MD5", md5_base64(*body));
    impl_->add_object_headers(r.headers, &options);
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(std::string(net::find_header(res->headers, "ETag")));
    });
}

void Client::remove(std::string key, std::function<void(Status)> done) {
    Request r;
    r.op = "DeleteObject";
    r.method = "DELETE";
    r.key = std::move(key);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        done(res ? Status{} : Status{res.error()});
    });
}

void Client::copy(std::string source_key, std::string dest_key,
                  std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "CopyObject";
    r.method = "PUT";
    r.key = std::move(dest_key);
    r.error_in_200 = true;
    r.headers.emplace_back("x-amz-copy-source", impl_->copy_source(source_key));
    impl_->add_object_headers(r.headers, nullptr);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::create_multipart(std::string key, PutOptions options,
                              std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "CreateMultipartUpload";
    r.method = "POST";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploads", "", true});
    r.idempotent = false;
    impl_->add_object_headers(r.headers, &options);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_upload_id(res->body));
    });
}

void Client::upload_part(std::string key, std::string upload_id, int part_number,
                         std::shared_ptr<const std::string> body,
                         std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPart";
    r.method = "PUT";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    if (!body) {
        body = std::make_shared<const std::string>();
    }
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-MD5", md5_base64(*body));
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(std::string(net::find_header(res->headers, "ETag")));
    });
}

std::shared_ptr<net::HttpCall> Client::upload_part_stream(
    std::string key, std::string upload_id, int part_number, std::uint64_t size,
    std::function<std::size_t(char*, std::size_t)> source,
    std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPart";
    r.method = "PUT";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    r.payload_hash = std::string(kUnsignedPayload);
    r.body_source = std::move(source);
    r.body_size = static_cast<std::int64_t>(size);
    auto options = impl_->prepare(r);
    if (!options) {
        defer(impl_->loop->base(), std::chrono::milliseconds(0),
              [done = std::move(done), e = options.error()] { done(e); });
        return nullptr;
    }
    auto body = std::make_shared<std::string>();
    auto status = std::make_shared<int>(0);
    Impl* impl = impl_.get();
    net::CallHandlers h;
    h.on_head = [status](const net::CallResponse& resp) {
        *status = resp.status;
        return true;
    };
    h.on_body = [body](std::string_view piece) {
        if (body->size() < kMaxErrorBody) {
            body->append(piece);
        }
        return true;
    };
    h.on_done = [impl, r, body, done = std::move(done)](Status s, const net::CallResponse& resp) {
        if (!s.ok()) {
            impl->log_failure(r, s.error());
            done(s.error());
            return;
        }
        if (resp.status >= 300) {
            Error e = parse_error(*body, resp.status);
            impl->log_failure(r, e);
            done(std::move(e));
            return;
        }
        done(std::string(net::find_header(resp.headers, "ETag")));
    };
    return net::HttpCall::start(*impl_->loop, std::move(*options), std::move(h));
}

void Client::upload_part_copy(std::string key, std::string upload_id, int part_number,
                              std::string source_key, ByteRange range,
                              std::function<void(Result<std::string>)> done) {
    Request r;
    r.op = "UploadPartCopy";
    r.method = "PUT";
    r.key = std::move(key);
    r.error_in_200 = true;
    r.query.push_back(QueryParam{"partNumber", std::to_string(part_number), false});
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    r.headers.emplace_back("x-amz-copy-source", impl_->copy_source(source_key));
    r.headers.emplace_back("x-amz-copy-source-range", range_header(range));
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::complete_multipart(std::string key, std::string upload_id,
                                std::vector<CompletedPart> parts,
                                std::function<void(Result<std::string>)> done) {
    std::sort(parts.begin(), parts.end(), [](const CompletedPart& a, const CompletedPart& b) {
        return a.part_number < b.part_number;
    });
    Request r;
    r.op = "CompleteMultipartUpload";
    r.method = "POST";
    r.key = std::move(key);
    r.error_in_200 = true;
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    auto body = std::make_shared<const std::string>(complete_multipart_body(parts));
    r.payload_hash = digest::sha256_hex(*body);
    r.headers.emplace_back("Content-Type", "application/xml");
    r.body = std::move(body);
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res) {
            done(res.error());
            return;
        }
        done(parse_etag(res->body));
    });
}

void Client::abort_multipart(std::string key, std::string upload_id,
                             std::function<void(Status)> done) {
    Request r;
    r.op = "AbortMultipartUpload";
    r.method = "DELETE";
    r.key = std::move(key);
    r.query.push_back(QueryParam{"uploadId", std::move(upload_id), false});
    impl_->execute(std::move(r), [done = std::move(done)](Result<Response> res) {
        if (!res && res.error().code != "NoSuchUpload") {
            done(res.error());
            return;
        }
        done(Status{});
    });
}

}  // namespace drayage::s3
