#pragma once
// PgoutputDecoder: turns one pgoutput logical replication message (protocol
// version 1) into a typed value.
//
// The input is the payload of one XLogData ('w') frame of the replication
// stream, starting at the message type byte, or one row of
// pg_logical_slot_*_binary_changes(..., 'proto_version', '1'). Every message
// type of protocol 1 is decoded: Begin, Commit, Origin, Relation, Type,
// Insert, Update, Delete, Truncate and (with `messages 'true'`) logical
// decoding Message. Tuple columns may be null, unchanged TOAST or text (and
// binary, should the `binary` option ever be requested).
//
// The decoder keeps the caches the protocol relies on: Relation messages
// define (or redefine) a relation's columns, and Insert/Update/Delete/Truncate
// name relations by oid only. A decoded row change carries a shared pointer to
// the relation definition it was decoded against, so later redefinitions do
// not change it. A row change for an oid no Relation message defined is an
// error, as is a tuple whose column count differs from its relation's.
//
// Malformed or truncated input, unknown message types or tuple kinds, and the
// streaming/two-phase messages of protocols 2 and later are errors
// (StatusCode::kPermanent) naming the message type and the byte offset inside
// the message; the decoder never reads outside the input, never skips bytes
// and never accepts trailing bytes. An error leaves the caches as they were.
// The stream should be stopped on an error: the next message may depend on
// the one that failed.
//
// One decoder per replication stream; not thread-safe. Copyable (a copy
// forks the caches).

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/lsn.h"
#include "common/status.h"

namespace outboxd {

// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
inline constexpr int64_t kPostgresEpochUnixMicros = 946'684'800'000'000;

// One column of a TupleData.
struct TupleColumn {
  enum class Kind : char {
    kNull = 'n',
    kUnchangedToast = 'u',  // TOASTed value not changed by this update; not sent
    kText = 't',            // value in the type's text output format
    kBinary = 'b',          // value in the type's binary send format
  };
  Kind kind = Kind::kNull;
  std::string value;  // empty unless kText or kBinary

  bool operator==(const TupleColumn&) const = default;
};

struct TupleData {
  std::vector<TupleColumn> columns;  // in the relation's column order
  bool operator==(const TupleData&) const = default;
};

struct BeginMsg {
  Lsn final_lsn;           // LSN of the transaction's commit record
  int64_t commit_time_us;  // Unix epoch microseconds
  uint32_t xid;
};

struct CommitMsg {
  uint8_t flags;           // currently always 0
  Lsn commit_lsn;          // LSN of the commit record
  Lsn end_lsn;             // end of the commit record: where to confirm up to
  int64_t commit_time_us;  // Unix epoch microseconds
};

struct OriginMsg {
  Lsn origin_commit_lsn;
  std::string name;
};

struct RelationColumn {
  static constexpr uint8_t kKeyFlag = 1;
  uint8_t flags;  // kKeyFlag: part of the replica identity key
  std::string name;
  uint32_t type_oid;
  int32_t typmod;

  bool is_key() const { return (flags & kKeyFlag) != 0; }
  bool operator==(const RelationColumn&) const = default;
};

struct RelationMsg {
  enum class ReplicaIdentity : char {
    kDefault = 'd',  // primary key
    kNothing = 'n',
    kFull = 'f',
    kIndex = 'i',
  };
  uint32_t oid;
  std::string namespace_name;  // empty for pg_catalog
  std::string name;
  ReplicaIdentity replica_identity;
  std::vector<RelationColumn> columns;
};

struct TypeMsg {
  uint32_t oid;
  std::string namespace_name;  // empty for pg_catalog
  std::string name;
};

using RelationRef = std::shared_ptr<const RelationMsg>;

struct InsertMsg {
  RelationRef relation;  // never null
  TupleData new_tuple;
};

struct UpdateMsg {
  enum class OldKind : char {
    kNone = 0,    // no old tuple sent (key unchanged, identity DEFAULT/INDEX)
    kKey = 'K',   // old values of the replica identity key columns; others null
    kFull = 'O',  // whole old row (REPLICA IDENTITY FULL)
  };
  RelationRef relation;  // never null
  OldKind old_kind = OldKind::kNone;
  std::optional<TupleData> old_tuple;  // set unless old_kind is kNone
  TupleData new_tuple;
};

struct DeleteMsg {
  enum class OldKind : char {
    kKey = 'K',
    kFull = 'O',
  };
  RelationRef relation;  // never null
  OldKind old_kind;
  TupleData old_tuple;
};

struct TruncateMsg {
  static constexpr uint8_t kCascade = 1;
  static constexpr uint8_t kRestartIdentity = 2;
  uint8_t options;
  std::vector<RelationRef> relations;  // never null
};

// pg_logical_emit_message(transactional, prefix, content).
struct LogicalMsg {
  static constexpr uint8_t kTransactionalFlag = 1;
  uint8_t flags;
  Lsn lsn;
  std::string prefix;
  std::string content;

  bool transactional() const { return (flags & kTransactionalFlag) != 0; }
};

using PgoutputMessage = std::variant<BeginMsg, CommitMsg, OriginMsg, RelationMsg, TypeMsg, InsertMsg, UpdateMsg,
                                     DeleteMsg, TruncateMsg, LogicalMsg>;

class PgoutputDecoder {
 public:
  // Decodes exactly one message; all of `message` must belong to it.
  [[nodiscard]] Result<PgoutputMessage> Decode(std::string_view message);

  // The current definition of a relation or type; nullptr if never sent.
  RelationRef FindRelation(uint32_t oid) const;
  const TypeMsg* FindType(uint32_t oid) const;

 private:
  std::map<uint32_t, RelationRef> relations_;
  std::map<uint32_t, TypeMsg> types_;
};

}  // namespace outboxd
