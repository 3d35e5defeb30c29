#pragma once
// Status and Result<T>: how every fallible call in outboxd reports failure.
//
// A Status is either OK or carries a code and a human-readable message that
// names the object involved ("could not claim rows from \"public.outbox\": …").
// Callers add context while passing an error up with Prefixed(). Both types are
// [[nodiscard]] and the build has -Werror=unused-result. Value types; not
// synchronised.

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace outboxd {

enum class StatusCode {
  kOk = 0,
  kInvalidConfig,  // the configuration (file or database schema) is wrong
  kRetriable,      // try again later: connection lost, broker down, timeout
  kPermanent,      // this event can never be delivered as it is
  kFatal,          // the process cannot go on (e.g. fatal producer error)
  kInternal,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidConfig(std::string msg) { return {StatusCode::kInvalidConfig, std::move(msg)}; }
  static Status Retriable(std::string msg) { return {StatusCode::kRetriable, std::move(msg)}; }
  static Status Permanent(std::string msg) { return {StatusCode::kPermanent, std::move(msg)}; }
  static Status Fatal(std::string msg) { return {StatusCode::kFatal, std::move(msg)}; }
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns this status with "prefix: " in front of the message.
  Status Prefixed(std::string_view prefix) const {
    if (ok()) return *this;
    std::string m(prefix);
    m += ": ";
    m += message_;
    return {code_, std::move(m)};
  }

  // Marks a status as deliberately ignored.
  void IgnoreError() const {}

 private:
  Status(StatusCode code, std::string msg) : code_(code), message_(std::move(msg)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace outboxd

#define OUTBOXD_RETURN_IF_ERROR(expr) \
  do {                                \
    ::outboxd::Status _st = (expr);   \
    if (!_st.ok()) return _st;        \
  } while (0)
