#include "cdc/replication_stream.h"

#include <chrono>
#include <cstring>
#include <utility>

#include "cdc/pgoutput_decoder.h"

namespace outboxd {

namespace {

constexpr int kNameDataLen = 64;  // PostgreSQL's NAMEDATALEN

std::string Trimmed(const char* s) {
  std::string out = s ? s : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  return out;
}

uint64_t ReadU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void AppendU64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

int64_t PgTimeToUnixMicros(uint64_t pg_us) { return static_cast<int64_t>(pg_us) + kPostgresEpochUnixMicros; }

int64_t NowUnixMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What a server error means for a replication stream. Decided from the
// SQLSTATE in one place (STYLE rule 7).
enum class ServerErrorKind {
  kConnection,   // no SQLSTATE / connection gone / class 08 / class 57 (shutdown, terminate)
  kObjectInUse,  // 55006: slot active for another PID
  kUndefined,    // 42704: slot (at START) or publication (while streaming) does not exist
  kOther,
};

ServerErrorKind KindOf(const PGconn* conn, const PGresult* res) {
  const char* sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK || sqlstate == nullptr) {
    return ServerErrorKind::kConnection;
  }
  const std::string_view code(sqlstate);
  if (code.starts_with("08") || code.starts_with("57")) return ServerErrorKind::kConnection;
  if (code == "55006") return ServerErrorKind::kObjectInUse;
  if (code == "42704") return ServerErrorKind::kUndefined;
  return ServerErrorKind::kOther;
}

std::string ServerMessage(const PGconn* conn, const PGresult* res) {
  if (res && PQresultErrorMessage(res)[0] != '\0') return Trimmed(PQresultErrorMessage(res));
  return Trimmed(conn ? PQerrorMessage(conn) : "not connected");
}

}  // namespace

std::string_view StreamFailureName(StreamFailure f) {
  switch (f) {
    case StreamFailure::kNone:
      return "none";
    case StreamFailure::kConnectionLost:
      return "connection lost";
    case StreamFailure::kEndOfStream:
      return "end of stream";
    case StreamFailure::kSlotHeldByAnotherProcess:
      return "slot held by another process";
    case StreamFailure::kSlotMissing:
      return "slot missing";
    case StreamFailure::kProtocol:
      return "protocol error";
    case StreamFailure::kRejected:
      return "rejected by server";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// Wire format

Status ValidateSlotName(std::string_view slot) {
  if (slot.empty()) return Status::InvalidConfig("replication slot name is empty");
  if (slot.size() >= kNameDataLen) {
    return Status::InvalidConfig("replication slot name \"" + std::string(slot) + "\" is longer than " +
                                 std::to_string(kNameDataLen - 1) + " bytes");
  }
  for (char c : slot) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) {
      return Status::InvalidConfig("replication slot name \"" + std::string(slot) +
                                   "\" may contain only lower-case letters, digits and underscores");
    }
  }
  return Status::Ok();
}

Result<std::string> StartReplicationCommand(const StartOptions& options) {
  OUTBOXD_RETURN_IF_ERROR(ValidateSlotName(options.slot));
  if (options.publication_names.empty()) {
    return Status::InvalidConfig("replication slot \"" + options.slot + "\": no publication to stream");
  }
  // publication_names is one string literal holding a comma-separated list of
  // identifiers (the server splits it with SplitIdentifierString).
  std::string pubs;
  for (const auto& p : options.publication_names) {
    if (p.empty() || p.find('\0') != std::string::npos) {
      return Status::InvalidConfig("invalid publication name \"" + p + "\"");
    }
    if (!pubs.empty()) pubs += ',';
    pubs += QuoteIdentifierStandard(p);
  }
  std::string cmd = "START_REPLICATION SLOT " + QuoteIdentifierStandard(options.slot) + " LOGICAL " +
                    options.start_lsn.ToString() + " (\"proto_version\" " +
                    QuoteLiteralStandard(std::to_string(options.proto_version)) + ", \"publication_names\" " +
                    QuoteLiteralStandard(pubs);
  if (options.messages) cmd += ", \"messages\" 'true'";
  cmd += ")";
  return cmd;
}

