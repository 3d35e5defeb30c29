#include "config/config.h"

#include "config/cloudevents_names.h"
#include "config/kafka_conf.h"
#include "config/topic_name.h"

#include <libpq-fe.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

namespace outboxd {
namespace {

using std::chrono::milliseconds;

constexpr std::array<std::string_view, 6> kSections = {"postgres", "kafka", "http", "log", "cdc", "outbox"};
constexpr std::array<std::string_view, 2> kPostgresKeys = {"conninfo", "password_file"};
constexpr std::array<std::string_view, 10> kKafkaKeys = {
    "bootstrap_servers", "password_file",  "properties",           "max_in_flight",          "shutdown_timeout",
    "delivery",          "position_topic", "transaction_max_wait", "transaction_max_events", "transaction_max_bytes"};
constexpr std::array<std::string_view, 7> kHttpKeys = {
    "listen", "tls_cert_file", "tls_key_file", "basic_auth_user", "basic_auth_password_file", "basic_auth_health"};
constexpr std::array<std::string_view, 2> kLogKeys = {"level", "format"};
constexpr std::array<std::string_view, 19> kOutboxKeys = {
    "table",     "source",      "order_by",      "after_delivery", "sent_column",
    "id",        "key",         "payload",       "topic",          "headers",
    "timestamp", "batch_size",  "poll_interval", "notify_channel", "dead_letter_topic",
    "format",    "traceparent", "tracestate",    "cloudevents"};
constexpr std::array<std::string_view, 5> kCloudEventsKeys = {"source", "type", "subject", "datacontenttype",
                                                              "extensions"};
// Keys of an [[outbox]] block that only mean something when the table is polled.
constexpr std::array<std::string_view, 6> kPollOnlyKeys = {"order_by",   "after_delivery", "sent_column",
                                                           "batch_size", "poll_interval",  "notify_channel"};
constexpr std::array<std::string_view, 15> kCdcKeys = {
    "slot",        "publication",  "create",     "message_prefix",  "message_topic",    "dead_letter_topic",
    "tables",      "topic_prefix", "snapshot",   "status_interval", "confirm_interval", "confirm_events",
    "state_table", "format",       "cloudevents"};
constexpr std::array<std::string_view, 1> kCdcCloudEventsKeys = {"source"};

constexpr std::int64_t kMaxBatchSize = 100000;
constexpr std::size_t kMaxIdentifierBytes = 63;  // PostgreSQL's NAMEDATALEN - 1
constexpr milliseconds kMaxStatusInterval{60 * 60 * 1000};

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  out += s;
  out += '"';
  return out;
}

std::string_view TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return node.is_array_of_tables() ? "array of tables" : "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// Files.

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using UniqueFile = std::unique_ptr<std::FILE, FileCloser>;

// Reads a whole file. The error message is the system's reason alone
// ("No such file or directory"); callers name the file.
Result<std::string> ReadWholeFile(const std::string& path) {
  auto reason = [] { return Status::InvalidConfig(std::error_code(errno, std::generic_category()).message()); };
  UniqueFile file(std::fopen(path.c_str(), "rb"));
  if (!file) return reason();
  std::string data;
  std::array<char, 8192> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), file.get())) > 0) data.append(buf.data(), n);
  // A directory opens fine and fails here with EISDIR.
  if (std::ferror(file.get())) return reason();
  return data;
}

// ---------------------------------------------------------------------------
// Small parsers, each returning an empty string when the text is fine and
// otherwise the reason it is not.

bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHighByte(char c) { return static_cast<unsigned char>(c) >= 0x80; }

bool IsEnvName(std::string_view name) {
  if (name.empty() || IsAsciiDigit(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return IsAsciiAlpha(c) || IsAsciiDigit(c) || c == '_'; });
}

// Replaces ${NAME} with the environment variable NAME; "$${" is a literal "${".
Result<std::string> SubstituteEnv(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    std::string_view rest = text.substr(i);
    if (rest.starts_with("$${")) {
      out += "${";
      i += 3;
    } else if (rest.starts_with("${")) {
      std::size_t close = rest.find('}');
      if (close == std::string_view::npos) {
        return Status::InvalidConfig("unterminated \"${\" (write \"$${\" for a literal \"${\")");
      }
      std::string name(rest.substr(2, close - 2));
      if (!IsEnvName(name)) {
        return Status::InvalidConfig("\"${" + name +
                                     "}\" does not name an environment variable (letters, digits and _; "
                                     "write \"$${\" for a literal \"${\")");
      }
      const char* value = std::getenv(name.c_str());
      if (value == nullptr) return Status::InvalidConfig("environment variable " + name + " is not set");
      out += value;
      i += close + 1;
    } else {
      out += text[i++];
    }
  }
  return out;
}

// Checks "schema.table" or "table", either part optionally a double-quoted
// identifier. On success `parts` gets the one or two parts of the name as
// PostgreSQL resolves them (unquoted parts folded to lower case, quotes
// removed), for duplicate detection.
std::string CheckTableName(std::string_view text, std::vector<std::string>& parts) {
  parts.clear();
  std::size_t i = 0;
  for (;;) {
    std::string part;
    if (i < text.size() && text[i] == '"') {
      std::size_t j = i + 1;
      bool closed = false;
      while (j < text.size()) {
        if (text[j] == '"') {
          if (j + 1 < text.size() && text[j + 1] == '"') {
            part += '"';
            j += 2;
            continue;
          }
          closed = true;
          ++j;
          break;
        }
        part += text[j++];
      }
      if (!closed) return "unterminated quoted identifier starting at character " + std::to_string(i + 1);
      if (part.empty()) return "empty quoted identifier at character " + std::to_string(i + 1);
      i = j;
    } else {
      std::size_t start = i;
      if (i < text.size() && (IsAsciiAlpha(text[i]) || text[i] == '_' || IsHighByte(text[i]))) {
        while (i < text.size() && (IsAsciiAlpha(text[i]) || IsAsciiDigit(text[i]) || text[i] == '_' || text[i] == '$' ||
                                   IsHighByte(text[i]))) {
          part += static_cast<char>(IsAsciiAlpha(text[i]) ? (text[i] | 0x20) : text[i]);
          ++i;
        }
      }
      if (i == start) {
        if (i == text.size()) return text.empty() ? "it is empty" : "expected an identifier after the last '.'";
        return "unexpected '" + std::string(1, text[i]) + "' at character " + std::to_string(i + 1) +
               " (double-quote unusual names)";
      }
    }
    if (part.size() > kMaxIdentifierBytes) {
      return "identifier \"" + part + "\" is longer than PostgreSQL's 63-byte limit";
    }
    parts.push_back(std::move(part));
    if (i == text.size()) break;
    if (text[i] != '.') {
      return "unexpected '" + std::string(1, text[i]) + "' at character " + std::to_string(i + 1) +
             " (double-quote unusual names)";
    }
    ++i;
  }
  if (parts.size() > 2) return "it has " + std::to_string(parts.size()) + " parts";
  return {};
}

