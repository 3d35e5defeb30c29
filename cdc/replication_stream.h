#pragma once
// ReplicationStream: one logical replication connection to PostgreSQL
// (libpq `replication=database`) streaming a pgoutput slot.
//
// Lifecycle: Connect(), optionally IdentifySystem(), Start() — which issues
// START_REPLICATION SLOT … LOGICAL and puts the connection in COPY BOTH mode —
// then Read() / SendStatus() from the caller's loop, which waits on socket()
// with poll() (POLLIN always, POLLOUT while flush_pending()). Read() never
// blocks: it returns WouldBlock when no complete frame is buffered.
//
// Positions (STYLE rule 11): the stream tracks what it has *received*
// (received_lsn(), server_wal_end()) separately from what the caller has
// reported as *durably published* (reported_flush_lsn()). It never reports a
// flush position on its own: SendStatus() sends exactly what the caller
// passes, and the caller must pass as `flushed` only positions Kafka has
// acknowledged. Replying to a keepalive that sets reply_requested is the
// caller's job and should happen at once.
//
// Errors are classified once, in one switch (ClassifyStreamError in the .cc):
// a lost connection, a terminated walsender or a server that ends the stream
// is kRetriable (reconnect with backoff and Start() again from the slot); a
// slot held by another walsender is kRetriable and StreamFailure
// kSlotHeldByAnotherProcess (a standby waits for it); a slot that does not
// exist is kPermanent and kSlotMissing (never re-create it silently). The
// reason of the last failure is kept in last_failure(), since the shared
// StatusCode has no slot-specific codes.
//
// Owns its PGconn (PgConn) and the last frame buffer libpq returned. Movable
// (moving leaves the source disconnected), not copyable; not thread-safe:
// one thread drives a stream.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/lsn.h"
#include "common/pg.h"
#include "common/status.h"

namespace outboxd {

// IDENTIFY_SYSTEM's answer.
struct SystemIdentity {
  std::string system_id;  // decimal, as the server prints it (does not fit int64 safely as text)
  uint32_t timeline = 0;
  Lsn xlogpos;         // current WAL flush position of the server
  std::string dbname;  // database of this replication connection
};

struct StartOptions {
  std::string slot;                            // a logical slot using pgoutput
  Lsn start_lsn;                               // 0/0: resume from the slot's confirmed_flush_lsn
  std::vector<std::string> publication_names;  // at least one
  int proto_version = 1;                       // protocol 2+ (streaming) is not supported by the decoder
  bool messages = true;                        // stream pg_logical_emit_message() messages
};

// An XLogData ('w') frame: one pgoutput message.
struct XLogData {
  Lsn wal_start;               // WAL position of the decoded change (0/0 for some messages)
  Lsn wal_end;                 // current end of WAL on the server
  int64_t server_time_us = 0;  // server clock at send time, Unix epoch microseconds
  // The pgoutput message, starting at its type byte. Points into a buffer the
  // stream owns: valid until the next Read(), Start() or destruction.
  std::string_view payload;
};

// CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT's answer.
struct ExportedSlot {
  Lsn consistent_point;       // streaming from the slot starts here
  std::string snapshot_name;  // for SET TRANSACTION SNAPSHOT; valid until this connection's next command
};

// A primary keepalive ('k') frame.
struct Keepalive {
  Lsn wal_end;                   // current end of WAL on the server
  int64_t server_time_us = 0;    // Unix epoch microseconds
  bool reply_requested = false;  // answer with SendStatus() at once, or wal_sender_timeout kills the stream
};

// No complete frame is buffered: poll() socket() for POLLIN and call Read() again.
struct WouldBlock {};

using ReplicationMessage = std::variant<XLogData, Keepalive, WouldBlock>;

// Why the last call failed, beyond its StatusCode.
enum class StreamFailure {
  kNone,
  kConnectionLost,            // socket closed, walsender terminated, server shut down (retriable)
  kEndOfStream,               // the server ended COPY BOTH cleanly (retriable: reconnect)
  kSlotHeldByAnotherProcess,  // "replication slot … is active for PID …" (retriable: wait)
  kSlotMissing,               // "replication slot … does not exist" (permanent)
  kProtocol,                  // a frame outboxd cannot parse (permanent)
  kRejected,                  // any other server error (code from ClassifyPgError)
};

std::string_view StreamFailureName(StreamFailure f);

class ReplicationStream {
 public:
  // `conninfo` is a libpq conninfo string or URI; `replication=database` is
  // appended (overriding any replication setting in it).
  ReplicationStream(std::string conninfo, std::optional<std::string> password, std::string application_name);
  ~ReplicationStream() = default;
  // The moved-from stream is closed (not connected, not streaming).
  ReplicationStream(ReplicationStream&& other) noexcept;
  ReplicationStream& operator=(ReplicationStream&& other) noexcept;
  ReplicationStream(const ReplicationStream&) = delete;
  ReplicationStream& operator=(const ReplicationStream&) = delete;

