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
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return Status::Retriable("could not connect to PostgreSQL: " + TrimTrailingNewlines(PQerrorMessage(conn.get())));
  }
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