// PostgreSQL accepts only these replication slot names (ReplicationSlotValidateName).
std::string CheckSlotName(std::string_view slot) {
  if (slot.empty()) return "it is empty";
  if (slot.size() > kMaxIdentifierBytes) return "it is longer than PostgreSQL's 63-byte limit";
  for (std::size_t i = 0; i < slot.size(); ++i) {
    char c = slot[i];
    if (!((c >= 'a' && c <= 'z') || IsAsciiDigit(c) || c == '_')) {
      return "'" + std::string(1, c) + "' at character " + std::to_string(i + 1) +
             " is not allowed (lower-case letters, digits and '_')";
    }
  }
  return {};
}

// The (schema, table) that [cdc] duplicate checks compare: an unqualified
// name means the table in schema public, as docs/configuration.md says.
using QualifiedName = std::pair<std::string, std::string>;
QualifiedName CdcTableIdentity(const std::vector<std::string>& parts) {
  return parts.size() == 2 ? QualifiedName{parts[0], parts[1]} : QualifiedName{kDefaultSchema, parts.at(0)};
}

// "host:port" or "[v6-address]:port".
std::string CheckListenAddress(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos) return "unterminated '[' in the IPv6 address";
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.starts_with(':')) return "missing \":port\"";
    port = rest.substr(1);
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return "missing \":port\"";
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return "write an IPv6 address in brackets, such as \"[::1]:9464\"";
  }
  if (host.empty()) return "missing host (use 0.0.0.0 to listen on all interfaces)";
  if (port.empty()) return "missing port";
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value < 1 || value > 65535) {
    return "port \"" + std::string(port) + "\" is not a number from 1 to 65535";
  }
  return {};
}

// Optimal string alignment distance (Levenshtein plus adjacent swaps).
std::size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// The known key closest to `key`, if one is near enough to be a typo.
std::optional<std::string_view> Closest(std::string_view key, std::span<const std::string_view> known) {
  std::optional<std::string_view> best;
  std::size_t best_distance = 3;
  for (std::string_view candidate : known) {
    std::size_t d = EditDistance(key, candidate);
    if (d < best_distance && d < key.size()) {
      best = candidate;
      best_distance = d;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------
// Diagnostics: every error found in one file, reported together in file order.

class Diagnostics {
 public:
  explicit Diagnostics(std::string path) : path_(std::move(path)) {}

  std::string Location(const toml::source_position& pos) const {
    return path_ + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column);
  }

  void Error(const toml::source_position& pos, std::string_view message) {
    errors_.push_back({pos.line, pos.column, Location(pos) + ": " + std::string(message)});
  }
  void Error(const toml::node& at, std::string_view message) { Error(at.source().begin, message); }
  void Error(const toml::key& at, std::string_view message) { Error(at.source().begin, message); }
  // For what is missing from the file as a whole.
  void ErrorInFile(std::string_view message) { Error(toml::source_position{1, 1}, message); }

  bool HasErrors() const { return !errors_.empty(); }

  Status ToStatus() {
    std::stable_sort(errors_.begin(), errors_.end(), [](const Entry& a, const Entry& b) {
      return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    std::string text;
    for (const Entry& e : errors_) {
      if (!text.empty()) text += '\n';
      text += e.text;
    }
    return Status::InvalidConfig(std::move(text));
  }

 private:
  struct Entry {
    toml::source_index line;
    toml::source_index column;
    std::string text;
  };
  std::string path_;
  std::vector<Entry> errors_;
};

// ---------------------------------------------------------------------------
// SectionReader: typed access to the keys of one table ("[kafka]",
// "[[outbox]] #2"). Construction reports every key not in `known_keys`.
// Getters return nullopt both when the key is absent and when its value is
// wrong; in the second case the error is already recorded, so each key is to
// be read once. Holds references to the table and Diagnostics, which outlive it.

class SectionReader {
 public:
  SectionReader(const toml::table& table, std::string scope, std::span<const std::string_view> known_keys,
                bool substitute_env, Diagnostics& diag)
      : table_(table), scope_(std::move(scope)), known_(known_keys), substitute_env_(substitute_env), diag_(diag) {
    RejectUnknownKeys();
  }

  const std::string& scope() const { return scope_; }
  Diagnostics& diag() const { return diag_; }
  const toml::node* Get(std::string_view key) const { return table_.get(key); }

  // "'key' in SCOPE must be <what>" at the key's value.
  void MustBe(std::string_view key, std::string_view what) const {
    diag_.Error(*Get(key), Name(key) + " must be " + std::string(what));
  }
  // "'key' in SCOPE: <detail>" at the key's value.
  void Invalid(std::string_view key, std::string_view detail) const {
    diag_.Error(*Get(key), Name(key) + ": " + std::string(detail));
  }
  void Missing(std::string_view key) const {
    diag_.Error(table_, scope_ + " is missing required key '" + std::string(key) + "'");
  }

  std::optional<std::string> String(std::string_view key) const {
    const toml::node* node = Get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_string()) {
      WrongType(key, *node, "a string");
      return std::nullopt;
    }
    return Substituted(key, *node->as_string());
  }

  std::optional<std::string> RequiredString(std::string_view key) const {
    if (Get(key) == nullptr) {
      Missing(key);
      return std::nullopt;
    }
    return String(key);
  }

  std::optional<std::int64_t> Integer(std::string_view key) const {
    const toml::node* node = Get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_integer()) {
      WrongType(key, *node, "an integer");
      return std::nullopt;
    }
    return node->as_integer()->get();
  }

  std::optional<bool> Boolean(std::string_view key) const {
    const toml::node* node = Get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_boolean()) {
      WrongType(key, *node, "true or false");
      return std::nullopt;
    }
    return node->as_boolean()->get();
  }

  std::optional<milliseconds> Duration(std::string_view key) const {
    const toml::node* node = Get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_string()) {
      WrongType(key, *node, "a duration string with a unit, such as \"250ms\" or \"10s\"");
      return std::nullopt;
    }
    std::optional<std::string> text = Substituted(key, *node->as_string());
    if (!text) return std::nullopt;
    Result<milliseconds> d = ParseDuration(*text);
    if (!d.ok()) {
      Invalid(key, d.status().message());
      return std::nullopt;
    }
    return *d;
  }

  // The value of a key that must be one of `choices`.
  std::optional<std::string> OneOf(std::string_view key, std::span<const std::string_view> choices) const {
    std::optional<std::string> value = String(key);
    if (!value) return std::nullopt;
    if (std::find(choices.begin(), choices.end(), *value) != choices.end()) return value;
    std::string list;
    for (std::size_t i = 0; i < choices.size(); ++i) {
      if (i > 0) list += i + 1 == choices.size() ? " or " : ", ";
      list += choices[i];
    }
    MustBe(key, list + ", got " + Quoted(*value));
    return std::nullopt;
  }

  // A column name: non-empty and within PostgreSQL's identifier length.
  std::optional<std::string> Column(std::string_view key) const {
    std::optional<std::string> value = String(key);
    if (!value) return std::nullopt;
    if (value->empty()) {
      MustBe(key, "a column name, got \"\"");
      return std::nullopt;
    }
    if (value->size() > kMaxIdentifierBytes) {
      Invalid(key, "column name is longer than PostgreSQL's 63-byte limit");
      return std::nullopt;
    }
    return value;
  }

  void WrongType(std::string_view key, const toml::node& value, std::string_view expected) const {
    diag_.Error(value, Name(key) + " must be " + std::string(expected) + ", got " + std::string(TypeName(value)));
  }

 private:
  std::string Name(std::string_view key) const { return "'" + std::string(key) + "' in " + scope_; }

  std::optional<std::string> Substituted(std::string_view key, const toml::value<std::string>& node) const {
    if (!substitute_env_) return node.get();
    Result<std::string> r = SubstituteEnv(node.get());
    if (!r.ok()) {
      diag_.Error(node, Name(key) + ": " + r.status().message());
      return std::nullopt;
    }
    return std::move(r).value();
  }

  void RejectUnknownKeys() const {
    for (auto&& [key, value] : table_) {
      if (std::find(known_.begin(), known_.end(), key.str()) != known_.end()) continue;
      std::string message = "unknown key '" + std::string(key.str()) + "' in " + scope_;
      if (auto guess = Closest(key.str(), known_)) message += " (did you mean '" + std::string(*guess) + "'?)";
      diag_.Error(key, message);
    }
  }

  const toml::table& table_;
  std::string scope_;
  std::span<const std::string_view> known_;
  bool substitute_env_;
  Diagnostics& diag_;
};

