#pragma once
// Logging set-up: one named spdlog logger per subsystem ("relay", "kafka",
// "daemon", "pg"), writing to stderr as text or as JSON lines (one object per
// line with ts, level, logger, msg). systemd's journal and container runtimes
// both collect stderr. Call InitLogging() once before starting workers;
// Logger() is thread-safe afterwards.

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outboxd {

enum class LogOutputFormat { kText, kJson };

// Level is one of trace, debug, info, warn, error.
[[nodiscard]] Status InitLogging(std::string_view level, LogOutputFormat format);

// The logger for a subsystem, created on first use with the current settings.
std::shared_ptr<spdlog::logger> Logger(const std::string& name);

// Escapes a string for inclusion in a JSON string literal.
std::string JsonEscape(std::string_view s);

}  // namespace outboxd
