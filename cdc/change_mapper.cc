#include "cdc/change_mapper.h"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

#include "config/cloudevents_names.h"
#include "pipeline/cloudevents.h"
#include "pipeline/router.h"

namespace outboxd {
namespace {

// Built-in type oids (src/include/catalog/pg_type.dat).
enum : uint32_t {
  kBool = 16,
  kBytea = 17,
  kChar = 18,
  kName = 19,
  kInt8 = 20,
  kInt2 = 21,
  kInt4 = 23,
  kText = 25,
  kOid = 26,
  kJson = 114,
  kFloat4 = 700,
  kFloat8 = 701,
  kBpchar = 1042,
  kVarchar = 1043,
  kDate = 1082,
  kTime = 1083,
  kTimestamp = 1114,
  kTimestamptz = 1184,
  kInterval = 1186,
  kTimetz = 1266,
  kNumeric = 1700,
  kUuid = 2950,
  kJsonb = 3802,
};

// Array type oid → element type oid, for the common built-in arrays.
uint32_t BuiltinArrayElement(uint32_t oid) {
  static constexpr std::array<std::pair<uint32_t, uint32_t>, 23> kArrays{{
      {1000, kBool},    {1001, kBytea},     {1002, kChar},    {1003, kName}, {1005, kInt2},        {1007, kInt4},
      {1009, kText},    {1014, kBpchar},    {1015, kVarchar}, {1016, kInt8}, {1021, kFloat4},      {1022, kFloat8},
      {1028, kOid},     {1115, kTimestamp}, {1182, kDate},    {1183, kTime}, {1185, kTimestamptz}, {1187, kInterval},
      {1231, kNumeric}, {1270, kTimetz},    {2951, kUuid},    {199, kJson},  {3807, kJsonb},
  }};
  for (const auto& [array, element] : kArrays) {
    if (array == oid) return element;
  }
  return 0;
}

// Dumps without throwing: invalid UTF-8 in a value becomes U+FFFD.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// The envelope is written as text, one value at a time, because building a
// Json tree per change was most of outboxd's cost per event. Values the JSON
// library would write unchanged take a shortcut; everything else (escapes,
// non-ASCII, conversions) goes through the library, so the output is
// byte-identical to Dump() of the equivalent tree.

// Printable ASCII without '"' and '\\': a JSON string body as it is.
bool NeedsNoEscaping(std::string_view s) {
  for (const unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') return false;
  }
  return true;
}

void AppendJsonString(std::string& out, std::string_view s) {
  if (NeedsNoEscaping(s)) {
    out += '"';
    out += s;
    out += '"';
  } else {
    out += Dump(Json(std::string(s)));
  }
}

// "-12", "0", "345": what the JSON library prints for the same integer.
bool IsCanonicalInteger(std::string_view s) {
  if (!s.empty() && s.front() == '-') s.remove_prefix(1);
  if (s.empty() || s.size() > 18 || (s.size() > 1 && s.front() == '0')) return false;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::optional<Json> ParseInteger(std::string_view text) {
  if (!text.empty() && text.front() == '-') {
    int64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
    return Json(v);
  }
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
  return Json(v);
}

std::optional<Json> ParseFloat(std::string_view text) {
  double v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || !std::isfinite(v)) return std::nullopt;
  return Json(v);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// bytea_output = hex ("\x0aff") or escape ("a\\b\001").
std::optional<std::string> DecodeBytea(std::string_view text) {
  std::string out;
  if (text.size() >= 2 && text[0] == '\\' && text[1] == 'x') {
    if (text.size() % 2 != 0) return std::nullopt;
    for (std::size_t i = 2; i < text.size(); i += 2) {
      const int hi = HexDigit(text[i]);
      const int lo = HexDigit(text[i + 1]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi << 4 | lo));
    }
    return out;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out.push_back(text[i]);
    } else if (i + 1 < text.size() && text[i + 1] == '\\') {
      out.push_back('\\');
      ++i;
    } else if (i + 3 < text.size() && text[i + 1] >= '0' && text[i + 1] <= '3' && text[i + 2] >= '0' &&
               text[i + 2] <= '7' && text[i + 3] >= '0' && text[i + 3] <= '7') {
      out.push_back(static_cast<char>((text[i + 1] - '0') << 6 | (text[i + 2] - '0') << 3 | (text[i + 3] - '0')));
      i += 3;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

std::string Base64(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t n = static_cast<uint8_t>(bytes[i]) << 16 | static_cast<uint8_t>(bytes[i + 1]) << 8 |
                       static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += kAlphabet[n >> 6 & 63];
    out += kAlphabet[n & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t n = static_cast<uint8_t>(bytes[i]) << 16;
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t n = static_cast<uint8_t>(bytes[i]) << 16 | static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += kAlphabet[n >> 6 & 63];
    out += '=';
  }
  return out;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil), and back.
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}

// Reads exactly `n` decimal digits at `pos`.
bool Digits(std::string_view s, std::size_t& pos, std::size_t n, unsigned* out) {
  if (pos + n > s.size()) return false;
  unsigned v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  pos += n;
  *out = v;
  return true;
}

bool Char(std::string_view s, std::size_t& pos, char c) {
  if (pos >= s.size() || s[pos] != c) return false;
  ++pos;
  return true;
}

// "YYYY-MM-DD HH:MM:SS[.ffffff]" as DateStyle ISO prints it (4-digit AD
// years only).
struct DateTime {
  unsigned year, month, day, hour, minute, second;
  std::string_view fraction;  // digits after '.', possibly empty
};

bool ParseDateTime(std::string_view s, std::size_t& pos, DateTime* dt) {
  if (!(Digits(s, pos, 4, &dt->year) && Char(s, pos, '-') && Digits(s, pos, 2, &dt->month) && Char(s, pos, '-') &&
        Digits(s, pos, 2, &dt->day) && Char(s, pos, ' ') && Digits(s, pos, 2, &dt->hour) && Char(s, pos, ':') &&
        Digits(s, pos, 2, &dt->minute) && Char(s, pos, ':') && Digits(s, pos, 2, &dt->second))) {
    return false;
  }
  dt->fraction = {};
  if (Char(s, pos, '.')) {
    const std::size_t start = pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') ++pos;
    if (pos == start) return false;
    dt->fraction = s.substr(start, pos - start);
  }
  return dt->month >= 1 && dt->month <= 12 && dt->day >= 1 && dt->day <= 31 && dt->hour <= 24 && dt->minute <= 59 &&
         dt->second <= 60;
}

std::string FormatIso(int64_t year, unsigned month, unsigned day, unsigned hour, unsigned minute, unsigned second,
                      std::string_view fraction, bool utc) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%04lld-%02u-%02uT%02u:%02u:%02u", static_cast<long long>(year), month, day, hour,
                minute, second);
  std::string out(buf);
  if (!fraction.empty()) {
    out += '.';
    out += fraction;
  }
  if (utc) out += 'Z';
  return out;
}

std::optional<std::string> TimestampToIso(std::string_view text) {
  std::size_t pos = 0;
  DateTime dt{};
  if (!ParseDateTime(text, pos, &dt) || pos != text.size()) return std::nullopt;
  return FormatIso(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.fraction, false);
}

// "2026-11-23 13:00:00.123456+01", offsets "+HH", "+HH:MM" or "+HH:MM:SS".
std::optional<std::string> TimestamptzToUtcIso(std::string_view text) {
  std::size_t pos = 0;
  DateTime dt{};
  if (!ParseDateTime(text, pos, &dt) || pos >= text.size()) return std::nullopt;
  const char sign = text[pos++];
  if (sign != '+' && sign != '-') return std::nullopt;
  unsigned oh = 0, om = 0, os = 0;
  if (!Digits(text, pos, 2, &oh)) return std::nullopt;
  if (Char(text, pos, ':')) {
    if (!Digits(text, pos, 2, &om)) return std::nullopt;
    if (Char(text, pos, ':') && !Digits(text, pos, 2, &os)) return std::nullopt;
  }
  if (pos != text.size()) return std::nullopt;  // e.g. " BC"
  const int64_t offset = (sign == '-' ? -1 : 1) * static_cast<int64_t>(oh * 3600 + om * 60 + os);
  const int64_t secs = DaysFromCivil(dt.year, dt.month, dt.day) * 86400 +
                       static_cast<int64_t>(dt.hour * 3600 + dt.minute * 60 + dt.second) - offset;
  int64_t days = secs / 86400;
  int64_t rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    --days;
  }
  int64_t year = 0;
  unsigned month = 0, day = 0;
  CivilFromDays(days, &year, &month, &day);
  if (year < 1 || year > 9999) return std::nullopt;
  const auto r = static_cast<unsigned>(rem);
  return FormatIso(year, month, day, r / 3600, r / 60 % 60, r % 60, dt.fraction, true);
}