// ---------------------------------------------------------------------------
// Sections.

// A file path key, relative to the config file's directory.
std::optional<std::string> ReadPath(const SectionReader& r, std::string_view key, const std::string& config_path) {
  auto file = r.String(key);
  if (!file) return std::nullopt;
  if (file->empty()) {
    r.MustBe(key, "a file path, got \"\"");
    return std::nullopt;
  }
  std::filesystem::path path(*file);
  if (path.is_relative()) path = std::filesystem::path(config_path).parent_path() / path;
  return path.string();
}

// A secret read from the file a key names: a password, without trailing
// newlines. The path is relative to the config file's directory, not to
// whatever directory the daemon was started in.
struct SecretFile {
  std::string path;
  std::string content;
};
std::optional<SecretFile> ReadSecretFile(const SectionReader& r, std::string_view key, const std::string& config_path) {
  std::optional<std::string> path = ReadPath(r, key, config_path);
  if (!path) return std::nullopt;
  Result<std::string> content = ReadWholeFile(*path);
  if (!content.ok()) {
    r.Invalid(key, "cannot read " + Quoted(*path) + ": " + content.status().message());
    return std::nullopt;
  }
  std::string secret = std::move(content).value();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.empty()) {
    r.Invalid(key, Quoted(*path) + " is empty");
    return std::nullopt;
  }
  return SecretFile{std::move(*path), std::move(secret)};
}

// Why libpq cannot parse `conninfo`, or "" when it can. libpq's message
// quotes pieces of the string, which may be pieces of a password: each
// quoted piece is shown as "…".
std::string ConninfoSyntaxError(const std::string& conninfo) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options != nullptr) {
    PQconninfoFree(options);
    return {};
  }
  const std::string message = error != nullptr ? error : "out of memory";
  if (error != nullptr) PQfreemem(error);
  std::string masked;
  bool quoted = false;
  for (char c : message) {
    if (c == '"') {
      masked += quoted ? "…\"" : "\"";
      quoted = !quoted;
    } else if (!quoted && c != '\n') {
      masked += c;
    }
  }
  return "libpq cannot parse it: " + masked + " (quoted parts not shown)";
}

void ReadPostgres(const toml::table& table, const std::string& config_path, Diagnostics& diag, PostgresConfig& out) {
  SectionReader r(table, "[postgres]", kPostgresKeys, /*substitute_env=*/true, diag);
  if (auto conninfo = r.RequiredString("conninfo")) {
    if (conninfo->empty()) {
      r.MustBe("conninfo", "a libpq conninfo string or URI, got \"\"");
    } else if (std::string problem = ConninfoSyntaxError(*conninfo); !problem.empty()) {
      r.Invalid("conninfo", problem);
    } else {
      out.conninfo = std::move(*conninfo);
    }
  }
  if (auto secret = ReadSecretFile(r, "password_file", config_path)) {
    out.password_file = std::move(secret->path);
    out.password = std::move(secret->content);
  }
}

// One entry of [kafka.properties] after flattening.
struct KafkaProperty {
  std::string name;
  toml::source_position where;  // start of the (possibly dotted) key
  const toml::node* value;
};

// Flattens [kafka.properties]; a nested table comes from an unquoted dotted
// key (compression.type = "lz4") and is joined back with '.'.
void FlattenKafkaProperties(const toml::table& table, const std::string& prefix, const toml::source_position* outer_key,
                            std::vector<KafkaProperty>& out) {
  for (auto&& [key, node] : table) {
    std::string name = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    const toml::source_position& where = outer_key != nullptr ? *outer_key : key.source().begin;
    if (const toml::table* nested = node.as_table()) {
      FlattenKafkaProperties(*nested, name, &where, out);
    } else {
      out.push_back({std::move(name), where, &node});
    }
  }
}

void ReadKafkaProperties(const toml::table& table, Diagnostics& diag, std::map<std::string, std::string>& out) {
  // librdkafka itself judges names and values, so that a typo is reported
  // here with its place in the file rather than later by the producer.
  KafkaConf scratch;
  std::vector<KafkaProperty> properties;
  FlattenKafkaProperties(table, "", nullptr, properties);
  // In file order, so that "set twice" points at the second one.
  std::stable_sort(properties.begin(), properties.end(), [](const KafkaProperty& a, const KafkaProperty& b) {
    return std::tie(a.where.line, a.where.column) < std::tie(b.where.line, b.where.column);
  });
  std::map<std::string, toml::source_position> seen;
  for (const KafkaProperty& p : properties) {
    const toml::node& node = *p.value;
    std::string what = "'" + p.name + "' in [kafka.properties]";
    std::string value;
    if (const auto* s = node.as_string()) {
      Result<std::string> r = SubstituteEnv(s->get());
      if (!r.ok()) {
        diag.Error(node, what + ": " + r.status().message());
        continue;
      }
      value = std::move(r).value();
    } else if (const auto* i = node.as_integer()) {
      value = std::to_string(i->get());
    } else if (const auto* b = node.as_boolean()) {
      value = b->get() ? "true" : "false";
    } else {
      diag.Error(node, what + " must be a string, integer or boolean, got " + std::string(TypeName(node)));
      continue;
    }
    if (p.name.empty()) {
      diag.Error(p.where, "empty property name in [kafka.properties]");
      continue;
    }
    if (p.name == "bootstrap.servers" || p.name == "metadata.broker.list") {
      diag.Error(p.where, what + ": set the brokers with 'bootstrap_servers' in [kafka]");
      continue;
    }
    if (p.name == "transactional.id") {
      // At least once, a transactional producer would refuse every record
      // (none is in a transaction); exactly once, the id is the stream's.
      diag.Error(p.where, what +
                              ": outboxd derives it from each source with [kafka] delivery = \"exactly-once\"; "
                              "remove it");
      continue;
    }
    if (auto [it, inserted] = seen.emplace(p.name, p.where); !inserted) {
      diag.Error(p.where, what + " is set twice (first at " + diag.Location(it->second) + ")");
      continue;
    }
    if (Status st = scratch.Set(p.name, value); !st.ok()) {
      diag.Error(p.where, what + ": " + st.message());
      continue;
    }
    out[p.name] = std::move(value);
  }
}

