#include "cdc/pgoutput_decoder.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

namespace outboxd {
namespace {

// Bounds-checked big-endian reads over one message. Every read names the
// field it reads so that an error says what was missing and where.
class MessageReader {
 public:
  explicit MessageReader(std::string_view data) : data_(data) {}

  std::size_t offset() const { return pos_; }
  std::size_t remaining() const { return data_.size() - pos_; }

  Status U8(const char* field, uint8_t* out) { return Unsigned(field, 1, out); }
  Status U16(const char* field, uint16_t* out) { return Unsigned(field, 2, out); }
  Status U32(const char* field, uint32_t* out) { return Unsigned(field, 4, out); }
  Status U64(const char* field, uint64_t* out) { return Unsigned(field, 8, out); }

  Status I16(const char* field, int16_t* out) { return Signed<uint16_t>(field, out); }
  Status I32(const char* field, int32_t* out) { return Signed<uint32_t>(field, out); }
  Status I64(const char* field, int64_t* out) { return Signed<uint64_t>(field, out); }

  Status LsnField(const char* field, Lsn* out) {
    uint64_t v = 0;
    OUTBOXD_RETURN_IF_ERROR(U64(field, &v));
    *out = Lsn(v);
    return Status::Ok();
  }

  // A PostgreSQL timestamp (µs since 2000-01-01) as Unix epoch microseconds.
  Status Timestamp(const char* field, int64_t* unix_us) {
    int64_t pg_us = 0;
    OUTBOXD_RETURN_IF_ERROR(I64(field, &pg_us));
    // Infinite timestamps cannot occur here; refuse instead of overflowing.
    if (pg_us > INT64_MAX - kPostgresEpochUnixMicros) {
      return Error("timestamp " + std::string(field) + " out of range");
    }
    *unix_us = pg_us + kPostgresEpochUnixMicros;
    return Status::Ok();
  }

  // A NUL-terminated string.
  Status CString(const char* field, std::string* out) {
    const std::size_t start = pos_;
    const void* nul = std::memchr(data_.data() + pos_, '\0', remaining());
    if (nul == nullptr) {
      return Error("string " + std::string(field) + " has no terminating NUL");
    }
    const std::size_t len = static_cast<const char*>(nul) - (data_.data() + start);
    out->assign(data_.data() + start, len);
    pos_ += len + 1;
    return Status::Ok();
  }

  Status Bytes(const char* field, std::size_t n, std::string* out) {
    if (n > remaining()) {
      return Error(std::string(field) + " of " + std::to_string(n) + " bytes runs past the end (" +
                   std::to_string(remaining()) + " bytes left)");
    }
    out->assign(data_.data() + pos_, n);
    pos_ += n;
    return Status::Ok();
  }

  Status ExpectEnd() const {
    if (remaining() != 0) {
      return Error(std::to_string(remaining()) + " unexpected trailing bytes");
    }
    return Status::Ok();
  }

  // An error at the current offset.
  Status Error(const std::string& what) const { return ErrorAt(pos_, what); }
  static Status ErrorAt(std::size_t offset, const std::string& what) {
    return Status::Permanent("at byte " + std::to_string(offset) + ": " + what);
  }

 private:
  template <typename T>
  Status Unsigned(const char* field, std::size_t n, T* out) {
    if (n > remaining()) {
      return Error("truncated " + std::string(field) + " (" + std::to_string(n) + " bytes needed, " +
                   std::to_string(remaining()) + " left)");
    }
    T v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      v = static_cast<T>((v << 8) | static_cast<unsigned char>(data_[pos_ + i]));
    }
    pos_ += n;
    *out = v;
    return Status::Ok();
  }

  template <typename U, typename S>
  Status Signed(const char* field, S* out) {
    U u = 0;
    OUTBOXD_RETURN_IF_ERROR(Unsigned(field, sizeof(U), &u));
    *out = static_cast<S>(u);  // two's complement, well-defined since C++20
    return Status::Ok();
  }