// PostgreSQL's array text output: {a,"b c",NULL,{nested}}; element values
// are mapped by `element_oid`.
class ArrayTextParser {
 public:
  ArrayTextParser(std::string_view text, uint32_t element_oid, const TypeLookup& types)
      : s_(text), element_oid_(element_oid), types_(types) {}

  std::optional<Json> Parse() {
    Json out;
    if (!Array(out)) return std::nullopt;
    SkipSpace();
    if (pos_ != s_.size()) return std::nullopt;
    return out;
  }

 private:
  static bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
  void SkipSpace() {
    while (pos_ < s_.size() && IsSpace(s_[pos_])) ++pos_;
  }
  bool Peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }

  bool Array(Json& out) {
    SkipSpace();
    if (!Peek('{')) return false;
    ++pos_;
    out = Json::array();
    SkipSpace();
    if (Peek('}')) {
      ++pos_;
      return true;
    }
    while (true) {
      SkipSpace();
      if (Peek('{')) {
        Json sub;
        if (!Array(sub)) return false;
        out.push_back(std::move(sub));
      } else if (Peek('"')) {
        std::string v;
        if (!Quoted(v)) return false;
        out.push_back(PgTextToJson(element_oid_, v, types_));
      } else {
        std::string v;
        bool escaped = false;
        if (!Unquoted(v, escaped)) return false;
        if (!escaped && v.size() == 4 && (v[0] == 'N' || v[0] == 'n') && (v[1] == 'U' || v[1] == 'u') &&
            (v[2] == 'L' || v[2] == 'l') && (v[3] == 'L' || v[3] == 'l')) {
          out.push_back(nullptr);
        } else {
          out.push_back(PgTextToJson(element_oid_, v, types_));
        }
      }
      SkipSpace();
      if (Peek(',')) {
        ++pos_;
      } else if (Peek('}')) {
        ++pos_;
        return true;
      } else {
        return false;
      }
    }
  }

  bool Quoted(std::string& out) {
    ++pos_;  // opening quote
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (c == '\\') {
        if (pos_ >= s_.size()) return false;
        out.push_back(s_[pos_++]);
      } else {
        out.push_back(c);
      }
    }
    return false;
  }

  bool Unquoted(std::string& out, bool& escaped) {
    std::size_t last_non_space = 0;  // length of `out` up to its last non-space
    while (pos_ < s_.size() && s_[pos_] != ',' && s_[pos_] != '}') {
      const char c = s_[pos_++];
      if (c == '{' || c == '"') return false;
      if (c == '\\') {
        if (pos_ >= s_.size()) return false;
        out.push_back(s_[pos_++]);
        escaped = true;
        last_non_space = out.size();
      } else {
        out.push_back(c);
        if (!IsSpace(c)) last_non_space = out.size();
      }
    }
    out.resize(last_non_space);
    return !out.empty();
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  uint32_t element_oid_;
  const TypeLookup& types_;
};