  // Opens the replication connection (closing any previous one).
  [[nodiscard]] Status Connect();
  [[nodiscard]] Result<SystemIdentity> IdentifySystem();
  // Creates a pgoutput slot and exports the snapshot it starts from: a
  // transaction on another connection that runs SET TRANSACTION SNAPSHOT
  // sees exactly the data before the slot's consistent point. The snapshot
  // stays valid until this connection runs its next command (Start()).
  [[nodiscard]] Result<ExportedSlot> CreateSlotExportingSnapshot(const std::string& slot);
  // START_REPLICATION SLOT "slot" LOGICAL X/X (options); the stream is
  // streaming when this returns OK. Slot names are validated as PostgreSQL
  // does (lower-case letters, digits, underscore; at most 63 bytes).
  [[nodiscard]] Status Start(const StartOptions& options);

  // Next frame, or WouldBlock. Errors end the stream (see header comment).
  [[nodiscard]] Result<ReplicationMessage> Read();

  // Sends a standby status update ('r'). `flushed` must be durably published
  // (acknowledged by Kafka); it is what becomes the slot's
  // confirmed_flush_lsn. `reply_requested` asks the server to answer with a
  // keepalive. Flushes what it can without blocking; if flush_pending()
  // afterwards, poll() for POLLOUT and call FlushPending().
  [[nodiscard]] Status SendStatus(Lsn written, Lsn flushed, Lsn applied, bool reply_requested = false);
  [[nodiscard]] Status FlushPending();
  bool flush_pending() const { return flush_pending_; }

  int socket() const { return conn_.socket(); }
  bool connected() const { return conn_.healthy(); }
  bool streaming() const { return streaming_; }
  // Backend PID of the walsender serving this stream (0 when not connected).
  int backend_pid() const;
  void Close();

  // Highest wal_start of an XLogData received since Start().
  Lsn received_lsn() const { return received_lsn_; }
  // Highest WAL end the server announced (XLogData or keepalive) since Start().
  Lsn server_wal_end() const { return server_wal_end_; }
  // Highest `flushed` sent with SendStatus() since Start().
  Lsn reported_flush_lsn() const { return reported_flush_lsn_; }

  StreamFailure last_failure() const { return last_failure_; }

 private:
  struct CopyBufferDeleter {
    void operator()(char* p) const;
  };

  Status Fail(StreamFailure failure, Status status);
  Status FailFromResult(const PGresult* res, std::string_view what, bool starting);

  std::string conninfo_;
  std::optional<std::string> password_;
  std::string application_name_;
  PgConn conn_;
  std::string slot_;                                // of the last Start(), for error messages
  std::unique_ptr<char, CopyBufferDeleter> frame_;  // last buffer from PQgetCopyData
  bool streaming_ = false;
  bool flush_pending_ = false;
  Lsn received_lsn_;
  Lsn server_wal_end_;
  Lsn reported_flush_lsn_;
  StreamFailure last_failure_ = StreamFailure::kNone;
};

// ---------------------------------------------------------------------------
// The wire format, exposed for tests and for `outboxd status`.

// Checks a slot name as PostgreSQL's ReplicationSlotValidateName does.
[[nodiscard]] Status ValidateSlotName(std::string_view slot);

// The START_REPLICATION command for `options` (slot name validated; the
// publication list quoted as identifiers inside a string literal).
[[nodiscard]] Result<std::string> StartReplicationCommand(const StartOptions& options);

// Parses one CopyData frame of the stream ('w' or 'k').
[[nodiscard]] Result<ReplicationMessage> ParseReplicationFrame(std::string_view frame);

// The 34-byte standby status update; `now_unix_us` is the client clock.
std::string EncodeStandbyStatusUpdate(Lsn written, Lsn flushed, Lsn applied, int64_t now_unix_us, bool reply_requested);

}  // namespace outboxd