  std::string_view data_;
  std::size_t pos_ = 0;
};

const char* MessageName(char type) {
  switch (type) {
    case 'B':
      return "Begin";
    case 'C':
      return "Commit";
    case 'O':
      return "Origin";
    case 'R':
      return "Relation";
    case 'Y':
      return "Type";
    case 'I':
      return "Insert";
    case 'U':
      return "Update";
    case 'D':
      return "Delete";
    case 'T':
      return "Truncate";
    case 'M':
      return "Message";
    case 'S':
      return "Stream Start";
    case 'E':
      return "Stream Stop";
    case 'c':
      return "Stream Commit";
    case 'A':
      return "Stream Abort";
    case 'b':
      return "Begin Prepare";
    case 'P':
      return "Prepare";
    case 'K':
      return "Commit Prepared";
    case 'r':
      return "Rollback Prepared";
    case 'p':
      return "Stream Prepare";
    default:
      return nullptr;
  }
}

// How a type byte reads in an error message: 'I' or 0x07.
std::string Printable(uint8_t b) {
  if (b >= 0x20 && b < 0x7f) return std::string("'") + static_cast<char>(b) + "'";
  static const char kHex[] = "0123456789abcdef";
  return std::string("0x") + kHex[b >> 4] + kHex[b & 0xf];
}

}  // namespace

namespace {

Status ReadTuple(MessageReader& r, const RelationMsg& rel, TupleData* out) {
  const std::size_t start = r.offset();
  uint16_t ncols = 0;
  OUTBOXD_RETURN_IF_ERROR(r.U16("tuple column count", &ncols));
  if (ncols != rel.columns.size()) {
    return MessageReader::ErrorAt(start, "tuple has " + std::to_string(ncols) + " columns but relation \"" +
                                             rel.namespace_name + "." + rel.name + "\" (oid " +
                                             std::to_string(rel.oid) + ") has " + std::to_string(rel.columns.size()));
  }
  out->columns.clear();
  out->columns.reserve(ncols);
  for (uint16_t i = 0; i < ncols; ++i) {
    uint8_t kind = 0;
    OUTBOXD_RETURN_IF_ERROR(r.U8("tuple column kind", &kind));
    TupleColumn col;
    switch (kind) {
      case 'n':
        col.kind = TupleColumn::Kind::kNull;
        break;
      case 'u':
        col.kind = TupleColumn::Kind::kUnchangedToast;
        break;
      case 't':
      case 'b': {
        col.kind = kind == 't' ? TupleColumn::Kind::kText : TupleColumn::Kind::kBinary;
        const std::size_t len_at = r.offset();
        int32_t len = 0;
        OUTBOXD_RETURN_IF_ERROR(r.I32("column value length", &len));
        if (len < 0) {
          return MessageReader::ErrorAt(
              len_at, "negative length " + std::to_string(len) + " of column \"" + rel.columns[i].name + "\"");
        }
        OUTBOXD_RETURN_IF_ERROR(r.Bytes("column value", static_cast<std::size_t>(len), &col.value));
        break;
      }
      default:
        return MessageReader::ErrorAt(r.offset() - 1, "unknown tuple column kind " + Printable(kind) +
                                                          " for column \"" + rel.columns[i].name + "\"");
    }
    out->columns.push_back(std::move(col));
  }
  return Status::Ok();
}

}  // namespace

RelationRef PgoutputDecoder::FindRelation(uint32_t oid) const {
  auto it = relations_.find(oid);
  return it == relations_.end() ? nullptr : it->second;
}

const TypeMsg* PgoutputDecoder::FindType(uint32_t oid) const {
  auto it = types_.find(oid);
  return it == types_.end() ? nullptr : &it->second;
}