std::string DisplaySchema(const RelationMsg& rel) {
  return rel.namespace_name.empty() ? std::string("pg_catalog") : rel.namespace_name;
}

std::string QualifiedName(const RelationMsg& rel) { return DisplaySchema(rel) + "." + rel.name; }

int64_t CommitMillis(const TransactionInfo& tx) {
  int64_t ms = tx.commit_time_us / 1000;
  if (tx.commit_time_us % 1000 < 0) --ms;  // floor, for times before 1970
  return ms;
}

Status CheckColumnCount(const RelationMsg& rel, const TupleData& tuple) {
  if (tuple.columns.size() != rel.columns.size()) {
    return Status::Permanent("tuple of \"" + QualifiedName(rel) + "\" has " + std::to_string(tuple.columns.size()) +
                             " columns, the relation has " + std::to_string(rel.columns.size()));
  }
  return Status::Ok();
}

}  // namespace

std::string DeterministicEventId(Lsn commit_lsn, uint64_t index) {
  // LLLLLLLL-LLLL-8LLL-8Lii-iiiiiiiiiiii: 16 hex digits of the LSN and 14 of
  // the index, with the version and variant nibbles in their places.
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(36, '-');
  const uint64_t l = commit_lsn.value();
  const int lsn_at[16] = {0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 17, 20};
  for (int i = 0; i < 16; ++i) id[static_cast<std::size_t>(lsn_at[i])] = kHex[(l >> (60 - 4 * i)) & 0xf];
  id[14] = '8';
  id[19] = '8';
  const int index_at[14] = {21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35};
  for (int i = 0; i < 14; ++i) id[static_cast<std::size_t>(index_at[i])] = kHex[(index >> (52 - 4 * i)) & 0xf];
  return id;
}

