// PgoutputDecoder: every pgoutput protocol-1 message, the relation and type
// caches, and what happens to malformed or truncated frames. Frames are
// written by hand with Frame, in the byte layout of PostgreSQL's "Logical
// Replication Message Formats" documentation.
#include "cdc/pgoutput_decoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace outboxd {
namespace {

using Kind = TupleColumn::Kind;

// 2024-01-02 03:04:05.678901 UTC.
constexpr int64_t kUnixMicros = 1'704'164'645'678'901;
constexpr int64_t kPgMicros = kUnixMicros - kPostgresEpochUnixMicros;

// One column of a hand-made tuple.
struct Col {
  char kind;
  std::string value;
};
Col Null() { return {'n', {}}; }
Col Toast() { return {'u', {}}; }
Col Text(std::string v) { return {'t', std::move(v)}; }
Col Binary(std::string v) { return {'b', std::move(v)}; }

// Writes one message, big-endian, as PostgreSQL's pgoutput does.
class Frame {
 public:
  explicit Frame(char type) { U8(static_cast<uint8_t>(type)); }

  Frame& U8(uint8_t v) { return Int(v, 1); }
  Frame& U16(uint16_t v) { return Int(v, 2); }
  Frame& U32(uint32_t v) { return Int(v, 4); }
  Frame& U64(uint64_t v) { return Int(v, 8); }
  Frame& I32(int32_t v) { return U32(static_cast<uint32_t>(v)); }
  Frame& I64(int64_t v) { return U64(static_cast<uint64_t>(v)); }
  Frame& Str(std::string_view s) {  // NUL-terminated
    bytes_.append(s);
    bytes_.push_back('\0');
    return *this;
  }
  Frame& Raw(std::string_view s) {
    bytes_.append(s);
    return *this;
  }
  // TupleData: Int16 count, then per column a kind byte and, for 't'/'b', an
  // Int32 length and the value.
  Frame& Tuple(const std::vector<Col>& cols) {
    U16(static_cast<uint16_t>(cols.size()));
    for (const Col& c : cols) {
      U8(static_cast<uint8_t>(c.kind));
      if (c.kind == 't' || c.kind == 'b') I32(static_cast<int32_t>(c.value.size())).Raw(c.value);
    }
    return *this;
  }

  operator std::string() const { return bytes_; }  // NOLINT: frames are bytes
  const std::string& bytes() const { return bytes_; }

 private:
  Frame& Int(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::string bytes_;
};

struct ColumnDef {
  uint8_t flags;
  std::string name;
  uint32_t type_oid;
  int32_t typmod;
};

constexpr uint32_t kOrders = 16385;
constexpr uint32_t kInt4 = 23, kText = 25, kNumeric = 1700;

Frame Relation(uint32_t oid, std::string_view ns, std::string_view name, char identity,
               const std::vector<ColumnDef>& cols) {
  Frame f('R');
  f.U32(oid).Str(ns).Str(name).U8(static_cast<uint8_t>(identity)).U16(static_cast<uint16_t>(cols.size()));
  for (const ColumnDef& c : cols) f.U8(c.flags).Str(c.name).U32(c.type_oid).I32(c.typmod);
  return f;
}

// public.orders(id int4 primary key, note text, total numeric(10,2)).
Frame OrdersRelation(char identity = 'd') {
  return Relation(kOrders, "public", "orders", identity,
                  {{1, "id", kInt4, -1}, {0, "note", kText, -1}, {0, "total", kNumeric, (10 << 16 | 2) + 4}});
}

Frame Insert(uint32_t oid, const std::vector<Col>& cols) {
  Frame f('I');
  f.U32(oid).U8('N').Tuple(cols);
  return f;
}

std::vector<TupleColumn> Columns(const std::vector<Col>& cols) {
  std::vector<TupleColumn> out;
  out.reserve(cols.size());
  for (const Col& c : cols) out.push_back({static_cast<Kind>(c.kind), c.value});
  return out;
}

class PgoutputDecoderTest : public ::testing::Test {
 protected:
  void SetUp() override { Decode<RelationMsg>(OrdersRelation()); }

  // Decodes a frame that must be valid and of type T.
  template <typename T>
  T Decode(const std::string& frame) {
    auto r = decoder_.Decode(frame);
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok()) return T{};
    EXPECT_TRUE(std::holds_alternative<T>(*r)) << "decoded variant index " << r->index();
    if (!std::holds_alternative<T>(*r)) return T{};
    return std::get<T>(std::move(r).value());
  }

