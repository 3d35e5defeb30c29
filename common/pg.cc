#include "common/pg.h"

#include <cstring>

#include "common/logging.h"

namespace outboxd {

namespace {

std::string TrimTrailingNewlines(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Server notices ("relation ... already exists, skipping") go to the log at
// debug level instead of libpq's default, stderr.
void LogNotice(void* /*arg*/, const char* message) { Logger("postgres")->debug("{}", TrimTrailingNewlines(message)); }

}  // namespace

Result<PgConn> PgConn::Connect(const std::string& conninfo, const std::optional<std::string>& password,
                               const std::string& application_name) {
  // expand_dbname=1 lets `conninfo` be a full conninfo string or URI, while the
  // later keywords fill in what it leaves out.
  std::vector<const char*> keys = {"dbname", "fallback_application_name", "connect_timeout"};
  std::vector<const char*> values = {conninfo.c_str(), application_name.c_str(), "10"};
  if (password) {
    keys.push_back("password");
    values.push_back(password->c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  PgConn conn(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1));
  if (!conn.conn_) return Status::Retriable("could not connect to PostgreSQL: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) return ClassifyConnectError(conn.get(), "could not connect to PostgreSQL");
  PQsetNoticeProcessor(conn.get(), LogNotice, nullptr);
  return conn;
}

Result<PgResult> PgConn::Exec(const std::string& sql, const std::vector<std::optional<std::string>>& params) const {
  if (!conn_) return Status::Retriable("not connected to PostgreSQL");
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  PgResult res(PQexecParams(conn_.get(), sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                            nullptr, /*resultFormat=*/0));
  const ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return res;
  return ClassifyPgError(conn_.get(), res.get(), "query failed");
}

std::string PgConn::QuoteIdentifier(std::string_view ident) const {
  std::string s(ident);
  if (!conn_) return QuoteIdentifierStandard(ident);
  char* q = PQescapeIdentifier(conn_.get(), s.data(), s.size());
  std::string out = q ? q : "";
  PQfreemem(q);
  return out;
}

Status ClassifyPgError(const PGconn* conn, const PGresult* res, std::string_view what) {
  std::string detail;
  const char* sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  if (res && PQresultErrorMessage(res)[0] != '\0') {
    detail = TrimTrailingNewlines(PQresultErrorMessage(res));
  } else if (conn) {
    detail = TrimTrailingNewlines(PQerrorMessage(conn));
  }
  std::string msg = std::string(what) + ": " + detail;
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK || sqlstate == nullptr) {
    return Status::Retriable(std::move(msg));
  }
  const std::string_view code(sqlstate);
  const std::string_view cls = code.substr(0, 2);
  // Class 08: connection exception; 57: operator intervention (shutdown,
  // pg_terminate_backend); 53: insufficient resources; 40: serialization or
  // deadlock; 55P03: lock not available.
  if (cls == "08" || cls == "57" || cls == "53" || cls == "40" || code == "55P03") {
    return Status::Retriable(std::move(msg));
  }
  // 42P01 undefined_table, 42703 undefined_column, 3F000 invalid_schema_name,
  // 42501 insufficient_privilege: the configuration does not match the database.
  if (code == "42P01" || code == "42703" || code == "3F000" || code == "42501") {
    return Status::InvalidConfig(std::move(msg));
  }
  return Status::Internal(std::move(msg));
}

namespace {

// What libpq (15) says when a connection fails for a reason waiting cannot
// mend, and what to check. Server messages are matched as the server sends
// them in English (lc_messages = C).
struct ConnectCause {
  std::string_view says;
  std::string_view check;
};
constexpr ConnectCause kConfigCauses[] = {
    {"password authentication failed", "the password: password_file, the conninfo's password or PGPASSWORD"},
    {"pg_hba.conf rejects connection", "the server's pg_hba.conf: it refuses this user, database, host or sslmode"},
    {"no pg_hba.conf entry", "the server's pg_hba.conf: it has no rule for this user, database, host or sslmode"},
    {"does not match host name", "the conninfo's host: the server's certificate is for another name"},
    {"certificate verify failed",
     "sslrootcert: it does not hold the CA that signed the server's certificate, or that certificate has expired"},
    {"alert certificate expired", "sslcert: the server refused the client certificate, it has expired"},
    {"alert unknown ca", "sslcert: the server does not trust the CA that signed the client certificate"},
    {"alert bad certificate", "sslcert: the server refused the client certificate"},
    {"requires a valid client certificate", "sslcert and sslkey: the server requires a client certificate"},
    {"certificate authentication failed", "sslcert: its common name (CN) must be the user name"},
    {"server does not support SSL", "sslmode: it requires TLS, and the server has ssl = off"},
    {"root certificate file", "sslrootcert: the file cannot be read"},
    {"could not open certificate file", "sslcert: the file cannot be read"},
    {"could not load private key file", "sslkey: the file cannot be read"},
    {"private key file", "sslkey: the file's permissions or contents"},
    {"does not exist", "the conninfo's user and dbname"},
};

}  // namespace

Status ClassifyConnectError(const PGconn* conn, std::string_view what) {
  std::string message = std::string(what) + ": " +
                        (conn != nullptr ? TrimTrailingNewlines(PQerrorMessage(conn)) : std::string("out of memory"));
  for (const ConnectCause& cause : kConfigCauses) {
    if (message.find(cause.says) != std::string::npos) {
      return Status::InvalidConfig(message + " (check " + std::string(cause.check) + ")");
    }
  }
  return Status::Retriable(std::move(message));
}

namespace {
std::string QuoteDoubling(std::string_view s, char quote) {
  std::string out(1, quote);
  for (char c : s) {
    if (c == quote) out += quote;
    out += c;
  }
  out += quote;
  return out;
}
}  // namespace

std::string QuoteIdentifierStandard(std::string_view ident) { return QuoteDoubling(ident, '"'); }
std::string QuoteLiteralStandard(std::string_view literal) { return QuoteDoubling(literal, '\''); }

std::string PgInt64Array(const std::vector<long long>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(values[i]);
  }
  out += '}';
  return out;
}

}  // namespace outboxd
