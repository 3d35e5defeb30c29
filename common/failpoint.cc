#include "common/failpoint.h"

#include <charconv>
#include <cstdlib>
#include <map>
#include <string>

#include "common/logging.h"

namespace outboxd {

namespace {

std::map<std::string, int64_t, std::less<>> ParseFailpoints(std::string_view spec) {
  std::map<std::string, int64_t, std::less<>> armed;
  while (!spec.empty()) {
    const std::size_t comma = spec.find(',');
    const std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    const std::size_t eq = item.find('=');
    int64_t value = 0;
    if (eq == std::string_view::npos ||
        std::from_chars(item.data() + eq + 1, item.data() + item.size(), value).ec != std::errc()) {
      Logger("main")->warn("OUTBOXD_FAILPOINTS: ignoring \"{}\" (expected NAME=NUMBER)", item);
      continue;
    }
    armed.emplace(std::string(item.substr(0, eq)), value);
    Logger("main")->warn("failpoint {} armed (test only)", item);
  }
  return armed;
}

}  // namespace

std::optional<int64_t> FailpointValue(std::string_view name) {
  static const auto armed = [] {
    const char* spec = std::getenv("OUTBOXD_FAILPOINTS");
    return spec == nullptr ? std::map<std::string, int64_t, std::less<>>() : ParseFailpoints(spec);
  }();
  if (armed.empty()) return std::nullopt;
  auto it = armed.find(name);
  if (it == armed.end()) return std::nullopt;
  return it->second;
}

}  // namespace outboxd
