#include "relay/poll_position.h"

#include <algorithm>
#include <charconv>

namespace outboxd {

namespace {

std::string FormatRanges(std::vector<long long> positions) {
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  std::string out;
  for (std::size_t i = 0; i < positions.size();) {
    std::size_t j = i;
    while (j + 1 < positions.size() && positions[j + 1] == positions[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(positions[i]);
    if (j > i) out += '-' + std::to_string(positions[j]);
    i = j + 1;
  }
  return out;
}

bool ParseNumber(std::string_view text, long long* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end && !text.empty();
}

}  // namespace

std::string FormatPollPosition(const PollPositionRows& rows) {
  std::string out;
  for (const auto& [table, positions] : rows) {
    if (positions.empty()) continue;
    out += table + ' ' + FormatRanges(positions) + '\n';
  }
  return out;
}

Result<PollPositionRows> ParsePollPosition(std::string_view text) {
  PollPositionRows rows;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const std::size_t eol = text.find('\n');
    const std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    auto bad = [&](const std::string& why) {
      return Status::Permanent("line " + std::to_string(line_no) + " of the poll position \"" + std::string(line) +
                               "\": " + why);
    };
    // The ranges hold no space; a quoted table name may.
    const std::size_t space = line.rfind(' ');
    if (space == std::string_view::npos || space == 0) return bad("expected \"<table> <ranges>\"");
    std::vector<long long>& positions = rows[std::string(line.substr(0, space))];
    std::string_view ranges = line.substr(space + 1);
    while (!ranges.empty()) {
      const std::size_t comma = ranges.find(',');
      const std::string_view range = ranges.substr(0, comma);
      ranges = comma == std::string_view::npos ? std::string_view() : ranges.substr(comma + 1);
      // A range is "a" or "a-b"; a position may be negative ("-5-3").
      const std::size_t dash = range.find('-', 1);
      long long first = 0, last = 0;
      if (!ParseNumber(range.substr(0, dash), &first) ||
          (dash != std::string_view::npos && !ParseNumber(range.substr(dash + 1), &last))) {
        return bad("\"" + std::string(range) + "\" is not a position or a range");
      }
      if (dash == std::string_view::npos) last = first;
      if (last < first) return bad("range \"" + std::string(range) + "\" ends before it starts");
      for (long long p = first; p <= last; ++p) positions.push_back(p);
    }
  }
  return rows;
}

}  // namespace outboxd
