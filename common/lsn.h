#pragma once
// Lsn: a position in PostgreSQL's write-ahead log (XLogRecPtr).
//
// A strong type around the 64-bit WAL byte position so that an LSN never
// crosses a module boundary as a bare integer. It prints and parses in the
// form PostgreSQL uses everywhere (pg_lsn, pg_replication_slots,
// START_REPLICATION): two upper-case hexadecimal halves without zero padding,
// "16/B374D848". Lsn{} (0/0) is PostgreSQL's InvalidXLogRecPtr. Value type;
// not synchronised.

#include <charconv>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outboxd {

class Lsn {
 public:
  constexpr Lsn() = default;
  constexpr explicit Lsn(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }
  constexpr bool valid() const { return value_ != 0; }

  auto operator<=>(const Lsn&) const = default;

  // "X/X" as PostgreSQL prints it (LSN_FORMAT_ARGS): upper-case hex halves.
  std::string ToString() const {
    char buf[2 * 8 + 2];
    char* end = buf + sizeof(buf);
    auto hi = std::to_chars(buf, end, static_cast<uint32_t>(value_ >> 32), 16);
    *hi.ptr = '/';
    auto lo = std::to_chars(hi.ptr + 1, end, static_cast<uint32_t>(value_), 16);
    std::string s(buf, lo.ptr);
    for (char& c : s) {
      if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 'a' + 'A');
    }
    return s;
  }

  // Parses what pg_lsn accepts: 1 to 8 hex digits (either case), '/', 1 to 8
  // hex digits, nothing else.
  static Result<Lsn> Parse(std::string_view text) {
    auto invalid = [&] {
      return Status::InvalidConfig("invalid LSN \"" + std::string(text) +
                                   "\": expected two hexadecimal halves like \"16/B374D848\"");
    };
    const auto slash = text.find('/');
    if (slash == std::string_view::npos) return invalid();
    uint32_t hi = 0;
    uint32_t lo = 0;
    if (!ParseHalf(text.substr(0, slash), &hi) || !ParseHalf(text.substr(slash + 1), &lo)) {
      return invalid();
    }
    return Lsn((static_cast<uint64_t>(hi) << 32) | lo);
  }

 private:
  static bool ParseHalf(std::string_view s, uint32_t* out) {
    if (s.empty() || s.size() > 8) return false;
    for (char c : s) {
      const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      if (!hex) return false;
    }
    auto r = std::from_chars(s.data(), s.data() + s.size(), *out, 16);
    return r.ec == std::errc() && r.ptr == s.data() + s.size();
  }

  uint64_t value_ = 0;
};

}  // namespace outboxd