void ReadKafka(const toml::table& table, const std::string& config_path, Diagnostics& diag, KafkaConfig& out) {
  SectionReader r(table, "[kafka]", kKafkaKeys, /*substitute_env=*/true, diag);
  if (auto servers = r.RequiredString("bootstrap_servers")) {
    if (servers->empty()) {
      r.MustBe("bootstrap_servers", "a comma-separated list of host:port, got \"\"");
    } else {
      out.bootstrap_servers = std::move(*servers);
    }
  }
  if (const toml::node* node = r.Get("properties")) {
    if (const toml::table* properties = node->as_table()) {
      ReadKafkaProperties(*properties, diag, out.properties);
    } else {
      r.WrongType("properties", *node, "a table of librdkafka properties");
    }
  }
  if (auto secret = ReadSecretFile(r, "password_file", config_path)) {
    if (out.properties.contains("sasl.password")) {
      r.Invalid("password_file", "gives the SASL password, and so does [kafka.properties] \"sasl.password\": keep one");
    } else {
      out.password_file = std::move(secret->path);
      out.properties["sasl.password"] = std::move(secret->content);
    }
  }
  if (auto n = r.Integer("max_in_flight")) {
    if (*n < 1) {
      r.MustBe("max_in_flight", "a positive integer, got " + std::to_string(*n));
    } else {
      out.max_in_flight = static_cast<std::size_t>(*n);
    }
  }
  if (auto d = r.Duration("shutdown_timeout")) out.shutdown_timeout = *d;
  static constexpr std::array<std::string_view, 2> kDeliveries = {"at-least-once", "exactly-once"};
  if (auto delivery = r.OneOf("delivery", kDeliveries)) {
    out.delivery = *delivery == "exactly-once" ? Delivery::kExactlyOnce : Delivery::kAtLeastOnce;
  }
  if (auto topic = r.String("position_topic")) {
    if (std::string problem = CheckTopicName(*topic); !problem.empty()) {
      r.Invalid("position_topic", problem);
    } else {
      out.position_topic = std::move(*topic);
    }
  }
  if (auto d = r.Duration("transaction_max_wait")) out.transaction_max_wait = *d;
  if (auto n = r.Integer("transaction_max_events")) {
    if (*n < 1) {
      r.MustBe("transaction_max_events", "a positive integer, got " + std::to_string(*n));
    } else {
      out.transaction_max_events = *n;
    }
  }
  if (auto n = r.Integer("transaction_max_bytes")) {
    if (*n < 1) {
      r.MustBe("transaction_max_bytes", "a positive integer, got " + std::to_string(*n));
    } else {
      out.transaction_max_bytes = *n;
    }
  }
}

void ReadHttp(const toml::table& table, const std::string& config_path, Diagnostics& diag, HttpConfig& out) {
  SectionReader r(table, "[http]", kHttpKeys, /*substitute_env=*/true, diag);
  if (auto listen = r.String("listen")) {
    // A port alone listens on loopback only: exposing the listener is a choice.
    if (!listen->empty() && listen->find_first_not_of("0123456789") == std::string::npos) {
      *listen = "127.0.0.1:" + *listen;
    }
    std::string problem = CheckListenAddress(*listen);
    if (!problem.empty()) {
      r.MustBe("listen", "\"host:port\", such as \"127.0.0.1:9464\": " + problem);
    } else {
      out.listen = std::move(*listen);
    }
  }
  // Pairs of keys that make sense only together.
  auto pair = [&](std::string_view a, bool has_a, std::string_view b, bool has_b) {
    if (has_a && !has_b) r.Invalid(a, "needs '" + std::string(b) + "' too");
  };
  if (auto cert = ReadPath(r, "tls_cert_file", config_path)) out.tls_cert_file = std::move(*cert);
  if (auto key = ReadPath(r, "tls_key_file", config_path)) out.tls_key_file = std::move(*key);
  pair("tls_cert_file", r.Get("tls_cert_file") != nullptr, "tls_key_file", r.Get("tls_key_file") != nullptr);
  pair("tls_key_file", r.Get("tls_key_file") != nullptr, "tls_cert_file", r.Get("tls_cert_file") != nullptr);
  if (auto user = r.String("basic_auth_user")) {
    if (user->empty() || user->find(':') != std::string::npos) {
      r.MustBe("basic_auth_user", "a user name without ':'");
    } else {
      out.basic_auth_user = std::move(*user);
    }
  }
  if (auto secret = ReadSecretFile(r, "basic_auth_password_file", config_path)) {
    out.basic_auth_password_file = std::move(secret->path);
    out.basic_auth_password = std::move(secret->content);
  }
  pair("basic_auth_user", r.Get("basic_auth_user") != nullptr, "basic_auth_password_file",
       r.Get("basic_auth_password_file") != nullptr);
  pair("basic_auth_password_file", r.Get("basic_auth_password_file") != nullptr, "basic_auth_user",
       r.Get("basic_auth_user") != nullptr);
  if (auto health = r.Boolean("basic_auth_health")) out.basic_auth_health = *health;
  if (r.Get("listen") == nullptr) {
    for (std::string_view key : kHttpKeys) {
      if (key != "listen" && r.Get(key) != nullptr) r.Invalid(key, "has no effect without 'listen'");
    }
  }
}

void ReadLog(const toml::table& table, Diagnostics& diag, LogConfig& out) {
  static constexpr std::array<std::string_view, 5> kLevels = {"trace", "debug", "info", "warn", "error"};
  static constexpr std::array<std::string_view, 2> kFormats = {"text", "json"};
  SectionReader r(table, "[log]", kLogKeys, /*substitute_env=*/true, diag);
  if (auto level = r.OneOf("level", kLevels)) out.level = std::move(*level);
  if (auto format = r.OneOf("format", kFormats)) out.format = *format == "json" ? LogFormat::kJson : LogFormat::kText;
}

// What the cross-block checks need to know about one [[outbox]] block.
struct OutboxIdentity {
  std::size_t number = 0;                // N of "[[outbox]] #N"
  std::string location;                  // "FILE:LINE:COLUMN" of the block
  std::vector<std::string> table_parts;  // empty when the table name was invalid
  const toml::node* table_node = nullptr;
  const toml::node* cdc_source = nullptr;  // the 'source' value when it is "cdc"
};

// A table of NAME = "column" (headers, extension attributes), in the order
// the file gives them (toml++ keeps keys sorted). `what` names an entry in
// messages ("header"); `refuse(name, where)` says why a name is refused, as
// a whole message, or "".
std::vector<std::pair<std::string, std::string>> ReadColumnMap(
    const toml::table& table, Diagnostics& diag, std::string_view what, const std::string& scope,
    const std::function<std::string(std::string_view name, const std::string& where)>& refuse) {
  struct Entry {
    toml::source_position pos;
    std::string name;
    std::string column;
  };
  std::vector<Entry> entries;
  for (auto&& [key, value] : table) {
    const std::string where = std::string(what) + " '" + std::string(key.str()) + "' in " + scope;
    if (std::string problem = refuse(key.str(), where); !problem.empty()) {
      diag.Error(key, problem);
      continue;
    }
    const auto* column = value.as_string();
    if (column == nullptr) {
      diag.Error(value, where + " must be a column name string, got " + std::string(TypeName(value)));
      continue;
    }
    if (column->get().empty() || column->get().size() > kMaxIdentifierBytes) {
      diag.Error(value, where + " must be a column name of 1 to 63 bytes");
      continue;
    }
    entries.push_back({key.source().begin, std::string(key.str()), column->get()});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.pos.line, a.pos.column) < std::tie(b.pos.line, b.pos.column);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(entries.size());
  for (Entry& e : entries) out.emplace_back(std::move(e.name), std::move(e.column));
  return out;
}