Json PgTextToJson(uint32_t type_oid, std::string_view text, const TypeLookup& types) {
  switch (type_oid) {
    case kBool:
      if (text == "t") return true;
      if (text == "f") return false;
      break;
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid:
      if (auto v = ParseInteger(text)) return *std::move(v);
      break;
    case kFloat4:
    case kFloat8:
      // NaN and ±Infinity have no JSON number; they stay strings.
      if (auto v = ParseFloat(text)) return *std::move(v);
      break;
    case kNumeric:
      // A double would lose digits; Debezium's "string" decimal mode.
      break;
    case kJson:
    case kJsonb: {
      Json parsed = Json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (!parsed.is_discarded()) return parsed;
      break;
    }
    case kBytea:
      if (auto bytes = DecodeBytea(text)) return Base64(*bytes);
      break;
    case kTimestamptz:
      if (auto iso = TimestamptzToUtcIso(text)) return *std::move(iso);
      break;
    case kTimestamp:
      if (auto iso = TimestampToIso(text)) return *std::move(iso);
      break;
    default: {
      uint32_t element = BuiltinArrayElement(type_oid);
      bool is_array = element != 0;
      if (!is_array && types) {
        const TypeMsg* t = types(type_oid);
        is_array = t != nullptr && !t->name.empty() && t->name.front() == '_';
      }
      if (is_array) {
        if (auto arr = ArrayTextParser(text, element, types).Parse()) return *std::move(arr);
      }
      break;
    }
  }
  return std::string(text);
}

// --- ChangeMapper ----------------------------------------------------------

ChangeMapper::ChangeMapper(ChangeMapperOptions options) : options_(std::move(options)) {}

Result<std::string> ChangeMapper::TopicFor(const RelationMsg& relation) const {
  std::string topic = options_.topic_prefix + "." + DisplaySchema(relation) + "." + relation.name;
  Status st = ValidateTopicName(topic);
  if (!st.ok()) return st.Prefixed("change of \"" + QualifiedName(relation) + "\"");
  return topic;
}

std::vector<bool> ChangeMapper::KeyMask(const RelationMsg& rel) const {
  std::vector<bool> mask(rel.columns.size(), false);
  auto it = options_.key_columns.find(QualifiedName(rel));
  for (std::size_t i = 0; i < rel.columns.size(); ++i) {
    if (it == options_.key_columns.end()) {
      mask[i] = rel.columns[i].is_key();
    } else {
      for (const std::string& name : it->second) mask[i] = mask[i] || rel.columns[i].name == name;
    }
  }
  return mask;
}

void ChangeMapper::AppendValue(std::string& out, const RelationColumn& col, const TupleColumn& v) const {
  switch (v.kind) {
    case TupleColumn::Kind::kNull:
      out += "null";
      return;
    case TupleColumn::Kind::kUnchangedToast:
      AppendJsonString(out, kUnchangedToastPlaceholder);
      return;
    case TupleColumn::Kind::kText:
    case TupleColumn::Kind::kBinary:  // rejected by the callers
      break;
  }
  switch (col.type_oid) {
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid:
      if (IsCanonicalInteger(v.value)) {
        out += v.value;
        return;
      }
      break;
    case kBool:
      if (v.value == "t" || v.value == "f") {
        out += v.value == "t" ? "true" : "false";
        return;
      }
      break;
    case kText:
    case kVarchar:
    case kBpchar:
    case kName:
    case kUuid:
    case kNumeric:  // as a string, precision kept
      AppendJsonString(out, v.value);
      return;
    default:
      break;
  }
  out += Dump(PgTextToJson(col.type_oid, v.value, options_.types));
}