Result<PgoutputMessage> PgoutputDecoder::Decode(std::string_view message) {
  MessageReader r(message);
  uint8_t type = 0;
  if (Status st = r.U8("message type", &type); !st.ok()) {
    return st.Prefixed("malformed pgoutput message");
  }
  const char* name = MessageName(static_cast<char>(type));
  if (name == nullptr) {
    return MessageReader::ErrorAt(0, "unknown message type " + Printable(type)).Prefixed("malformed pgoutput message");
  }
  const std::string context = std::string("malformed pgoutput ") + name + " message";

  // Looks up the relation a row change names; an unknown oid is an error.
  auto relation = [&](RelationRef* out) -> Status {
    const std::size_t at = r.offset();
    uint32_t oid = 0;
    OUTBOXD_RETURN_IF_ERROR(r.U32("relation oid", &oid));
    *out = FindRelation(oid);
    if (*out == nullptr) {
      return MessageReader::ErrorAt(at,
                                    "relation oid " + std::to_string(oid) + " was not described by a Relation message");
    }
    return Status::Ok();
  };

  // Each case decodes into `msg`; caches change only after ExpectEnd().
  PgoutputMessage msg;
  Status st;
  switch (type) {
    case 'B': {
      BeginMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.LsnField("final LSN", &m.final_lsn));
        OUTBOXD_RETURN_IF_ERROR(r.Timestamp("commit time", &m.commit_time_us));
        return r.U32("xid", &m.xid);
      }();
      msg = m;
      break;
    }
    case 'C': {
      CommitMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.U8("flags", &m.flags));
        OUTBOXD_RETURN_IF_ERROR(r.LsnField("commit LSN", &m.commit_lsn));
        OUTBOXD_RETURN_IF_ERROR(r.LsnField("end LSN", &m.end_lsn));
        return r.Timestamp("commit time", &m.commit_time_us);
      }();
      msg = m;
      break;
    }
    case 'O': {
      OriginMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.LsnField("origin commit LSN", &m.origin_commit_lsn));
        return r.CString("origin name", &m.name);
      }();
      msg = std::move(m);
      break;
    }
    case 'R': {
      RelationMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.U32("relation oid", &m.oid));
        OUTBOXD_RETURN_IF_ERROR(r.CString("namespace", &m.namespace_name));
        OUTBOXD_RETURN_IF_ERROR(r.CString("relation name", &m.name));
        uint8_t ident = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U8("replica identity", &ident));
        switch (ident) {
          case 'd':
          case 'n':
          case 'f':
          case 'i':
            m.replica_identity = static_cast<RelationMsg::ReplicaIdentity>(ident);
            break;
          default:
            return MessageReader::ErrorAt(r.offset() - 1, "unknown replica identity " + Printable(ident));
        }
        uint16_t ncols = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U16("column count", &ncols));
        // Each column needs at least 10 bytes; do not reserve for a lie.
        m.columns.reserve(std::min<std::size_t>(ncols, r.remaining() / 10));
        for (uint16_t i = 0; i < ncols; ++i) {
          RelationColumn c{};
          OUTBOXD_RETURN_IF_ERROR(r.U8("column flags", &c.flags));
          OUTBOXD_RETURN_IF_ERROR(r.CString("column name", &c.name));
          OUTBOXD_RETURN_IF_ERROR(r.U32("column type oid", &c.type_oid));
          OUTBOXD_RETURN_IF_ERROR(r.I32("column type modifier", &c.typmod));
          m.columns.push_back(std::move(c));
        }
        return Status::Ok();
      }();
      msg = std::move(m);
      break;
    }
    case 'Y': {
      TypeMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.U32("type oid", &m.oid));
        OUTBOXD_RETURN_IF_ERROR(r.CString("namespace", &m.namespace_name));
        return r.CString("type name", &m.name);
      }();
      msg = std::move(m);
      break;
    }
    case 'I': {
      InsertMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(relation(&m.relation));
        uint8_t tag = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U8("tuple tag", &tag));
        if (tag != 'N') {
          return MessageReader::ErrorAt(r.offset() - 1, "expected new tuple tag 'N', got " + Printable(tag));
        }
        return ReadTuple(r, *m.relation, &m.new_tuple);
      }();
      msg = std::move(m);
      break;
    }
    case 'U': {
      UpdateMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(relation(&m.relation));
        uint8_t tag = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U8("tuple tag", &tag));
        if (tag == 'K' || tag == 'O') {
          m.old_kind = static_cast<UpdateMsg::OldKind>(tag);
          m.old_tuple.emplace();
          OUTBOXD_RETURN_IF_ERROR(ReadTuple(r, *m.relation, &*m.old_tuple));
          OUTBOXD_RETURN_IF_ERROR(r.U8("tuple tag", &tag));
        }
        if (tag != 'N') {
          return MessageReader::ErrorAt(r.offset() - 1, "expected tuple tag 'K', 'O' or 'N', got " + Printable(tag));
        }
        return ReadTuple(r, *m.relation, &m.new_tuple);
      }();
      msg = std::move(m);
      break;
    }
    case 'D': {
      DeleteMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(relation(&m.relation));
        uint8_t tag = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U8("tuple tag", &tag));
        if (tag != 'K' && tag != 'O') {
          return MessageReader::ErrorAt(r.offset() - 1, "expected old tuple tag 'K' or 'O', got " + Printable(tag));
        }
        m.old_kind = static_cast<DeleteMsg::OldKind>(tag);
        return ReadTuple(r, *m.relation, &m.old_tuple);
      }();
      msg = std::move(m);
      break;
    }
    case 'T': {
      TruncateMsg m{};
      st = [&]() -> Status {
        uint32_t nrels = 0;
        OUTBOXD_RETURN_IF_ERROR(r.U32("relation count", &nrels));
        OUTBOXD_RETURN_IF_ERROR(r.U8("options", &m.options));
        if (nrels > r.remaining() / 4) {
          return r.Error(std::to_string(nrels) + " relation oids run past the end (" + std::to_string(r.remaining()) +
                         " bytes left)");
        }
        m.relations.reserve(nrels);
        for (uint32_t i = 0; i < nrels; ++i) {
          RelationRef rel;
          OUTBOXD_RETURN_IF_ERROR(relation(&rel));
          m.relations.push_back(std::move(rel));
        }
        return Status::Ok();
      }();
      msg = std::move(m);
      break;
    }
    case 'M': {
      LogicalMsg m{};
      st = [&]() -> Status {
        OUTBOXD_RETURN_IF_ERROR(r.U8("flags", &m.flags));
        OUTBOXD_RETURN_IF_ERROR(r.LsnField("message LSN", &m.lsn));
        OUTBOXD_RETURN_IF_ERROR(r.CString("prefix", &m.prefix));
        const std::size_t len_at = r.offset();
        int32_t len = 0;
        OUTBOXD_RETURN_IF_ERROR(r.I32("content length", &len));
        if (len < 0) return MessageReader::ErrorAt(len_at, "negative content length " + std::to_string(len));
        return r.Bytes("content", static_cast<std::size_t>(len), &m.content);
      }();
      msg = std::move(m);
      break;
    }
    default:
      // Known to MessageName but not part of protocol 1.
      return MessageReader::ErrorAt(0, std::string(name) +
                                           " messages belong to pgoutput protocol 2 or later "
                                           "(streaming/two-phase), which outboxd does not request")
          .Prefixed("unexpected pgoutput message");
  }
  if (st.ok()) st = r.ExpectEnd();
  if (!st.ok()) return st.Prefixed(context);

  if (auto* rel = std::get_if<RelationMsg>(&msg)) {
    relations_[rel->oid] = std::make_shared<const RelationMsg>(*rel);
  } else if (auto* t = std::get_if<TypeMsg>(&msg)) {
    types_[t->oid] = *t;
  }
  return msg;
}

}  // namespace outboxd