void ReadHeaders(const SectionReader& r, OutboxTableConfig& out) {
  const toml::node* node = r.Get("headers");
  if (node == nullptr) return;
  const toml::table* headers = node->as_table();
  if (headers == nullptr) {
    r.WrongType("headers", *node, "a table of header name = \"column\"");
    return;
  }
  out.headers =
      ReadColumnMap(*headers, r.diag(), "header", r.scope(), [&](std::string_view name, const std::string& where) {
        if (name.empty()) return "empty header name in " + r.scope();
        if (name == "id") return where + ": the 'id' header always carries the event id; choose its column with 'id'";
        return std::string();
      });
}

// The keys that say how a polled table is claimed and cleaned up.
void ReadPollKeys(const SectionReader& r, OutboxTableConfig& out) {
  static constexpr std::array<std::string_view, 2> kAfterDelivery = {"delete", "mark"};
  if (auto v = r.Column("order_by")) out.order_by = std::move(*v);

  std::optional<std::string> after = r.OneOf("after_delivery", kAfterDelivery);
  if (after) out.after_delivery = *after == "mark" ? AfterDelivery::kMark : AfterDelivery::kDelete;
  std::optional<std::string> sent_column = r.Column("sent_column");
  if (sent_column) out.sent_column = std::move(sent_column);
  // Judge the pair only when after_delivery itself was valid (or defaulted).
  if (after || r.Get("after_delivery") == nullptr) {
    bool mark = out.after_delivery == AfterDelivery::kMark;
    if (mark && r.Get("sent_column") == nullptr) {
      r.Invalid("after_delivery", "\"mark\" needs 'sent_column', the column to set when a row is delivered");
    } else if (!mark && r.Get("sent_column") != nullptr) {
      r.Invalid("sent_column",
                "only used with after_delivery = \"mark\" (with \"delete\", delivered rows are deleted)");
    }
  }

  if (auto n = r.Integer("batch_size")) {
    if (*n < 1 || *n > kMaxBatchSize) {
      r.MustBe("batch_size", "between 1 and " + std::to_string(kMaxBatchSize) + ", got " + std::to_string(*n));
    } else {
      out.batch_size = static_cast<std::size_t>(*n);
    }
  }
  if (auto d = r.Duration("poll_interval")) {
    if (d->count() <= 0) {
      r.MustBe("poll_interval", "greater than zero");
    } else {
      out.poll_interval = *d;
    }
  }
  if (auto channel = r.String("notify_channel")) {
    if (channel->empty() || channel->size() > kMaxIdentifierBytes) {
      r.MustBe("notify_channel", "a channel name of 1 to 63 bytes");
    } else {
      out.notify_channel = std::move(*channel);
    }
  }
}

// A plain Kafka topic name for events that can never be delivered.
void ReadDeadLetterTopic(const SectionReader& r, std::optional<std::string>& out) {
  if (auto topic = r.String("dead_letter_topic")) {
    std::string problem = CheckTopicName(*topic);
    if (!problem.empty()) {
      r.Invalid("dead_letter_topic", "not a valid Kafka topic name: " + problem);
    } else {
      out = std::move(*topic);
    }
  }
}

// A topic template: literal topic characters and ${column} placeholders.
void ReadTopicTemplate(const SectionReader& r, std::string_view key, std::string& out) {
  if (auto topic = r.String(key)) {
    std::string problem = CheckTopicTemplate(*topic);
    if (!problem.empty()) {
      r.Invalid(key, "not a valid topic template: " + problem);
    } else {
      out = std::move(*topic);
    }
  }
}

// The format key of [[outbox]] or [cdc], and its "cloudevents" sub-table
// (nullptr when absent or refused; the refusal is reported).
const toml::table* ReadFormat(const SectionReader& r, std::string_view subtable, EventFormat& format) {
  static constexpr std::array<std::string_view, 3> kFormats = {"debezium", "cloudevents-binary",
                                                               "cloudevents-structured"};
  if (auto name = r.OneOf("format", kFormats)) {
    format = *name == "cloudevents-binary"       ? EventFormat::kCloudEventsBinary
             : *name == "cloudevents-structured" ? EventFormat::kCloudEventsStructured
                                                 : EventFormat::kDebezium;
  }
  const toml::node* node = r.Get("cloudevents");
  if (node == nullptr) return nullptr;
  const toml::table* table = node->as_table();
  if (table == nullptr) {
    r.WrongType("cloudevents", *node, "a table of CloudEvents attributes (" + std::string(subtable) + ")");
    return nullptr;
  }
  if (format == EventFormat::kDebezium) {
    r.Invalid("cloudevents",
              "has no effect with format = \"debezium\" (set format = \"cloudevents-binary\" or "
              "\"cloudevents-structured\")");
    return nullptr;
  }
  return table;
}

// A CloudEvents source key, checked.
std::optional<std::string> ReadSource(const SectionReader& c) {
  auto source = c.String("source");
  if (!source) return std::nullopt;
  if (std::string problem = CheckSourceUri(*source); !problem.empty()) {
    c.MustBe("source", "a URI-reference, such as \"/orders-service\": " + problem);
    return std::nullopt;
  }
  return source;
}

// format and [outbox.cloudevents] of an [[outbox]] block.
void ReadEventFormat(const SectionReader& r, OutboxTableConfig& out) {
  CloudEventsConfig& ce = out.cloudevents;
  ce.source = DefaultSource(QualifiedTableName(out.table));
  ce.subject = out.key;
  const toml::table* table = ReadFormat(r, "[outbox.cloudevents]", out.format);
  if (table == nullptr) return;
  SectionReader c(*table, "[outbox.cloudevents] of " + r.scope(), kCloudEventsKeys, /*substitute_env=*/false, r.diag());
  if (auto source = ReadSource(c)) ce.source = std::move(*source);
  if (auto type = c.Column("type")) ce.type = std::move(*type);
  if (const toml::node* subject = c.Get("subject"); subject != nullptr) {
    if (subject->is_string() && subject->as_string()->get().empty()) {
      ce.subject.reset();  // "" means: no subject
    } else if (auto column = c.Column("subject")) {
      ce.subject = std::move(*column);
    }
  }
  if (auto type = c.String("datacontenttype")) {
    if (type->empty() || type->find('/') == std::string::npos) {
      c.MustBe("datacontenttype", "a media type such as \"application/json\"");
    } else {
      ce.datacontenttype = std::move(*type);
    }
  }
  const toml::node* extensions = c.Get("extensions");
  if (extensions == nullptr) return;
  const toml::table* list = extensions->as_table();
  if (list == nullptr) {
    c.WrongType("extensions", *extensions, "a table of attribute name = \"column\"");
    return;
  }
  ce.extensions = ReadColumnMap(
      *list, c.diag(), "extension attribute", c.scope(), [](std::string_view name, const std::string& where) {
        if (std::string problem = CheckExtensionName(name); !problem.empty()) {
          return where + ": " + problem;
        }
        if (name == "traceparent" || name == "tracestate") {
          return where + ": set the [[outbox]] key '" + std::string(name) + "' instead, which also checks the value";
        }
        return std::string();
      });
}