Result<std::string> ChangeMapper::RowJson(const RelationMsg& rel, const TupleData& tuple, bool key_only) const {
  OUTBOXD_RETURN_IF_ERROR(CheckColumnCount(rel, tuple));
  std::string out = "{";
  for (std::size_t i = 0; i < rel.columns.size(); ++i) {
    const RelationColumn& col = rel.columns[i];
    if (key_only && !col.is_key()) continue;
    const TupleColumn& v = tuple.columns[i];
    if (v.kind == TupleColumn::Kind::kBinary) {
      return Status::Permanent("column \"" + col.name + "\" of \"" + QualifiedName(rel) +
                               "\" is in binary format; outboxd requests text");
    }
    if (out.size() > 1) out += ',';
    AppendJsonString(out, col.name);
    out += ':';
    AppendValue(out, col, v);
  }
  out += '}';
  return out;
}

Result<std::optional<std::string>> ChangeMapper::Key(const RelationMsg& rel, const TupleData& tuple,
                                                     const TupleData* fallback) const {
  OUTBOXD_RETURN_IF_ERROR(CheckColumnCount(rel, tuple));
  if (fallback != nullptr) OUTBOXD_RETURN_IF_ERROR(CheckColumnCount(rel, *fallback));
  if (auto it = options_.key_columns.find(QualifiedName(rel)); it != options_.key_columns.end()) {
    for (const std::string& name : it->second) {
      bool found = false;
      for (const RelationColumn& c : rel.columns) found = found || c.name == name;
      if (!found) {
        return Status::Permanent("key column \"" + name + "\" is not a column of \"" + QualifiedName(rel) + "\"");
      }
    }
  }
  const std::vector<bool> mask = KeyMask(rel);
  std::string key = "{";
  bool any = false;
  for (std::size_t i = 0; i < rel.columns.size(); ++i) {
    if (!mask[i]) continue;
    any = true;
    const RelationColumn& col = rel.columns[i];
    const TupleColumn* v = &tuple.columns[i];
    if (v->kind == TupleColumn::Kind::kUnchangedToast && fallback != nullptr &&
        fallback->columns[i].kind == TupleColumn::Kind::kText) {
      v = &fallback->columns[i];
    }
    if (v->kind == TupleColumn::Kind::kBinary) {
      return Status::Permanent("key column \"" + col.name + "\" of \"" + QualifiedName(rel) +
                               "\" is in binary format; outboxd requests text");
    }
    if (key.size() > 1) key += ',';
    AppendJsonString(key, col.name);
    key += ':';
    AppendValue(key, col, *v);
  }
  if (!any) return std::optional<std::string>();
  key += '}';
  return std::optional<std::string>(std::move(key));
}

Result<Record> ChangeMapper::Envelope(const RelationMsg& rel, Op op, std::string_view before, std::string_view after,
                                      std::optional<std::string> key, const TransactionInfo& tx, uint64_t index) const {
  auto topic = TopicFor(rel);
  if (!topic.ok()) return topic.status();
  const std::string ms = std::to_string(CommitMillis(tx));
  std::string value;
  value.reserve(before.size() + after.size() + 160);
  value += "{\"before\":";
  value += before;
  value += ",\"after\":";
  value += after;
  value += ",\"op\":\"";
  value += static_cast<char>(op);
  value += "\",\"source\":{\"db\":";
  AppendJsonString(value, options_.database);
  value += ",\"schema\":";
  AppendJsonString(value, DisplaySchema(rel));
  value += ",\"table\":";
  AppendJsonString(value, rel.name);
  value += ",\"lsn\":";
  value += std::to_string(tx.commit_lsn.value());
  value += ",\"txId\":";
  value += std::to_string(tx.xid);
  value += ",\"ts_ms\":";
  value += ms;
  value += "},\"ts_ms\":";
  value += ms;
  value += '}';

  Record rec;
  rec.topic = std::move(topic).value();
  rec.key = std::move(key);
  rec.value = std::move(value);
  rec.headers.push_back({"id", DeterministicEventId(tx.commit_lsn, index)});
  rec.timestamp_ms = CommitMillis(tx);
  if (options_.format != EventFormat::kDebezium) {
    CloudEventAttributes event;
    event.id = *rec.headers.front().value;
    event.source = options_.cloudevents_source.value_or(DefaultSource(QualifiedName(rel)));
    event.type = std::string("outboxd.change.") + static_cast<char>(op);
    event.time_ms = rec.timestamp_ms;
    event.datacontenttype = "application/json";
    EncodeCloudEvent(event, options_.format, rec);
  }
  return rec;
}

