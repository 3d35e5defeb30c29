#pragma once
// RAII owners for libpq handles (PGconn, PGresult) and the few calls outboxd
// makes through them, returning Status/Result instead of raw libpq state.
//
// A PgConn owns one connection; it is movable, not copyable, and not
// thread-safe (libpq connections must be used by one thread at a time).
// Errors are classified once, in ClassifyPgError(): a lost connection or a
// server shutting down is retriable; a missing table or column is a
// configuration error; everything else the server rejects is internal.
// A connection that fails is classified by ClassifyConnectError().

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace outboxd {

struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

class PgConn {
 public:
  PgConn() = default;
  explicit PgConn(PGconn* conn) : conn_(conn) {}
  PgConn(PgConn&&) noexcept = default;
  PgConn& operator=(PgConn&&) noexcept = default;
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  // Connects with a conninfo string or URI; `password`, if set, is passed as
  // the password parameter (it never appears in logs).
  [[nodiscard]] static Result<PgConn> Connect(const std::string& conninfo, const std::optional<std::string>& password,
                                              const std::string& application_name);

  PGconn* get() const { return conn_.get(); }
  explicit operator bool() const { return conn_ != nullptr; }
  bool healthy() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }
  int socket() const { return conn_ ? PQsocket(conn_.get()) : -1; }
  void reset() { conn_.reset(); }

  // Runs a statement with text parameters (nullopt = SQL NULL). Fails unless
  // the result is COMMAND_OK or TUPLES_OK.
  [[nodiscard]] Result<PgResult> Exec(const std::string& sql,
                                      const std::vector<std::optional<std::string>>& params = {}) const;

  // Quotes an identifier ("public"."outbox" style) for this connection.
  std::string QuoteIdentifier(std::string_view ident) const;

 private:
  struct ConnDeleter {
    void operator()(PGconn* c) const { PQfinish(c); }
  };
  std::unique_ptr<PGconn, ConnDeleter> conn_;
};

// Maps a failed result (or a dead connection) to a Status whose code says what
// the caller should do; `what` names the action, e.g. "could not claim rows
// from \"public.outbox\"".
Status ClassifyPgError(const PGconn* conn, const PGresult* res, std::string_view what);

// Maps a connection attempt that failed to a Status, `what` first ("could
// not connect to PostgreSQL"). A cause that waiting cannot mend — a wrong
// password, a certificate the other side refuses, a host name the server's
// certificate does not name, pg_hba.conf rejecting the connection, a key
// or certificate file that cannot be read — is kInvalidConfig with libpq's
// message and what to check; anything else (refused, timed out, the server
// starting up) is kRetriable.
Status ClassifyConnectError(const PGconn* conn, std::string_view what);

// Quote without a connection, the standard way: "a""b" and 'it''s'. The
// literal form relies on standard_conforming_strings (on since 9.1) and is
// what replication commands need: their parser knows no E'' strings.
std::string QuoteIdentifierStandard(std::string_view ident);
std::string QuoteLiteralStandard(std::string_view literal);

// Builds a PostgreSQL array literal ("{1,2,3}") from integers.
std::string PgInt64Array(const std::vector<long long>& values);

}  // namespace outboxd
