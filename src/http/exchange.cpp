// Exchange: the handler's thin handle; the connection does the work while it is attached.

#include <utility>

#include "connection.hpp"

namespace drayage::http {

Exchange::Exchange(detail::Connection* connection, Request request)
    : conn_(connection), request_(std::move(request)), started_(std::chrono::steady_clock::now()) {}

Exchange::~Exchange() = default;

void Exchange::set_body_limit(std::uint64_t limit) {
    body_limit_ = limit;
    if (conn_ != nullptr) conn_->exchange_set_body_limit(*this, limit);
}

void Exchange::read_body(BodyHandlers handlers) {
    if (conn_ == nullptr || body_requested_ || finished_) return;
    body_requested_ = true;
    body_ = std::move(handlers);
    conn_->exchange_read_body(*this);
}

void Exchange::pause_body() {
    body_paused_ = true;
    if (conn_ != nullptr) conn_->exchange_pause_body(*this);
}

void Exchange::resume_body() {
    body_paused_ = false;
    if (conn_ != nullptr) conn_->exchange_resume_body(*this);
}

bool Exchange::delimits_unknown_length() const {
    return request_.version_minor >= 1 || request_.method == "HEAD";
}

void Exchange::send_head(int status, HeaderList headers,
                         std::optional<std::uint64_t> content_length) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    conn_->exchange_send_head(*this, status, std::move(headers), content_length);
}

void Exchange::send_head_lines(int status, std::string_view header_lines,
                               std::optional<std::uint64_t> content_length) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    conn_->exchange_send_head_lines(*this, status, header_lines, content_length);
}

bool Exchange::write(std::string_view data) {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_write(*this, data);
}

bool Exchange::hand_off() {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_hand_off(*this);
}

bool Exchange::write(evbuffer* data) {
    if (conn_ == nullptr || finished_) return false;
    return conn_->exchange_write(*this, data);
}

void Exchange::on_writable(std::function<void()> callback) {
    if (!finished_ && !closed_) on_writable_ = std::move(callback);
}

void Exchange::finish() {
    if (conn_ == nullptr || finished_) return;
    conn_->exchange_finish(*this);
}

void Exchange::respond(int status, HeaderList headers, std::string body) {
    if (conn_ == nullptr || head_sent_ || finished_) return;
    std::uint64_t size = body.size();
    send_head(status, std::move(headers), size);
    write(std::string_view(body));
    finish();
}

void Exchange::abort() {
    if (conn_ != nullptr) conn_->exchange_abort(*this);
}

void Exchange::on_closed(std::function<void()> callback) {
    if (!finished_ && !closed_) on_closed_ = std::move(callback);
}

}  // namespace drayage::http