Result<Record> ChangeMapper::MapInsert(const InsertMsg& msg, const TransactionInfo& tx, uint64_t index) const {
  const RelationMsg& rel = *msg.relation;
  auto after = RowJson(rel, msg.new_tuple, false);
  if (!after.ok()) return after.status();
  auto key = Key(rel, msg.new_tuple, nullptr);
  if (!key.ok()) return key.status();
  return Envelope(rel, Op::kCreate, "null", *after, std::move(key).value(), tx, index);
}

Result<Record> ChangeMapper::MapSnapshotRow(const RelationMsg& rel, const TupleData& row, const TransactionInfo& tx,
                                            uint64_t index) const {
  auto after = RowJson(rel, row, false);
  if (!after.ok()) return after.status();
  auto key = Key(rel, row, nullptr);
  if (!key.ok()) return key.status();
  return Envelope(rel, Op::kRead, "null", *after, std::move(key).value(), tx, index);
}

Result<Record> ChangeMapper::MapUpdate(const UpdateMsg& msg, const TransactionInfo& tx, uint64_t index) const {
  const RelationMsg& rel = *msg.relation;
  std::string before = "null";
  const TupleData* old = nullptr;
  if (msg.old_kind != UpdateMsg::OldKind::kNone && msg.old_tuple) {
    old = &*msg.old_tuple;
    auto b = RowJson(rel, *old, msg.old_kind == UpdateMsg::OldKind::kKey);
    if (!b.ok()) return b.status();
    before = std::move(b).value();
  }
  auto after = RowJson(rel, msg.new_tuple, false);
  if (!after.ok()) return after.status();
  auto key = Key(rel, msg.new_tuple, old);
  if (!key.ok()) return key.status();
  return Envelope(rel, Op::kUpdate, before, *after, std::move(key).value(), tx, index);
}

Result<Record> ChangeMapper::MapDelete(const DeleteMsg& msg, const TransactionInfo& tx, uint64_t index) const {
  const RelationMsg& rel = *msg.relation;
  auto before = RowJson(rel, msg.old_tuple, msg.old_kind == DeleteMsg::OldKind::kKey);
  if (!before.ok()) return before.status();
  auto key = Key(rel, msg.old_tuple, nullptr);
  if (!key.ok()) return key.status();
  return Envelope(rel, Op::kDelete, *before, "null", std::move(key).value(), tx, index);
}

Result<std::vector<Record>> ChangeMapper::MapTruncate(const TruncateMsg& msg, const TransactionInfo& tx,
                                                      uint64_t first_index) const {
  std::vector<Record> out;
  out.reserve(msg.relations.size());
  for (std::size_t i = 0; i < msg.relations.size(); ++i) {
    auto rec = Envelope(*msg.relations[i], Op::kTruncate, "null", "null", std::nullopt, tx, first_index + i);
    if (!rec.ok()) return rec.status();
    out.push_back(std::move(rec).value());
  }
  return out;
}

// --- Outbox messages and rows ----------------------------------------------