OutboxIdentity ReadOutbox(const toml::table& table, std::size_t number, Diagnostics& diag, OutboxTableConfig& out) {
  static constexpr std::array<std::string_view, 2> kSources = {"poll", "cdc"};
  SectionReader r(table, "[[outbox]] #" + std::to_string(number), kOutboxKeys, /*substitute_env=*/false, diag);
  OutboxIdentity identity;
  identity.number = number;
  out.config_location = diag.Location(table.source().begin);
  identity.location = out.config_location;

  if (auto name = r.RequiredString("table")) {
    std::vector<std::string> parts;
    std::string problem = CheckTableName(*name, parts);
    if (!problem.empty()) {
      r.MustBe("table", "\"schema.table\" or \"table\": " + problem);
    } else {
      out.table = std::move(*name);
      identity.table_parts = std::move(parts);
      identity.table_node = r.Get("table");
    }
  }
  if (auto source = r.OneOf("source", kSources); source && *source == "cdc") {
    out.source = OutboxSource::kCdc;
    identity.cdc_source = r.Get("source");
  }
  if (out.source == OutboxSource::kCdc) {
    // Inserts arrive through the slot: there is nothing to claim, order,
    // delete, mark or wait for, so these keys would be silently ignored.
    for (auto&& [key, value] : table) {
      if (std::find(kPollOnlyKeys.begin(), kPollOnlyKeys.end(), key.str()) == kPollOnlyKeys.end()) continue;
      diag.Error(key, "'" + std::string(key.str()) + "' in " + r.scope() +
                          " is a poll-mode key; not allowed with source = \"cdc\"");
    }
  } else {
    ReadPollKeys(r, out);
  }

  if (auto v = r.Column("id")) out.id = std::move(*v);
  if (const toml::node* key = r.Get("key"); key != nullptr) {
    if (key->is_string() && key->as_string()->get().empty()) {
      out.key.reset();  // "" means: records have no key
    } else if (auto column = r.Column("key")) {
      out.key = std::move(*column);
    }
  }
  if (auto v = r.Column("payload")) out.payload = std::move(*v);
  ReadTopicTemplate(r, "topic", out.topic);
  ReadHeaders(r, out);
  if (auto v = r.Column("timestamp")) out.timestamp = std::move(*v);
  ReadDeadLetterTopic(r, out.dead_letter_topic);
  if (auto v = r.Column("traceparent")) out.traceparent = std::move(*v);
  if (auto v = r.Column("tracestate")) {
    if (!out.traceparent) {
      r.Invalid("tracestate", "needs 'traceparent' too (a tracestate means nothing without it)");
    } else {
      out.tracestate = std::move(*v);
    }
  }
  ReadEventFormat(r, out);
  return identity;
}

// Reads every [[outbox]] block; `identities` gets one entry per block read,
// parallel to `out`. Without a [cdc] section at least one block is required.
void ReadOutboxes(const toml::table& root, bool has_cdc, Diagnostics& diag, std::vector<OutboxTableConfig>& out,
                  std::vector<OutboxIdentity>& identities) {
  const toml::node* node = root.get("outbox");
  if (node == nullptr) {
    if (!has_cdc) {
      diag.ErrorInFile(
          "missing required section [[outbox]] or [cdc]: configure at least one outbox table, "
          "or what to capture through a replication slot");
    }
    return;
  }
  const toml::array* blocks = node->as_array();
  if (blocks == nullptr) {
    diag.Error(*node, "'outbox' must be an array of tables ([[outbox]]), got " + std::string(TypeName(*node)));
    return;
  }
  if (blocks->empty() && !has_cdc) {
    diag.Error(*node, "'outbox' must list at least one outbox table");
    return;
  }
  std::map<std::vector<std::string>, const OutboxIdentity*> seen;
  identities.reserve(blocks->size());  // `seen` points into it
  for (std::size_t i = 0; i < blocks->size(); ++i) {
    std::size_t number = i + 1;
    const toml::node& element = *blocks->get(i);
    const toml::table* block = element.as_table();
    if (block == nullptr) {
      diag.Error(element,
                 "[[outbox]] #" + std::to_string(number) + " must be a table, got " + std::string(TypeName(element)));
      continue;
    }
    OutboxTableConfig config;
    const OutboxIdentity& identity = identities.emplace_back(ReadOutbox(*block, number, diag, config));
    if (identity.table_node != nullptr) {
      auto [it, inserted] = seen.emplace(identity.table_parts, &identity);
      if (!inserted) {
        const OutboxIdentity& first = *it->second;
        diag.Error(*identity.table_node, "'table' in [[outbox]] #" + std::to_string(number) + ": " +
                                             Quoted(config.table) + " is already configured by [[outbox]] #" +
                                             std::to_string(first.number) + " at " + first.location);
      }
    }
    out.push_back(std::move(config));
  }
}

// What the cross-section checks need to know about the [cdc] section.
struct CdcIdentity {
  const toml::table* section = nullptr;
  bool names_message_prefix = false;  // 'message_prefix' is given (valid or not)
  bool names_tables = false;          // 'tables' is given and not an empty array
  struct Table {
    QualifiedName name;
    std::string text;  // as written
    const toml::node* node;
  };
  std::vector<Table> tables;  // the valid entries of 'tables'
  // The state table, default or given; nullopt when the given name was invalid.
  std::optional<QualifiedName> state_table = QualifiedName{"public", "outboxd_slot_state"};
  const toml::node* state_table_node = nullptr;                // nullptr: the default
  std::string state_table_text = "public.outboxd_slot_state";  // as written
};

void ReadCdcTables(const SectionReader& r, CdcConfig& out, CdcIdentity& identity) {
  const toml::node* node = r.Get("tables");
  if (node == nullptr) return;
  const toml::array* tables = node->as_array();
  identity.names_tables = tables == nullptr || !tables->empty();
  if (tables == nullptr) {
    r.WrongType("tables", *node, "an array of table names, such as [\"public.orders\"]");
    return;
  }
  std::map<QualifiedName, const CdcIdentity::Table*> seen;
  identity.tables.reserve(tables->size());  // `seen` points into it
  for (std::size_t i = 0; i < tables->size(); ++i) {
    const toml::node& element = *tables->get(i);
    std::string what = "'tables' in " + r.scope() + ": element " + std::to_string(i + 1);
    const auto* text = element.as_string();
    if (text == nullptr) {
      r.diag().Error(element, what + " must be a table name string, got " + std::string(TypeName(element)));
      continue;
    }
    std::vector<std::string> parts;
    std::string problem = CheckTableName(text->get(), parts);
    if (!problem.empty()) {
      r.diag().Error(element, what + " must be \"schema.table\" or \"table\": " + problem);
      continue;
    }
    const CdcIdentity::Table& table =
        identity.tables.emplace_back(CdcIdentity::Table{CdcTableIdentity(parts), text->get(), &element});
    auto [it, inserted] = seen.emplace(table.name, &table);
    if (!inserted) {
      const CdcIdentity::Table& first = *it->second;
      r.diag().Error(element, "'tables' in " + r.scope() + ": " + Quoted(table.text) + " is listed twice (first as " +
                                  Quoted(first.text) + " at " + r.diag().Location(first.node->source().begin) + ")");
      identity.tables.pop_back();
      continue;
    }
    out.tables.push_back(table.text);
  }
}