  // Decodes a frame that must be rejected; returns the error message.
  std::string Error(const std::string& frame) {
    auto r = decoder_.Decode(frame);
    EXPECT_FALSE(r.ok()) << "frame of " << frame.size() << " bytes was accepted";
    if (r.ok()) return {};
    EXPECT_EQ(StatusCode::kPermanent, r.status().code());
    return r.status().message();
  }

  PgoutputDecoder decoder_;
};

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string::npos, std::string(haystack).find(needle)) << (haystack)

// --- Transaction framing ----------------------------------------------------

TEST_F(PgoutputDecoderTest, BeginCarriesFinalLsnCommitTimeInUnixMicrosAndXid) {
  auto m = Decode<BeginMsg>(Frame('B').U64(0x16'B374D848).I64(kPgMicros).U32(740));
  EXPECT_EQ("16/B374D848", m.final_lsn.ToString());
  EXPECT_EQ(kUnixMicros, m.commit_time_us);
  EXPECT_EQ(740u, m.xid);
}

TEST_F(PgoutputDecoderTest, TimestampsBeforeTheYear2000AreNegativeOnThePostgresEpoch) {
  auto m = Decode<BeginMsg>(Frame('B').U64(1).I64(-kPostgresEpochUnixMicros).U32(1));
  EXPECT_EQ(0, m.commit_time_us);
}

TEST_F(PgoutputDecoderTest, CommitCarriesFlagsBothLsnsAndCommitTime) {
  auto m = Decode<CommitMsg>(Frame('C').U8(0).U64(0x1'00000010).U64(0x1'00000040).I64(kPgMicros));
  EXPECT_EQ(0, m.flags);
  EXPECT_EQ(Lsn(0x1'00000010), m.commit_lsn);
  EXPECT_EQ(Lsn(0x1'00000040), m.end_lsn);
  EXPECT_EQ(kUnixMicros, m.commit_time_us);
}

TEST_F(PgoutputDecoderTest, OriginCarriesItsCommitLsnAndName) {
  auto m = Decode<OriginMsg>(Frame('O').U64(0xABC).Str("pg_16390"));
  EXPECT_EQ(Lsn(0xABC), m.origin_commit_lsn);
  EXPECT_EQ("pg_16390", m.name);
}

// --- Relation and type caches -----------------------------------------------

TEST_F(PgoutputDecoderTest, RelationDescribesTheColumnsAndIdentity) {
  auto m = Decode<RelationMsg>(OrdersRelation('f'));
  EXPECT_EQ(kOrders, m.oid);
  EXPECT_EQ("public", m.namespace_name);
  EXPECT_EQ("orders", m.name);
  EXPECT_EQ(RelationMsg::ReplicaIdentity::kFull, m.replica_identity);
  ASSERT_EQ(3u, m.columns.size());
  EXPECT_EQ((RelationColumn{1, "id", kInt4, -1}), m.columns[0]);
  EXPECT_TRUE(m.columns[0].is_key());
  EXPECT_FALSE(m.columns[1].is_key());
  EXPECT_EQ(kNumeric, m.columns[2].type_oid);
  EXPECT_EQ((10 << 16 | 2) + 4, m.columns[2].typmod);
}

TEST_F(PgoutputDecoderTest, RelationIsCachedByOid) {
  auto rel = decoder_.FindRelation(kOrders);
  ASSERT_NE(nullptr, rel);
  EXPECT_EQ("orders", rel->name);
  EXPECT_EQ(nullptr, decoder_.FindRelation(kOrders + 1));
}

TEST_F(PgoutputDecoderTest, EveryReplicaIdentityIsKnown) {
  for (char c : {'d', 'n', 'f', 'i'}) {
    EXPECT_EQ(static_cast<RelationMsg::ReplicaIdentity>(c), Decode<RelationMsg>(OrdersRelation(c)).replica_identity);
  }
  EXPECT_CONTAINS(Error(OrdersRelation('x')), "unknown replica identity 'x'");
}

TEST_F(PgoutputDecoderTest, ARelationWithoutColumnsIsValid) {
  Decode<RelationMsg>(Relation(99, "s", "empty", 'n', {}));
  auto ins = Decode<InsertMsg>(Insert(99, {}));
  EXPECT_TRUE(ins.new_tuple.columns.empty());
}

TEST_F(PgoutputDecoderTest, ARedefinedRelationAppliesToLaterRowsOnly) {
  auto before = Decode<InsertMsg>(Insert(kOrders, {Text("1"), Null(), Null()}));
  Decode<RelationMsg>(Relation(kOrders, "public", "orders", 'd', {{1, "id", kInt4, -1}, {0, "note", kText, -1}}));
  auto after = Decode<InsertMsg>(Insert(kOrders, {Text("2"), Text("x")}));

  EXPECT_EQ(3u, before.relation->columns.size());  // what it was decoded against
  EXPECT_EQ(2u, after.relation->columns.size());
  EXPECT_EQ(2u, decoder_.FindRelation(kOrders)->columns.size());
  EXPECT_CONTAINS(Error(Insert(kOrders, {Text("3"), Null(), Null()})), "tuple has 3 columns");
}

TEST_F(PgoutputDecoderTest, TypeIsDecodedAndCached) {
  auto m = Decode<TypeMsg>(Frame('Y').U32(16400).Str("public").Str("mood"));
  EXPECT_EQ(16400u, m.oid);
  EXPECT_EQ("public", m.namespace_name);
  EXPECT_EQ("mood", m.name);
  const TypeMsg* cached = decoder_.FindType(16400);
  ASSERT_NE(nullptr, cached);
  EXPECT_EQ("mood", cached->name);
  EXPECT_EQ(nullptr, decoder_.FindType(16401));
}

TEST_F(PgoutputDecoderTest, AMalformedRelationLeavesTheCacheAsItWas) {
  // A redefinition with one column, then a trailing byte.
  Error(Relation(kOrders, "public", "orders", 'd', {{1, "id", kInt4, -1}}).bytes() + "!");
  EXPECT_EQ(3u, decoder_.FindRelation(kOrders)->columns.size());
  Error(Frame('R').U32(kOrders + 7).Str("public").Str("half"));
  EXPECT_EQ(nullptr, decoder_.FindRelation(kOrders + 7));
}

// --- Row changes -------------------------------------------------------------

TEST_F(PgoutputDecoderTest, InsertCarriesTheNewTupleAndItsRelation) {
  auto m = Decode<InsertMsg>(Insert(kOrders, {Text("42"), Null(), Text("12.50")}));
  ASSERT_NE(nullptr, m.relation);
  EXPECT_EQ("orders", m.relation->name);
  EXPECT_EQ(Columns({Text("42"), Null(), Text("12.50")}), m.new_tuple.columns);
}

TEST_F(PgoutputDecoderTest, TextValuesAreBytesIncludingEmptyAndNul) {
  auto m = Decode<InsertMsg>(Insert(kOrders, {Text(""), Text(std::string("a\0b", 3)), Text("ünï")}));
  EXPECT_EQ("", m.new_tuple.columns[0].value);
  EXPECT_EQ(Kind::kText, m.new_tuple.columns[0].kind);  // empty text is not null
  EXPECT_EQ(std::string("a\0b", 3), m.new_tuple.columns[1].value);
  EXPECT_EQ("ünï", m.new_tuple.columns[2].value);
}

TEST_F(PgoutputDecoderTest, BinaryColumnsAreKeptAsBinary) {
  auto m = Decode<InsertMsg>(Insert(kOrders, {Binary(std::string("\0\0\0\x2a", 4)), Null(), Null()}));
  EXPECT_EQ(Kind::kBinary, m.new_tuple.columns[0].kind);
  EXPECT_EQ(std::string("\0\0\0\x2a", 4), m.new_tuple.columns[0].value);
}

TEST_F(PgoutputDecoderTest, InsertForAnUnknownRelationIsAnError) {
  EXPECT_CONTAINS(Error(Insert(777, {Text("1")})), "relation oid 777 was not described by a Relation message");
}

TEST_F(PgoutputDecoderTest, UpdateWithoutOldTuple) {
  auto m = Decode<UpdateMsg>(Frame('U').U32(kOrders).U8('N').Tuple({Text("1"), Text("new"), Toast()}));
  EXPECT_EQ(UpdateMsg::OldKind::kNone, m.old_kind);
  EXPECT_FALSE(m.old_tuple.has_value());
  EXPECT_EQ(Columns({Text("1"), Text("new"), Toast()}), m.new_tuple.columns);
  EXPECT_EQ(Kind::kUnchangedToast, m.new_tuple.columns[2].kind);
}

TEST_F(PgoutputDecoderTest, UpdateOfTheKeyCarriesTheOldKey) {
  auto m = Decode<UpdateMsg>(Frame('U')
                                 .U32(kOrders)
                                 .U8('K')
                                 .Tuple({Text("1"), Null(), Null()})
                                 .U8('N')
                                 .Tuple({Text("2"), Text("n"), Text("1.00")}));
  EXPECT_EQ(UpdateMsg::OldKind::kKey, m.old_kind);
  ASSERT_TRUE(m.old_tuple.has_value());
  EXPECT_EQ(Columns({Text("1"), Null(), Null()}), m.old_tuple->columns);
  EXPECT_EQ(Columns({Text("2"), Text("n"), Text("1.00")}), m.new_tuple.columns);
}

TEST_F(PgoutputDecoderTest, UpdateWithReplicaIdentityFullCarriesTheOldRow) {
  auto m = Decode<UpdateMsg>(Frame('U')
                                 .U32(kOrders)
                                 .U8('O')
                                 .Tuple({Text("1"), Text("old"), Null()})
                                 .U8('N')
                                 .Tuple({Text("1"), Text("new"), Null()}));
  EXPECT_EQ(UpdateMsg::OldKind::kFull, m.old_kind);
  EXPECT_EQ(Columns({Text("1"), Text("old"), Null()}), m.old_tuple->columns);
}

TEST_F(PgoutputDecoderTest, UpdateNeedsANewTuple) {
  EXPECT_CONTAINS(Error(Frame('U').U32(kOrders).U8('K').Tuple({Text("1"), Null(), Null()})), "truncated tuple tag");
  EXPECT_CONTAINS(Error(Frame('U').U32(kOrders).U8('K').Tuple({Text("1"), Null(), Null()}).U8('K')),
                  "expected tuple tag 'K', 'O' or 'N', got 'K'");
  EXPECT_CONTAINS(Error(Frame('U').U32(kOrders).U8('X')), "got 'X'");
}

TEST_F(PgoutputDecoderTest, DeleteCarriesTheOldKeyOrTheOldRow) {
  auto key = Decode<DeleteMsg>(Frame('D').U32(kOrders).U8('K').Tuple({Text("7"), Null(), Null()}));
  EXPECT_EQ(DeleteMsg::OldKind::kKey, key.old_kind);
  EXPECT_EQ(Columns({Text("7"), Null(), Null()}), key.old_tuple.columns);
  EXPECT_EQ("orders", key.relation->name);

  auto full = Decode<DeleteMsg>(Frame('D').U32(kOrders).U8('O').Tuple({Text("7"), Text("x"), Text("3")}));
  EXPECT_EQ(DeleteMsg::OldKind::kFull, full.old_kind);
  EXPECT_EQ(Columns({Text("7"), Text("x"), Text("3")}), full.old_tuple.columns);
}

TEST_F(PgoutputDecoderTest, DeleteWithANewTupleIsAnError) {
  EXPECT_CONTAINS(Error(Frame('D').U32(kOrders).U8('N').Tuple({Text("7"), Null(), Null()})),
                  "expected old tuple tag 'K' or 'O', got 'N'");
  EXPECT_CONTAINS(Error(Frame('D').U32(555).U8('K').Tuple({Text("7")})), "relation oid 555");
}

TEST_F(PgoutputDecoderTest, TruncateListsItsRelationsAndOptions) {
  Decode<RelationMsg>(Relation(20000, "app", "items", 'd', {{1, "id", kInt4, -1}}));
  auto m = Decode<TruncateMsg>(
      Frame('T').U32(2).U8(TruncateMsg::kCascade | TruncateMsg::kRestartIdentity).U32(kOrders).U32(20000));
  EXPECT_EQ(TruncateMsg::kCascade | TruncateMsg::kRestartIdentity, m.options);
  ASSERT_EQ(2u, m.relations.size());
  EXPECT_EQ("orders", m.relations[0]->name);
  EXPECT_EQ("items", m.relations[1]->name);
}

TEST_F(PgoutputDecoderTest, TruncateOfAnUnknownRelationIsAnError) {
  EXPECT_CONTAINS(Error(Frame('T').U32(2).U8(0).U32(kOrders).U32(31337)), "relation oid 31337");
}

TEST_F(PgoutputDecoderTest, TruncateWithAnImpossibleRelationCountFailsWithoutAllocating) {
  EXPECT_CONTAINS(Error(Frame('T').U32(0xFFFFFFFF).U8(0).U32(kOrders)), "run past the end");
}

TEST_F(PgoutputDecoderTest, LogicalMessageCarriesFlagsLsnPrefixAndContent) {
  auto m = Decode<LogicalMsg>(Frame('M').U8(1).U64(0x2'00000100).Str("outbox").I32(13).Raw(R"({"id":"x1"}  )"));
  EXPECT_TRUE(m.transactional());
  EXPECT_EQ(Lsn(0x2'00000100), m.lsn);
  EXPECT_EQ("outbox", m.prefix);
  EXPECT_EQ(R"({"id":"x1"}  )", m.content);

  auto plain = Decode<LogicalMsg>(Frame('M').U8(0).U64(1).Str("").I32(3).Raw(std::string("\0\1\2", 3)));
  EXPECT_FALSE(plain.transactional());
  EXPECT_EQ("", plain.prefix);
  EXPECT_EQ(std::string("\0\1\2", 3), plain.content);  // content is bytes, NULs included
}

// --- What protocol 1 does not contain ----------------------------------------

TEST_F(PgoutputDecoderTest, StreamingAndTwoPhaseMessagesAreErrors) {
  for (char type : {'S', 'E', 'c', 'A', 'b', 'P', 'K', 'r', 'p'}) {
    auto r = decoder_.Decode(Frame(type).U32(1).U32(2).U32(3).U32(4).bytes());
    ASSERT_FALSE(r.ok()) << type;
    EXPECT_CONTAINS(r.status().message(), "protocol 2 or later");
  }
}

TEST_F(PgoutputDecoderTest, AnUnknownMessageTypeIsAnErrorAtByteZero) {
  EXPECT_CONTAINS(Error(Frame('Z').U32(1)), "at byte 0: unknown message type 'Z'");
  EXPECT_CONTAINS(Error(std::string(1, '\x07')), "unknown message type 0x07");
}

TEST_F(PgoutputDecoderTest, AnEmptyMessageIsAnError) { EXPECT_CONTAINS(Error(""), "truncated message type"); }

// --- Malformed frames ----------------------------------------------------------

TEST_F(PgoutputDecoderTest, ErrorsNameTheMessageTypeAndByteOffset) {
  // 'I' oid(4) 'N' ncols(2) -> first column kind is at byte 8.
  EXPECT_EQ("malformed pgoutput Insert message: at byte 8: unknown tuple column kind 'x' for column \"id\"",
            Error(Frame('I').U32(kOrders).U8('N').U16(3).U8('x')));
}

TEST_F(PgoutputDecoderTest, ATupleWithTheWrongColumnCountIsAnError) {
  EXPECT_CONTAINS(Error(Insert(kOrders, {Text("1"), Null()})),
                  "at byte 6: tuple has 2 columns but relation \"public.orders\" (oid 16385) has 3");
  EXPECT_CONTAINS(Error(Insert(kOrders, {Text("1"), Null(), Null(), Null()})), "tuple has 4 columns");
}

TEST_F(PgoutputDecoderTest, AValueLengthPastTheEndIsAnError) {
  EXPECT_CONTAINS(Error(Frame('I').U32(kOrders).U8('N').U16(3).U8('t').I32(100).Raw("short")),
                  "column value of 100 bytes runs past the end (5 bytes left)");
}

TEST_F(PgoutputDecoderTest, ANegativeValueLengthIsAnError) {
  EXPECT_CONTAINS(Error(Frame('I').U32(kOrders).U8('N').U16(3).U8('t').I32(-1)),
                  "at byte 9: negative length -1 of column \"id\"");
  EXPECT_CONTAINS(Error(Frame('M').U8(1).U64(1).Str("p").I32(-5)), "negative content length -5");
}

TEST_F(PgoutputDecoderTest, AStringWithoutNulIsAnError) {
  EXPECT_CONTAINS(Error(Frame('O').U64(1).Raw("no-terminator")), "string origin name has no terminating NUL");
  EXPECT_CONTAINS(Error(Frame('R').U32(1).Str("public").Raw("orders")), "string relation name has no terminating NUL");
}

TEST_F(PgoutputDecoderTest, TrailingBytesAreAnErrorNotSkipped) {
  EXPECT_CONTAINS(Error(Insert(kOrders, {Text("1"), Null(), Null()}).bytes() + "x"), "1 unexpected trailing bytes");
  EXPECT_CONTAINS(Error(Frame('C').U8(0).U64(1).U64(2).I64(3).U32(0)), "Commit message: at byte 26: 4 unexpected");
}

TEST_F(PgoutputDecoderTest, ARelationClaimingMoreColumnsThanItHasIsAnError) {
  EXPECT_CONTAINS(Error(Frame('R').U32(5).Str("s").Str("t").U8('d').U16(0xFFFF).U8(0).Str("a").U32(1).I32(-1)),
                  "truncated column flags");
}

// Every valid frame type, with every column kind and both old-tuple forms.
std::vector<std::string> ValidFrames() {
  return {
      Frame('B').U64(0x16'B374D848).I64(kPgMicros).U32(740),
      Frame('C').U8(0).U64(1).U64(2).I64(kPgMicros),
      Frame('O').U64(9).Str("origin"),
      OrdersRelation(),
      Frame('Y').U32(16400).Str("public").Str("mood"),
      Insert(kOrders, {Text("42"), Null(), Text("12.50")}),
      Frame('U')
          .U32(kOrders)
          .U8('O')
          .Tuple({Text("1"), Toast(), Null()})
          .U8('N')
          .Tuple({Text("2"), Toast(), Binary("b")}),
      Frame('D').U32(kOrders).U8('K').Tuple({Text("7"), Null(), Null()}),
      Frame('T').U32(1).U8(0).U32(kOrders),
      Frame('M').U8(1).U64(5).Str("outbox").I32(2).Raw("{}"),
  };
}

TEST_F(PgoutputDecoderTest, EveryProperPrefixOfAValidFrameIsAnError) {
  for (const std::string& frame : ValidFrames()) {
    ASSERT_TRUE(decoder_.Decode(frame).ok()) << "frame type " << frame[0];
    for (std::size_t n = 0; n < frame.size(); ++n) {
      // An exact-size copy so that AddressSanitizer sees any read past the end.
      std::vector<char> prefix(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(n));
      auto r = decoder_.Decode(std::string_view(prefix.data(), prefix.size()));
      EXPECT_FALSE(r.ok()) << "frame type '" << frame[0] << "' truncated to " << n << " of " << frame.size()
                           << " bytes was accepted";
    }
  }
}

TEST_F(PgoutputDecoderTest, CorruptingAnyByteNeverCrashes) {
  for (const std::string& frame : ValidFrames()) {
    for (std::size_t i = 0; i < frame.size(); ++i) {
      for (int b : {0x00, 0x01, 0x7f, 0x80, 0xff, int{'n'}, int{'u'}, int{'t'}, int{'N'}, int{'K'}, int{'O'}}) {
        std::string bad = frame;
        bad[i] = static_cast<char>(b);
        PgoutputDecoder fresh = decoder_;  // keep the fixture's cache clean
        auto r = fresh.Decode(bad);
        (void)r.ok();  // either outcome is fine; not crashing is the point
      }
    }
  }
}

// --- Frames recorded from PostgreSQL 15 (fixtures/record.sql) -------------------

// The recorded session, decoded in order by one decoder, split into its
// transactions (Begin .. Commit) and the messages outside any transaction.
class RecordedStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(OUTBOXD_CDC_FIXTURES_DIR)) {
      if (e.path().extension() == ".bin") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());  // NNN_<type>.bin: stream order
    ASSERT_EQ(38u, files.size());
    std::vector<PgoutputMessage>* tx = nullptr;
    for (const auto& path : files) {
      std::ifstream in(path, std::ios::binary);
      std::string frame((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      ASSERT_FALSE(frame.empty()) << path;
      ASSERT_EQ(frame[0], path.filename().string()[4]) << path;  // the name tells the type
      auto msg = decoder_.Decode(frame);
      ASSERT_TRUE(msg.ok()) << path << ": " << msg.status().message();
      if (std::holds_alternative<BeginMsg>(*msg)) tx = &transactions_.emplace_back();
      (tx != nullptr ? *tx : outside_).push_back(*msg);
      if (std::holds_alternative<CommitMsg>(*msg)) tx = nullptr;
    }
  }

  // The n-th transaction (1-based, as numbered in record.sql), Begin to Commit.
  const std::vector<PgoutputMessage>& Tx(std::size_t n) { return transactions_.at(n - 1); }

  template <typename T>
  static const T& As(const std::vector<PgoutputMessage>& msgs, std::size_t i) {
    static const T kEmpty{};
    EXPECT_LT(i, msgs.size());
    if (i >= msgs.size()) return kEmpty;
    EXPECT_TRUE(std::holds_alternative<T>(msgs[i])) << "message " << i << " has variant index " << msgs[i].index();
    return std::holds_alternative<T>(msgs[i]) ? std::get<T>(msgs[i]) : kEmpty;
  }

  PgoutputDecoder decoder_;
  std::vector<std::vector<PgoutputMessage>> transactions_;
  std::vector<PgoutputMessage> outside_;
};

TEST_F(RecordedStreamTest, EveryProperPrefixOfARecordedFrameIsAnError) {
  for (const auto& path : std::filesystem::directory_iterator(OUTBOXD_CDC_FIXTURES_DIR)) {
    if (path.path().extension() != ".bin") continue;
    std::ifstream in(path.path(), std::ios::binary);
    std::string frame((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (std::size_t n = 0; n < frame.size(); ++n) {
      std::vector<char> prefix(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(n));
      PgoutputDecoder d = decoder_;  // knows every relation of the session
      EXPECT_FALSE(d.Decode(std::string_view(prefix.data(), prefix.size())).ok())
          << path.path().filename() << " truncated to " << n << " bytes was accepted";
    }
  }
}

TEST_F(RecordedStreamTest, EightTransactionsEachFramedByBeginAndAMatchingCommit) {
  ASSERT_EQ(8u, transactions_.size());
  Lsn previous_end;
  for (const auto& tx : transactions_) {
    const auto& begin = As<BeginMsg>(tx, 0);
    const auto& commit = As<CommitMsg>(tx, tx.size() - 1);
    EXPECT_EQ(begin.final_lsn, commit.commit_lsn);
    EXPECT_LT(commit.commit_lsn, commit.end_lsn);
    EXPECT_LE(previous_end, commit.commit_lsn);  // commit order
    EXPECT_EQ(begin.commit_time_us, commit.commit_time_us);
    EXPECT_EQ(0, commit.flags);
    previous_end = commit.end_lsn;
  }
}

TEST_F(RecordedStreamTest, TheFirstUseOfATableSendsItsTypesAndRelation) {
  const auto& tx = Tx(1);
  ASSERT_EQ(6u, tx.size());
  const auto& mood = As<TypeMsg>(tx, 1);
  EXPECT_EQ("public", mood.namespace_name);
  EXPECT_EQ("mood", mood.name);
  const auto& orders = As<RelationMsg>(tx, 2);
  EXPECT_EQ("public", orders.namespace_name);
  EXPECT_EQ("orders", orders.name);
  EXPECT_EQ(RelationMsg::ReplicaIdentity::kDefault, orders.replica_identity);
  EXPECT_EQ((std::vector<RelationColumn>{{1, "id", 23, -1},
                                         {0, "note", 25, -1},
                                         {0, "total", 1700, (10 << 16 | 2) + 4},  // numeric(10,2)
                                         {0, "feel", mood.oid, -1},
                                         {0, "big", 25, -1}}),
            orders.columns);
  EXPECT_EQ(orders.oid, decoder_.FindRelation(orders.oid)->oid);
  EXPECT_NE(nullptr, decoder_.FindType(mood.oid));
}

TEST_F(RecordedStreamTest, InsertsCarryTextValuesNullsAndDetoastedValues) {
  const auto& tx = Tx(1);
  EXPECT_EQ(Columns({Text("1"), Text("first"), Text("12.50"), Text("happy"), Text(std::string(3000, 'x'))}),
            As<InsertMsg>(tx, 3).new_tuple.columns);
  EXPECT_EQ(Columns({Text("2"), Null(), Null(), Null(), Null()}), As<InsertMsg>(tx, 4).new_tuple.columns);
  EXPECT_EQ("orders", As<InsertMsg>(tx, 4).relation->name);
}

TEST_F(RecordedStreamTest, AnUpdateLeavingAToastedValueAloneSendsTheUnchangedMarker) {
  const auto& u = As<UpdateMsg>(Tx(2), 1);
  EXPECT_EQ(UpdateMsg::OldKind::kNone, u.old_kind);
  EXPECT_FALSE(u.old_tuple.has_value());
  EXPECT_EQ(Columns({Text("1"), Text("second"), Text("12.50"), Text("happy"), Toast()}), u.new_tuple.columns);
}

TEST_F(RecordedStreamTest, AnUpdateOfThePrimaryKeySendsTheOldKey) {
  const auto& u = As<UpdateMsg>(Tx(3), 1);
  EXPECT_EQ(UpdateMsg::OldKind::kKey, u.old_kind);
  EXPECT_EQ(Columns({Text("2"), Null(), Null(), Null(), Null()}), u.old_tuple->columns);
  EXPECT_EQ(Columns({Text("3"), Null(), Null(), Null(), Null()}), u.new_tuple.columns);
}

TEST_F(RecordedStreamTest, ReplicaIdentityFullSendsWholeOldRows) {
  const auto& tx = Tx(4);
  ASSERT_EQ(6u, tx.size());
  const auto& audit = As<RelationMsg>(tx, 1);
  EXPECT_EQ("audit", audit.name);
  EXPECT_EQ(RelationMsg::ReplicaIdentity::kFull, audit.replica_identity);
  EXPECT_TRUE(audit.columns[0].is_key() && audit.columns[1].is_key());  // FULL: every column
  EXPECT_EQ(Columns({Text("1"), Text(R"({"a": 1})")}), As<InsertMsg>(tx, 2).new_tuple.columns);
  const auto& u = As<UpdateMsg>(tx, 3);
  EXPECT_EQ(UpdateMsg::OldKind::kFull, u.old_kind);
  EXPECT_EQ(Columns({Text("1"), Text(R"({"a": 1})")}), u.old_tuple->columns);
  EXPECT_EQ(Columns({Text("1"), Text(R"({"a": 2})")}), u.new_tuple.columns);
  const auto& d = As<DeleteMsg>(tx, 4);
  EXPECT_EQ(DeleteMsg::OldKind::kFull, d.old_kind);
  EXPECT_EQ(Columns({Text("1"), Text(R"({"a": 2})")}), d.old_tuple.columns);
}

TEST_F(RecordedStreamTest, ADeleteSendsTheOldKeyWithOtherColumnsNull) {
  const auto& d = As<DeleteMsg>(Tx(5), 1);
  EXPECT_EQ(DeleteMsg::OldKind::kKey, d.old_kind);
  EXPECT_EQ(Columns({Text("3"), Null(), Null(), Null(), Null()}), d.old_tuple.columns);
}

TEST_F(RecordedStreamTest, LogicalMessagesInsideAndOutsideTransactions) {
  const auto& tx = Tx(6);
  const auto& m = As<LogicalMsg>(tx, 1);
  EXPECT_TRUE(m.transactional());
  EXPECT_EQ("outbox", m.prefix);
  EXPECT_EQ(R"({"id":"e1","aggregatetype":"order"})", m.content);
  EXPECT_LT(m.lsn, As<BeginMsg>(tx, 0).final_lsn);
  EXPECT_EQ(Columns({Text("4"), Text("with message"), Null(), Null(), Null()}), As<InsertMsg>(tx, 2).new_tuple.columns);

  ASSERT_EQ(1u, outside_.size());
  const auto& plain = As<LogicalMsg>(outside_, 0);
  EXPECT_FALSE(plain.transactional());
  EXPECT_EQ("note", plain.prefix);
  EXPECT_EQ("not transactional", plain.content);
}

TEST_F(RecordedStreamTest, TruncateNamesEveryTableAndItsOptions) {
  const auto& tx = Tx(7);
  ASSERT_EQ(6u, tx.size());  // relations are sent again: TRUNCATE invalidated them
  const auto& t = As<TruncateMsg>(tx, 4);
  EXPECT_EQ(TruncateMsg::kCascade | TruncateMsg::kRestartIdentity, t.options);
  ASSERT_EQ(2u, t.relations.size());
  EXPECT_EQ("orders", t.relations[0]->name);
  EXPECT_EQ("audit", t.relations[1]->name);
}

TEST_F(RecordedStreamTest, AReplayedTransactionNamesItsOriginAndKeepsItsCommitTime) {
  const auto& tx = Tx(8);
  ASSERT_EQ(6u, tx.size());
  const auto& o = As<OriginMsg>(tx, 1);
  EXPECT_EQ("upstream", o.name);
  EXPECT_EQ("0/ABCDEF", o.origin_commit_lsn.ToString());
  // pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-02 03:04:05+00')
  EXPECT_EQ(1'704'164'645'000'000, As<BeginMsg>(tx, 0).commit_time_us);
  EXPECT_EQ(Columns({Text("10"), Text("from upstream"), Null(), Null(), Null()}),
            As<InsertMsg>(tx, 4).new_tuple.columns);
}

}  // namespace
}  // namespace outboxd