Result<ReplicationMessage> ParseReplicationFrame(std::string_view frame) {
  if (frame.empty()) return Status::Permanent("empty replication frame");
  switch (frame[0]) {
    case 'w': {
      constexpr std::size_t kHeader = 1 + 8 + 8 + 8;
      if (frame.size() < kHeader) {
        return Status::Permanent("truncated XLogData frame (" + std::to_string(frame.size()) + " bytes)");
      }
      XLogData d;
      d.wal_start = Lsn(ReadU64(frame.data() + 1));
      d.wal_end = Lsn(ReadU64(frame.data() + 9));
      d.server_time_us = PgTimeToUnixMicros(ReadU64(frame.data() + 17));
      d.payload = frame.substr(kHeader);
      return ReplicationMessage(d);
    }
    case 'k': {
      constexpr std::size_t kSize = 1 + 8 + 8 + 1;
      if (frame.size() != kSize) {
        return Status::Permanent("keepalive frame of " + std::to_string(frame.size()) + " bytes, expected " +
                                 std::to_string(kSize));
      }
      Keepalive k;
      k.wal_end = Lsn(ReadU64(frame.data() + 1));
      k.server_time_us = PgTimeToUnixMicros(ReadU64(frame.data() + 9));
      k.reply_requested = frame[17] != 0;
      return ReplicationMessage(k);
    }
    default:
      return Status::Permanent("unexpected replication frame type " +
                               std::to_string(static_cast<unsigned char>(frame[0])) + " (expected 'w' or 'k')");
  }
}

std::string EncodeStandbyStatusUpdate(Lsn written, Lsn flushed, Lsn applied, int64_t now_unix_us,
                                      bool reply_requested) {
  std::string out;
  out.reserve(34);
  out.push_back('r');
  AppendU64(&out, written.value());
  AppendU64(&out, flushed.value());
  AppendU64(&out, applied.value());
  AppendU64(&out, static_cast<uint64_t>(now_unix_us - kPostgresEpochUnixMicros));
  out.push_back(reply_requested ? 1 : 0);
  return out;
}

// ---------------------------------------------------------------------------
// ReplicationStream

void ReplicationStream::CopyBufferDeleter::operator()(char* p) const { PQfreemem(p); }

ReplicationStream::ReplicationStream(std::string conninfo, std::optional<std::string> password,
                                     std::string application_name)
    : conninfo_(std::move(conninfo)), password_(std::move(password)), application_name_(std::move(application_name)) {}

ReplicationStream::ReplicationStream(ReplicationStream&& other) noexcept
    : conninfo_(std::move(other.conninfo_)),
      password_(std::move(other.password_)),
      application_name_(std::move(other.application_name_)),
      conn_(std::move(other.conn_)),
      slot_(std::move(other.slot_)),
      frame_(std::move(other.frame_)),
      streaming_(std::exchange(other.streaming_, false)),
      flush_pending_(std::exchange(other.flush_pending_, false)),
      received_lsn_(other.received_lsn_),
      server_wal_end_(other.server_wal_end_),
      reported_flush_lsn_(other.reported_flush_lsn_),
      last_failure_(other.last_failure_) {}

ReplicationStream& ReplicationStream::operator=(ReplicationStream&& other) noexcept {
  if (this != &other) {
    Close();
    conninfo_ = std::move(other.conninfo_);
    password_ = std::move(other.password_);
    application_name_ = std::move(other.application_name_);
    conn_ = std::move(other.conn_);
    slot_ = std::move(other.slot_);
    frame_ = std::move(other.frame_);
    streaming_ = std::exchange(other.streaming_, false);
    flush_pending_ = std::exchange(other.flush_pending_, false);
    received_lsn_ = other.received_lsn_;
    server_wal_end_ = other.server_wal_end_;
    reported_flush_lsn_ = other.reported_flush_lsn_;
    last_failure_ = other.last_failure_;
  }
  return *this;
}

int ReplicationStream::backend_pid() const { return conn_ ? PQbackendPID(conn_.get()) : 0; }

void ReplicationStream::Close() {
  frame_.reset();
  conn_.reset();
  streaming_ = false;
  flush_pending_ = false;
}

Status ReplicationStream::Fail(StreamFailure failure, Status status) {
  last_failure_ = failure;
  // Any failure ends the stream: the next frame may depend on the failed one,
  // and the caller resumes from the slot after reconnecting.
  streaming_ = false;
  return status;
}

Status ReplicationStream::FailFromResult(const PGresult* res, std::string_view what, bool starting) {
  const std::string detail = ServerMessage(conn_.get(), res);
  const std::string slot = "replication slot \"" + slot_ + "\"";
  switch (KindOf(conn_.get(), res)) {
    case ServerErrorKind::kConnection:
      return Fail(StreamFailure::kConnectionLost,
                  Status::Retriable(std::string(what) + ": connection lost: " + detail));
    case ServerErrorKind::kObjectInUse:
      return Fail(StreamFailure::kSlotHeldByAnotherProcess,
                  Status::Retriable(slot + " is held by another process: " + detail));
    case ServerErrorKind::kUndefined:
      if (starting) {
        return Fail(StreamFailure::kSlotMissing, Status::Permanent(slot + " is missing: " + detail));
      }
      // While streaming, pgoutput reports a publication that does not exist.
      return Fail(StreamFailure::kRejected, Status::InvalidConfig(std::string(what) + ": " + detail));
    case ServerErrorKind::kOther:
      return Fail(StreamFailure::kRejected, ClassifyPgError(conn_.get(), res, what));
  }
  return Fail(StreamFailure::kRejected, Status::Internal(std::string(what) + ": " + detail));
}

