#include "pipeline/cloudevents.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <ctime>

namespace outboxd {

namespace {

constexpr std::string_view kSpecVersion = "1.0";
constexpr std::string_view kStructuredContentType = "application/cloudevents+json; charset=UTF-8";

// A JSON string literal of `text` (invalid UTF-8 replaced by U+FFFD).
std::string JsonString(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Base64(std::string_view data) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve(4 * ((data.size() + 2) / 3));
  std::size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    const uint32_t n = (uint32_t{static_cast<unsigned char>(data[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(data[i + 1])} << 8) |
                       static_cast<unsigned char>(data[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i < data.size()) {
    uint32_t n = uint32_t{static_cast<unsigned char>(data[i])} << 16;
    if (i + 1 < data.size()) n |= uint32_t{static_cast<unsigned char>(data[i + 1])} << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < data.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// application/json, text/json and any "+json" type, parameters ignored.
bool IsJsonContentType(std::string_view type) {
  type = type.substr(0, type.find(';'));
  while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
  std::string lower(type);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return lower == "application/json" || lower == "text/json" ||
         (lower.size() > 5 && lower.compare(lower.size() - 5, 5, "+json") == 0);
}

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool AllZeros(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == '0'; });
}

}  // namespace

std::string Rfc3339Utc(int64_t epoch_ms) {
  int64_t seconds = epoch_ms / 1000;
  int64_t millis = epoch_ms % 1000;
  if (millis < 0) {
    millis += 1000;
    seconds -= 1;
  }
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
  return buf;
}

void EncodeCloudEvent(const CloudEventAttributes& a, EventFormat format, Record& record) {
  std::vector<Header> headers;
  if (format == EventFormat::kCloudEventsBinary) {
    headers.reserve(record.headers.size() + 7 + a.extensions.size());
    headers.push_back({"ce_specversion", std::string(kSpecVersion)});
    headers.push_back({"ce_id", a.id});
    headers.push_back({"ce_source", a.source});
    headers.push_back({"ce_type", a.type});
    if (a.time_ms) headers.push_back({"ce_time", Rfc3339Utc(*a.time_ms)});
    if (a.subject) headers.push_back({"ce_subject", *a.subject});
    for (const auto& [name, value] : a.extensions) headers.push_back({"ce_" + name, value});
    if (a.datacontenttype && record.value) headers.push_back({"content-type", *a.datacontenttype});
  } else {
    std::string json = "{\"specversion\":\"1.0\",\"id\":" + JsonString(a.id) + ",\"source\":" + JsonString(a.source) +
                       ",\"type\":" + JsonString(a.type);
    if (a.time_ms) json += ",\"time\":\"" + Rfc3339Utc(*a.time_ms) + "\"";
    if (a.subject) json += ",\"subject\":" + JsonString(*a.subject);
    if (a.datacontenttype && record.value) json += ",\"datacontenttype\":" + JsonString(*a.datacontenttype);
    for (const auto& [name, value] : a.extensions) json += ",\"" + name + "\":" + JsonString(value);
    if (record.value) {
      // The data as it is when it is JSON (a jsonb column's text always is):
      // no re-encoding, so the bytes a consumer parses are the row's.
      const bool json_data =
          (!a.datacontenttype || IsJsonContentType(*a.datacontenttype)) && nlohmann::json::accept(*record.value);
      json += json_data ? ",\"data\":" + *record.value : ",\"data_base64\":\"" + Base64(*record.value) + "\"";
    }
    json += '}';
    record.value = std::move(json);
    headers.reserve(record.headers.size() + 1);
    headers.push_back({"content-type", std::string(kStructuredContentType)});
  }
  for (Header& h : record.headers) headers.push_back(std::move(h));
  record.headers = std::move(headers);
}

bool ValidTraceparent(std::string_view v) {
  // version "-" trace-id "-" parent-id "-" trace-flags
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  const std::string_view version = v.substr(0, 2);
  const std::string_view trace_id = v.substr(3, 32);
  const std::string_view parent_id = v.substr(36, 16);
  const std::string_view flags = v.substr(53, 2);
  if (!IsLowerHex(version) || !IsLowerHex(trace_id) || !IsLowerHex(parent_id) || !IsLowerHex(flags)) return false;
  if (version == "ff" || AllZeros(trace_id) || AllZeros(parent_id)) return false;
  if (version == "00") return v.size() == 55;
  return v.size() == 55 || v[55] == '-';  // a later version may add fields
}

}  // namespace outboxd