Result<std::optional<OutboxMessage>> ParseOutboxMessage(const LogicalMsg& msg, std::string_view prefix) {
  if (msg.prefix != prefix) return std::optional<OutboxMessage>();
  auto error = [&](const std::string& what) {
    return Status::Permanent("logical decoding message at LSN " + msg.lsn.ToString() + " with prefix \"" + msg.prefix +
                             "\": " + what);
  };
  const Json content = Json::parse(msg.content, nullptr, /*allow_exceptions=*/false);
  if (content.is_discarded()) return error("content is not valid JSON");
  if (!content.is_object()) return error("content is not a JSON object");

  OutboxMessage out;
  std::vector<std::pair<std::string, std::string>> trace;  // column → value
  for (const auto& [name, value] : content.items()) {
    if (name == "headers") {
      if (value.is_null()) continue;
      if (!value.is_object()) return error("\"headers\" is not an object");
      for (const auto& [header, hv] : value.items()) {
        if (header == "id") return error("\"headers\" may not set \"id\"; it comes from the \"id\" member");
        if (!hv.is_string()) return error("header \"" + header + "\" is not a string");
        if (header == "traceparent" || header == "tracestate") {
          trace.emplace_back(header == "traceparent" ? kMessageTraceparent : kMessageTracestate, hv.get<std::string>());
          continue;
        }
        out.headers.push_back({header, hv.get<std::string>()});
      }
      continue;
    }
    out.row.columns.push_back(name);
    if (value.is_null()) {
      out.row.values.emplace_back(std::nullopt);
    } else if (value.is_string()) {
      out.row.values.emplace_back(value.get<std::string>());
    } else {
      out.row.values.emplace_back(Dump(value));
    }
  }
  for (auto& [column, value] : trace) {
    out.row.columns.push_back(column);
    out.row.values.emplace_back(std::move(value));
  }
  const auto* id = out.row.Find("id");
  if (id != nullptr && id->has_value() && (*id)->empty()) return error("\"id\" is empty");
  return std::optional<OutboxMessage>(std::move(out));
}

void EnsureMessageId(OutboxMessage& message, Lsn commit_lsn, uint64_t index) {
  for (std::size_t i = 0; i < message.row.columns.size(); ++i) {
    if (message.row.columns[i] != "id") continue;
    if (!message.row.values[i]) message.row.values[i] = DeterministicEventId(commit_lsn, index);
    return;
  }
  message.row.columns.emplace_back("id");
  message.row.values.emplace_back(DeterministicEventId(commit_lsn, index));
}

OutboxTableConfig MessageRouting(const CdcConfig& cdc) {
  OutboxTableConfig c;
  c.table = "message prefix \"" + cdc.message_prefix.value_or("") + "\"";
  c.source = OutboxSource::kCdc;
  c.topic = cdc.message_topic;
  c.dead_letter_topic = cdc.dead_letter_topic;
  c.format = cdc.format;
  c.cloudevents.source = cdc.cloudevents_source.value_or("/outboxd/messages");
  c.cloudevents.subject = c.key;
  c.traceparent = kMessageTraceparent;
  c.tracestate = kMessageTracestate;
  c.config_location = cdc.config_location;
  return c;
}

void AppendMessageHeaders(const OutboxMessage& message, Record& record) {
  record.headers.insert(record.headers.end(), message.headers.begin(), message.headers.end());
}

Result<Row> OutboxInsertToRow(const InsertMsg& msg) {
  const RelationMsg& rel = *msg.relation;
  OUTBOXD_RETURN_IF_ERROR(CheckColumnCount(rel, msg.new_tuple));
  Row row;
  row.columns.reserve(rel.columns.size());
  row.values.reserve(rel.columns.size());
  for (std::size_t i = 0; i < rel.columns.size(); ++i) {
    const TupleColumn& v = msg.new_tuple.columns[i];
    row.columns.push_back(rel.columns[i].name);
    switch (v.kind) {
      case TupleColumn::Kind::kNull:
        row.values.emplace_back(std::nullopt);
        break;
      case TupleColumn::Kind::kText:
        row.values.emplace_back(v.value);
        break;
      case TupleColumn::Kind::kUnchangedToast:
        return Status::Permanent("insert into outbox table \"" + QualifiedName(rel) + "\": column \"" +
                                 rel.columns[i].name + "\" has no value (unchanged TOAST)");
      case TupleColumn::Kind::kBinary:
        return Status::Permanent("insert into outbox table \"" + QualifiedName(rel) + "\": column \"" +
                                 rel.columns[i].name + "\" is in binary format; outboxd requests text");
    }
  }
  return row;
}

}  // namespace outboxd