void ReadCdc(const toml::table& table, Diagnostics& diag, CdcConfig& out, CdcIdentity& identity) {
  static constexpr std::array<std::string_view, 2> kSnapshots = {"never", "initial"};
  // Not substituted: message_topic holds ${column} placeholders, as in [[outbox]].
  SectionReader r(table, "[cdc]", kCdcKeys, /*substitute_env=*/false, diag);
  identity.section = &table;
  out.config_location = diag.Location(table.source().begin);

  if (auto slot = r.String("slot")) {
    std::string problem = CheckSlotName(*slot);
    if (!problem.empty()) {
      r.Invalid("slot", "not a valid replication slot name: " + problem);
    } else {
      out.slot = std::move(*slot);
    }
  }
  if (auto publication = r.String("publication")) {
    if (publication->empty() || publication->size() > kMaxIdentifierBytes) {
      r.MustBe("publication", "a publication name of 1 to 63 bytes");
    } else {
      out.publication = std::move(*publication);
    }
  }
  if (auto create = r.Boolean("create")) out.create = *create;
  identity.names_message_prefix = r.Get("message_prefix") != nullptr;
  if (auto prefix = r.String("message_prefix")) {
    if (prefix->empty()) {
      r.MustBe("message_prefix", "the prefix given to pg_logical_emit_message, got \"\"");
    } else {
      out.message_prefix = std::move(*prefix);
    }
  }
  ReadTopicTemplate(r, "message_topic", out.message_topic);
  ReadDeadLetterTopic(r, out.dead_letter_topic);
  ReadCdcTables(r, out, identity);
  if (auto prefix = r.String("topic_prefix")) {
    std::string problem = CheckTopicPrefix(*prefix);
    if (!problem.empty()) {
      r.Invalid("topic_prefix", "not a valid topic prefix: " + problem);
    } else {
      out.topic_prefix = std::move(*prefix);
    }
  }
  if (auto snapshot = r.OneOf("snapshot", kSnapshots)) {
    out.snapshot = *snapshot == "initial" ? SnapshotMode::kInitial : SnapshotMode::kNever;
  }
  if (auto d = r.Duration("status_interval")) {
    // The server drops a walsender that stays silent for wal_sender_timeout;
    // an interval beyond an hour is a mistake, not a choice.
    if (d->count() <= 0 || *d > kMaxStatusInterval) {
      r.MustBe("status_interval", "greater than zero and at most \"1h\"");
    } else {
      out.status_interval = *d;
    }
  }
  if (auto d = r.Duration("confirm_interval")) {
    if (d->count() <= 0 || *d > out.status_interval) {
      r.MustBe("confirm_interval", "greater than zero and at most status_interval");
    } else {
      out.confirm_interval = *d;
    }
  }
  if (auto n = r.Integer("confirm_events")) {
    if (*n < 1) {
      r.MustBe("confirm_events", "a positive integer, got " + std::to_string(*n));
    } else {
      out.confirm_events = *n;
    }
  }
  if (const toml::table* ce = ReadFormat(r, "[cdc.cloudevents]", out.format)) {
    SectionReader c(*ce, "[cdc.cloudevents]", kCdcCloudEventsKeys, /*substitute_env=*/false, diag);
    out.cloudevents_source = ReadSource(c);
  }
  if (r.Get("state_table") != nullptr) identity.state_table.reset();
  if (auto name = r.String("state_table")) {
    std::vector<std::string> parts;
    std::string problem = CheckTableName(*name, parts);
    if (!problem.empty()) {
      r.MustBe("state_table", "\"schema.table\" or \"table\": " + problem);
    } else {
      out.state_table = std::move(*name);
      identity.state_table = CdcTableIdentity(parts);
      identity.state_table_text = out.state_table;
      identity.state_table_node = r.Get("state_table");
    }
  }
}

// The checks that involve both [cdc] and [[outbox]] blocks. `has_cdc`: the
// file has a 'cdc' key, even one that is not a table (already reported).
// What exactly-once delivery does not cover yet is refused at the 'delivery'
// key rather than silently delivered at least once.
void CheckDelivery(const toml::table& kafka, const KafkaConfig& config, const CdcIdentity* cdc, Diagnostics& diag) {
  if (config.delivery != Delivery::kExactlyOnce) return;
  const toml::node& at = *kafka.get("delivery");
  if (cdc != nullptr) {
    if (const toml::node* snapshot = cdc->section->get("snapshot");
        snapshot != nullptr && snapshot->value_or(std::string_view()) == "initial") {
      diag.Error(at,
                 "'delivery' in [kafka]: \"exactly-once\" does not cover [cdc] snapshot = \"initial\" yet; "
                 "take the snapshot with \"at-least-once\" first");
    }
  }
}

void CheckCdcCapture(bool has_cdc, const CdcIdentity* cdc, const std::vector<OutboxIdentity>& outboxes,
                     Diagnostics& diag) {
  bool any_cdc_outbox = false;
  for (const OutboxIdentity& o : outboxes) {
    if (o.cdc_source == nullptr) continue;
    any_cdc_outbox = true;
    if (!has_cdc) {
      diag.Error(*o.cdc_source, "'source' in [[outbox]] #" + std::to_string(o.number) +
                                    ": source = \"cdc\" needs a [cdc] section (the replication slot to "
                                    "capture through)");
    }
  }
  if (cdc == nullptr) return;

  if (!any_cdc_outbox && !cdc->names_tables && !cdc->names_message_prefix) {
    diag.Error(*cdc->section,
               "[cdc] captures nothing: set 'message_prefix', list 'tables', or give an [[outbox]] block "
               "source = \"cdc\"");
  }

  // An outbox table whose inserts were also streamed as row changes would be
  // published twice, in two shapes.
  std::map<QualifiedName, const OutboxIdentity*> outbox_tables;
  for (const OutboxIdentity& o : outboxes) {
    if (o.table_node != nullptr) outbox_tables.emplace(CdcTableIdentity(o.table_parts), &o);
  }
  auto outbox_block = [&](const OutboxIdentity& o) {
    return "[[outbox]] #" + std::to_string(o.number) + " at " + o.location;
  };
  for (const CdcIdentity::Table& t : cdc->tables) {
    if (auto it = outbox_tables.find(t.name); it != outbox_tables.end()) {
      diag.Error(*t.node, "'tables' in [cdc]: " + Quoted(t.text) + " is the outbox table of " +
                              outbox_block(*it->second) +
                              "; an outbox table is relayed as outbox events, not also as row changes");
    }
  }
  // outboxd writes the state table as it confirms positions; capturing it
  // would feed its own writes back into the stream.
  if (cdc->state_table) {
    // Reported at the key, or at the section header for the default.
    const toml::node& at = cdc->state_table_node != nullptr ? *cdc->state_table_node : *cdc->section;
    std::string what =
        "'state_table' in [cdc]: outboxd's own table " + Quoted(cdc->state_table_text) + " cannot also be ";
    for (const CdcIdentity::Table& t : cdc->tables) {
      if (t.name == *cdc->state_table) {
        diag.Error(at, what + "captured (it is in 'tables' at " + diag.Location(t.node->source().begin) + ")");
      }
    }
    if (auto it = outbox_tables.find(*cdc->state_table); it != outbox_tables.end()) {
      diag.Error(at, what + "an outbox table (" + outbox_block(*it->second) + ")");
    }
  }
}

