// Result<T>: a value or an Error, for code paths that must not throw (the request path).
//
// Debian 12 ships no tl-expected and g++ 12 has std::expected only in C++23 mode, so this is the
// small subset the project needs: construct from a value or from an Error, test with `ok()` or
// `if (r)`, read with `value()` / `*r` / `->`, and `error()`. Reading the wrong side is a
// programming error and aborts (assert in debug, std::terminate in release via std::get).
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace drayage {

// What went wrong, for an operator or a client. `code` is a short stable identifier
// ("SlowDown", "BLOB_UNKNOWN", "config.invalid"), `message` the human sentence.
struct Error {
    std::string code;
    std::string message;
    int status = 0;  // HTTP status when the error came from, or goes to, an HTTP peer; else 0.

    std::string to_string() const { return code.empty() ? message : code + ": " + message; }
};

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
    Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

// For operations that produce nothing but can fail.
template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

    bool ok() const { return !failed_; }
    explicit operator bool() const { return ok(); }
    const Error& error() const { return error_; }

private:
    Error error_;
    bool failed_ = false;
};

using Status = Result<void>;

inline Error make_error(std::string code, std::string message, int status = 0) {
    return Error{std::move(code), std::move(message), status};
}

}  // namespace drayage
