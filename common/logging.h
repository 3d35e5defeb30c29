#pragma once
// Logging set-up: one named spdlog logger per subsystem ("relay", "kafka",
// "daemon", "pg"), writing to stderr as text or as JSON lines (one object per
// line with ts, level, logger, msg). systemd's journal and container runtimes
// both collect stderr. Call InitLogging() once before starting workers;
// Logger() is thread-safe afterwards.

#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outboxd {

enum class LogOutputFormat { kText, kJson };

// Level is one of trace, debug, info, warn, error.
[[nodiscard]] Status InitLogging(std::string_view level, LogOutputFormat format);

// The logger for a subsystem, created on first use with the current settings.
std::shared_ptr<spdlog::logger> Logger(const std::string& name);

// Lets a warning that can repeat every loop turn through at most once per
// interval. Not thread-safe: one per place that warns.
class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogThrottle(Clock::duration interval) : interval_(interval) {}
  // True the first time and then once `interval` has passed since the last true.
  bool Allow(Clock::time_point now) {
    if (last_ && now - *last_ < interval_) return false;
    last_ = now;
    return true;
  }

 private:
  Clock::duration interval_;
  std::optional<Clock::time_point> last_;
};

// Escapes a string for inclusion in a JSON string literal.
std::string JsonEscape(std::string_view s);

}  // namespace outboxd