// Looks up a section that must be a table; reports a wrong type, and a
// missing section when it is required.
const toml::table* Section(const toml::table& root, std::string_view name, bool required, Diagnostics& diag) {
  const toml::node* node = root.get(name);
  if (node == nullptr) {
    if (required) diag.ErrorInFile("missing required section [" + std::string(name) + "]");
    return nullptr;
  }
  const toml::table* table = node->as_table();
  if (table == nullptr) {
    diag.Error(*node, "'" + std::string(name) + "' must be a table ([" + std::string(name) + "]), got " +
                          std::string(TypeName(*node)));
  }
  return table;
}

void RejectUnknownSections(const toml::table& root, Diagnostics& diag) {
  struct Home {
    std::string_view section;
    std::span<const std::string_view> keys;
  };
  // A key of two sections (dead_letter_topic) is sent to the last one.
  const std::array<Home, 6> homes = {Home{"postgres", kPostgresKeys}, Home{"kafka", kKafkaKeys},
                                     Home{"http", kHttpKeys},         Home{"log", kLogKeys},
                                     Home{"cdc", kCdcKeys},           Home{"outbox", kOutboxKeys}};
  auto header = [](std::string_view name) { return name == "outbox" ? "[[outbox]]" : "[" + std::string(name) + "]"; };
  for (auto&& [key, node] : root) {
    std::string_view name = key.str();
    if (std::find(kSections.begin(), kSections.end(), name) != kSections.end()) continue;
    std::optional<std::string_view> guess = Closest(name, kSections);
    if (node.is_table() || node.is_array_of_tables()) {
      std::string message =
          "unknown section " + (node.is_table() ? "[" + std::string(name) + "]" : "[[" + std::string(name) + "]]");
      if (guess) message += " (did you mean " + header(*guess) + "?)";
      diag.Error(key, message);
      continue;
    }
    std::string message = "unknown top-level key '" + std::string(name) + "'";
    const Home* home = nullptr;
    for (const Home& h : homes) {
      if (std::find(h.keys.begin(), h.keys.end(), name) != h.keys.end()) home = &h;
    }
    if (home != nullptr) {
      message += " (it belongs in " + header(home->section) + ", after the section header)";
    } else if (guess) {
      message += " (did you mean " + header(*guess) + "?)";
    }
    diag.Error(key, message);
  }
}

Result<Config> Load(const std::string& path) {
  Result<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return Status::InvalidConfig("cannot read config file " + path + ": " + text.status().message());

  toml::table root;
  try {
    root = toml::parse(std::string_view(*text), std::string_view(path));
  } catch (const toml::parse_error& e) {
    const toml::source_position& pos = e.source().begin;
    return Status::InvalidConfig(path + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": " +
                                 std::string(e.description()));
  }

  Diagnostics diag(path);
  Config config;
  config.path = path;
  RejectUnknownSections(root, diag);
  if (const toml::table* t = Section(root, "postgres", /*required=*/true, diag)) {
    ReadPostgres(*t, path, diag, config.postgres);
  }
  if (const toml::table* t = Section(root, "kafka", /*required=*/true, diag)) ReadKafka(*t, path, diag, config.kafka);
  if (const toml::table* t = Section(root, "http", /*required=*/false, diag)) ReadHttp(*t, path, diag, config.http);
  if (const toml::table* t = Section(root, "log", /*required=*/false, diag)) ReadLog(*t, diag, config.log);
  bool has_cdc = root.get("cdc") != nullptr;
  std::optional<CdcIdentity> cdc;
  if (const toml::table* t = Section(root, "cdc", /*required=*/false, diag)) {
    ReadCdc(*t, diag, config.cdc.emplace(), cdc.emplace());
  }
  std::vector<OutboxIdentity> outboxes;
  ReadOutboxes(root, has_cdc, diag, config.outboxes, outboxes);
  CheckCdcCapture(has_cdc, cdc ? &*cdc : nullptr, outboxes, diag);
  if (const toml::table* t = root.get_as<toml::table>("kafka")) {
    CheckDelivery(*t, config.kafka, cdc ? &*cdc : nullptr, diag);
  }
  if (diag.HasErrors()) return diag.ToStatus();
  return config;
}

}  // namespace

std::string QualifiedTableName(const std::string& table) {
  return table.find('.') == std::string::npos ? std::string(kDefaultSchema) + "." + table : table;
}

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return Status::InvalidConfig("invalid duration " + Quoted(text) + ": " + std::string(why));
  };
  constexpr std::string_view kExpected =
      "expected a number followed by a unit (ms, s, m or h), such as \"250ms\" or \"10s\"";

  std::size_t i = 0;
  std::int64_t whole = 0;
  while (i < text.size() && IsAsciiDigit(text[i])) {
    if (__builtin_mul_overflow(whole, 10, &whole) || __builtin_add_overflow(whole, text[i] - '0', &whole)) {
      return invalid("too large");
    }
    ++i;
  }
  if (i == 0) return invalid(kExpected);

  std::int64_t fraction = 0;
  std::int64_t scale = 1;
  if (i < text.size() && text[i] == '.') {
    std::size_t start = ++i;
    while (i < text.size() && IsAsciiDigit(text[i])) {
      if (i - start == 9) return invalid("too many decimal places");
      fraction = fraction * 10 + (text[i] - '0');
      scale *= 10;
      ++i;
    }
    if (i == start) return invalid(kExpected);
  }

  std::string_view unit = text.substr(i);
  std::int64_t factor = 0;
  if (unit == "ms") {
    factor = 1;
  } else if (unit == "s") {
    factor = 1000;
  } else if (unit == "m") {
    factor = std::int64_t{60} * 1000;
  } else if (unit == "h") {
    factor = std::int64_t{60} * 60 * 1000;
  } else {
    return invalid(kExpected);
  }

  // fraction < 1e9 and factor <= 3.6e6, so the product fits.
  std::int64_t fraction_ms = fraction * factor;
  if (fraction_ms % scale != 0) return invalid("not a whole number of milliseconds");
  std::int64_t ms = 0;
  if (__builtin_mul_overflow(whole, factor, &ms) || __builtin_add_overflow(ms, fraction_ms / scale, &ms)) {
    return invalid("too large");
  }
  return milliseconds(ms);
}

Result<Config> LoadConfig(const std::string& path) {
  // toml++ and the standard library may throw (std::bad_alloc, filesystem
  // errors); nothing may escape to the caller.
  try {
    return Load(path);
  } catch (const std::exception& e) {
    return Status::Internal("could not load config file " + path + ": " + e.what());
  }
}

}  // namespace outboxd
