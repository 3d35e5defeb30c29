#include "config/cloudevents_names.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace outboxd {

std::string CheckExtensionName(std::string_view name) {
  static constexpr std::array<std::string_view, 10> kReserved = {
      "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"};
  if (name.empty()) return "an empty name";
  if (name.size() > 20) return "longer than 20 characters";
  if (!std::all_of(name.begin(), name.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); })) {
    return "not only lower-case letters a-z and digits";
  }
  if (std::find(kReserved.begin(), kReserved.end(), name) != kReserved.end()) {
    return "the name of a CloudEvents context attribute";
  }
  return {};
}

std::string CheckSourceUri(std::string_view source) {
  if (source.empty()) return "empty";
  constexpr std::string_view kAllowed =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%";
  for (std::size_t i = 0; i < source.size(); ++i) {
    const char c = source[i];
    if (kAllowed.find(c) == std::string_view::npos) {
      return "character " + std::to_string(i + 1) + " is not allowed in a URI (percent-encode it)";
    }
    if (c == '%' && (i + 2 >= source.size() || !std::isxdigit(static_cast<unsigned char>(source[i + 1])) ||
                     !std::isxdigit(static_cast<unsigned char>(source[i + 2])))) {
      return "'%' at character " + std::to_string(i + 1) + " does not start a percent-escape";
    }
  }
  return {};
}

std::string DefaultSource(std::string_view table) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out = "/outboxd/";
  for (const char c : table) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

}  // namespace outboxd