Status ReplicationStream::Connect() {
  Close();
  last_failure_ = StreamFailure::kNone;
  // expand_dbname=1 expands `conninfo_` in place of "dbname"; keywords after
  // it override what it says, so replication=database always wins.
  std::vector<const char*> keys = {"dbname", "replication", "fallback_application_name", "connect_timeout"};
  std::vector<const char*> values = {conninfo_.c_str(), "database", application_name_.c_str(), "10"};
  if (password_) {
    keys.push_back("password");
    values.push_back(password_->c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  PgConn conn(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1));
  if (!conn) {
    return Fail(StreamFailure::kConnectionLost,
                Status::Retriable("could not open replication connection: out of memory"));
  }
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return Fail(StreamFailure::kConnectionLost,
                ClassifyConnectError(conn.get(), "could not open replication connection"));
  }
  conn_ = std::move(conn);
  return Status::Ok();
}

Result<SystemIdentity> ReplicationStream::IdentifySystem() {
  if (!conn_) return Fail(StreamFailure::kConnectionLost, Status::Retriable("IDENTIFY_SYSTEM: not connected"));
  if (streaming_) return Status::Internal("IDENTIFY_SYSTEM: the stream is already streaming");
  PgResult res(PQexec(conn_.get(), "IDENTIFY_SYSTEM"));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return FailFromResult(res.get(), "IDENTIFY_SYSTEM failed", /*starting=*/false);
  }
  if (PQntuples(res.get()) != 1 || PQnfields(res.get()) < 4) {
    return Fail(StreamFailure::kProtocol,
                Status::Internal("IDENTIFY_SYSTEM returned " + std::to_string(PQntuples(res.get())) + " rows and " +
                                 std::to_string(PQnfields(res.get())) + " columns, expected 1 and 4"));
  }
  SystemIdentity id;
  id.system_id = PQgetvalue(res.get(), 0, 0);
  id.timeline = static_cast<uint32_t>(std::strtoul(PQgetvalue(res.get(), 0, 1), nullptr, 10));
  auto lsn = Lsn::Parse(PQgetvalue(res.get(), 0, 2));
  if (!lsn.ok()) return Fail(StreamFailure::kProtocol, lsn.status().Prefixed("IDENTIFY_SYSTEM xlogpos"));
  id.xlogpos = *lsn;
  if (!PQgetisnull(res.get(), 0, 3)) id.dbname = PQgetvalue(res.get(), 0, 3);
  return id;
}

Result<ExportedSlot> ReplicationStream::CreateSlotExportingSnapshot(const std::string& slot) {
  OUTBOXD_RETURN_IF_ERROR(ValidateSlotName(slot));
  if (!conn_) return Fail(StreamFailure::kConnectionLost, Status::Retriable("CREATE_REPLICATION_SLOT: not connected"));
  if (streaming_) return Status::Internal("CREATE_REPLICATION_SLOT: the stream is already streaming");
  // The slot name is validated ([a-z0-9_]), so it needs no quoting. This
  // spelling of the options is understood by PostgreSQL 10 and later.
  const std::string cmd = "CREATE_REPLICATION_SLOT " + slot + " LOGICAL pgoutput EXPORT_SNAPSHOT";
  PgResult res(PQexec(conn_.get(), cmd.c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return FailFromResult(res.get(), "could not create replication slot \"" + slot + "\"", /*starting=*/false);
  }
  if (PQntuples(res.get()) != 1 || PQnfields(res.get()) < 3 || PQgetisnull(res.get(), 0, 2)) {
    return Fail(StreamFailure::kProtocol,
                Status::Internal("CREATE_REPLICATION_SLOT returned no exported snapshot for slot \"" + slot + "\""));
  }
  auto lsn = Lsn::Parse(PQgetvalue(res.get(), 0, 1));
  if (!lsn.ok())
    return Fail(StreamFailure::kProtocol, lsn.status().Prefixed("CREATE_REPLICATION_SLOT consistent_point"));
  return ExportedSlot{*lsn, PQgetvalue(res.get(), 0, 2)};
}

Status ReplicationStream::Start(const StartOptions& options) {
  slot_ = options.slot;
  auto cmd = StartReplicationCommand(options);
  if (!cmd.ok()) return cmd.status();
  if (!conn_) return Fail(StreamFailure::kConnectionLost, Status::Retriable("START_REPLICATION: not connected"));
  if (streaming_) return Status::Internal("START_REPLICATION: the stream is already streaming");
  frame_.reset();
  received_lsn_ = Lsn();
  server_wal_end_ = Lsn();
  reported_flush_lsn_ = Lsn();
  flush_pending_ = false;
  PgResult res(PQexec(conn_.get(), cmd->c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_COPY_BOTH) {
    return FailFromResult(res.get(), "could not start streaming replication slot \"" + slot_ + "\"",
                          /*starting=*/true);
  }
  // Sends must not block the loop: PQputCopyData queues, PQflush writes what
  // the socket takes, and the caller polls for POLLOUT for the rest.
  if (PQsetnonblocking(conn_.get(), 1) != 0) {
    return Fail(StreamFailure::kConnectionLost,
                Status::Retriable("could not make the replication connection non-blocking: " +
                                  Trimmed(PQerrorMessage(conn_.get()))));
  }
  streaming_ = true;
  last_failure_ = StreamFailure::kNone;
  return Status::Ok();
}

Result<ReplicationMessage> ReplicationStream::Read() {
  if (!streaming_) return Status::Internal("replication stream read before Start()");
  frame_.reset();  // the previous payload is no longer referenced (header contract)
  const std::string what = "replication stream of slot \"" + slot_ + "\"";
  char* buf = nullptr;
  int n = PQgetCopyData(conn_.get(), &buf, /*async=*/1);
  if (n == 0) {
    // Nothing complete buffered: take what the socket has, without blocking.
    if (PQconsumeInput(conn_.get()) == 0) {
      return Fail(StreamFailure::kConnectionLost,
                  Status::Retriable(what + ": connection lost: " + Trimmed(PQerrorMessage(conn_.get()))));
    }
    n = PQgetCopyData(conn_.get(), &buf, /*async=*/1);
    if (n == 0) return ReplicationMessage(WouldBlock{});
  }
  if (n == -1) {
    // COPY ended: either the server finished the stream or it failed.
    PgResult res(PQgetResult(conn_.get()));
    if (res && PQresultStatus(res.get()) == PGRES_COMMAND_OK) {
      return Fail(StreamFailure::kEndOfStream, Status::Retriable(what + ": the server ended the stream"));
    }
    return FailFromResult(res.get(), what, /*starting=*/false);
  }
  if (n < 0) {
    return Fail(StreamFailure::kConnectionLost,
                Status::Retriable(what + ": connection lost: " + Trimmed(PQerrorMessage(conn_.get()))));
  }
  frame_.reset(buf);
  auto msg = ParseReplicationFrame(std::string_view(buf, static_cast<std::size_t>(n)));
  if (!msg.ok()) return Fail(StreamFailure::kProtocol, msg.status().Prefixed(what));
  if (const auto* d = std::get_if<XLogData>(&*msg)) {
    if (d->wal_start > received_lsn_) received_lsn_ = d->wal_start;
    if (d->wal_end > server_wal_end_) server_wal_end_ = d->wal_end;
  } else if (const auto* k = std::get_if<Keepalive>(&*msg)) {
    if (k->wal_end > server_wal_end_) server_wal_end_ = k->wal_end;
  }
  return msg;
}

Status ReplicationStream::SendStatus(Lsn written, Lsn flushed, Lsn applied, bool reply_requested) {
  if (!streaming_) return Status::Internal("standby status update sent before Start()");
  const std::string msg = EncodeStandbyStatusUpdate(written, flushed, applied, NowUnixMicros(), reply_requested);
  if (PQputCopyData(conn_.get(), msg.data(), static_cast<int>(msg.size())) != 1) {
    return Fail(StreamFailure::kConnectionLost,
                Status::Retriable("could not send standby status update for slot \"" + slot_ +
                                  "\": " + Trimmed(PQerrorMessage(conn_.get()))));
  }
  if (flushed > reported_flush_lsn_) reported_flush_lsn_ = flushed;
  return FlushPending();
}

Status ReplicationStream::FlushPending() {
  if (!conn_) return Fail(StreamFailure::kConnectionLost, Status::Retriable("replication connection closed"));
  const int r = PQflush(conn_.get());
  if (r < 0) {
    return Fail(StreamFailure::kConnectionLost,
                Status::Retriable("could not flush the replication connection of slot \"" + slot_ +
                                  "\": " + Trimmed(PQerrorMessage(conn_.get()))));
  }
  flush_pending_ = r == 1;
  return Status::Ok();
}

}  // namespace outboxd
