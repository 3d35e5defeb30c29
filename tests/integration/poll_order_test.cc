// Per-key order of the poll source under ordinary traffic that used to break
// it: transactions that stay open while others write, sequences that cache
// values per session, rolled-back work that burns positions, and a start-up
// below open transactions. The built outboxd relays a real table into a real
// broker; kcat reads the topic back and every key's counter must rise.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "common/pg.h"
#include "config/config.h"
#include "tests/integration/metrics_support.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct CommittedRow {
  std::string key;
  int n;
};

// Writer threads that own their keys. Each thread drives several sessions,
// each session owns a few keys and writes them with a per-key counter n in
// the payload ({"n": N}), so a key's rows are always written by one session
// (its sequence values rise, also with a cached sequence) and n gives the
// order in which they committed. Most transactions insert one row; one in
// five inserts 1-50 rows, and one in ten of those stays open 0.2-3 s before
// COMMIT while the thread drives its other sessions; one in fifty rolls
// back. The threads pace themselves to `rows_per_second` in total.
class KeyedWriters {
 public:
  struct Options {
    int threads = 4;
    int sessions_per_thread = 5;
    int keys_per_session = 5;
    int rows_per_second = 1000;
    Clock::duration duration = 60s;
  };

  KeyedWriters(std::string conninfo, std::string type, Options options)
      : conninfo_(std::move(conninfo)), type_(std::move(type)), options_(options) {}
  ~KeyedWriters() { Join(); }

  void Start() {
    for (int t = 0; t < options_.threads; ++t) {
      threads_.emplace_back([this, t] { Run(t); });
    }
  }
  void Join() {
    for (auto& th : threads_) {
      if (th.joinable()) th.join();
    }
  }
  int failures() const { return failures_; }
  int held_transactions() const { return held_; }
  std::map<std::string, CommittedRow> committed() {
    std::lock_guard lock(mu_);
    return committed_;
  }

 private:
  struct Session {
    std::optional<PgConn> conn;
    std::vector<std::string> keys;
    std::map<std::string, int> next_n;
    // An open transaction: its rows (id -> row) and when it commits or
    // rolls back.
    std::map<std::string, CommittedRow> open_rows;
    Clock::time_point end_at{};
    bool rollback = false;
  };

  void Run(int t) {
    std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1u);
    std::vector<Session> sessions(static_cast<std::size_t>(options_.sessions_per_thread));
    for (std::size_t s = 0; s < sessions.size(); ++s) {
      auto conn = PgConn::Connect(conninfo_, std::nullopt, "order-writer");
      if (!conn.ok()) {
        ++failures_;
        return;
      }
      sessions[s].conn = std::move(conn).value();
      for (int k = 0; k < options_.keys_per_session; ++k) {
        const std::string key = "t" + std::to_string(t) + "s" + std::to_string(s) + "k" + std::to_string(k);
        sessions[s].keys.push_back(key);
        sessions[s].next_n[key] = 0;
      }
    }
    const double rows_per_second = static_cast<double>(options_.rows_per_second) / options_.threads;
    const Clock::time_point start = Clock::now();
    Clock::time_point next_at = start;
    std::size_t turn = 0;
    while (Clock::now() - start < options_.duration) {
      for (Session& s : sessions) {
        if (!s.open_rows.empty() && Clock::now() >= s.end_at) End(s);
      }
      Session& s = sessions[turn++ % sessions.size()];
      if (!s.open_rows.empty()) {
        // Every session of this thread may be in a long transaction: let
        // the earliest one end (the simulated request finishing).
        bool all_open = true;
        for (const Session& o : sessions) all_open = all_open && !o.open_rows.empty();
        if (all_open) std::this_thread::sleep_for(10ms);
        continue;
      }
      const bool multi = rng() % 5 == 0;
      const int rows = multi ? 1 + static_cast<int>(rng() % 50) : 1;
      const bool hold = multi && rng() % 10 == 0;
      const bool rollback = rng() % 50 == 0;
      Write(s, rng, rows, hold, rollback);
      next_at += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(rows / rows_per_second));
      std::this_thread::sleep_until(next_at);  // pacing the workload, not waiting for it
    }
    for (Session& s : sessions) {
      if (!s.open_rows.empty()) End(s);
    }
  }

  void Write(Session& s, std::mt19937& rng, int rows, bool hold, bool rollback) {
    std::string sql = "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ";
    std::vector<CommittedRow> written;
    for (int i = 0; i < rows; ++i) {
      const std::string& key = s.keys[rng() % s.keys.size()];
      const int n = s.next_n[key]++;
      written.push_back({key, n});
      sql += (i ? "," : "");
      // The payload names the transaction too ({"n": N, "tx": XID}).
      sql += "('" + type_ + "','" + key + "','E',jsonb_build_object('n', " + std::to_string(n) +
             ", 'tx', txid_current()))";
    }
    const bool in_transaction = hold || rollback;
    if (in_transaction && !s.conn->Exec("BEGIN").ok()) {
      ++failures_;
      return;
    }
    auto r = s.conn->Exec(sql + " RETURNING id::text");
    if (!r.ok() || PQntuples(r->get()) != rows) {
      ++failures_;
      return;
    }
    for (int i = 0; i < rows; ++i) s.open_rows[PQgetvalue(r->get(), i, 0)] = written[static_cast<std::size_t>(i)];
    s.rollback = rollback;
    if (hold) {
      ++held_;
      s.end_at = Clock::now() + std::chrono::milliseconds(200 + rng() % 2800);
    } else {
      End(s, in_transaction);
    }
  }

  void End(Session& s, bool in_transaction = true) {
    if (in_transaction && !s.conn->Exec(s.rollback ? "ROLLBACK" : "COMMIT").ok()) ++failures_;
    if (s.rollback) {
      // Nothing was written: the keys' counters go back (the session owns
      // them and wrote nothing else meanwhile).
      for (const auto& [id, row] : s.open_rows) s.next_n[row.key] = std::min(s.next_n[row.key], row.n);
    } else {
      std::lock_guard lock(mu_);
      for (const auto& [id, row] : s.open_rows) committed_[id] = row;
    }
    s.open_rows.clear();
  }

  const std::string conninfo_;
  const std::string type_;
  const Options options_;
  std::vector<std::thread> threads_;
  std::atomic<int> failures_{0};
  std::atomic<int> held_{0};
  std::mutex mu_;
  std::map<std::string, CommittedRow> committed_;  // by id; guarded by mu_
};

int PayloadN(const KafkaRecord& r) {
  const std::string& v = *r.value;
  return std::atoi(v.c_str() + v.find(':') + 1);
}

// Exactly once: PostgreSQL transactions (the payload's "tx") whose records
// in one partition have a missing offset between them — a transaction
// marker: they were split over Kafka transactions.
std::size_t SplitTransactions(std::vector<KafkaRecord> records) {
  std::sort(records.begin(), records.end(), [](const KafkaRecord& a, const KafkaRecord& b) {
    return std::tie(a.partition, a.offset) < std::tie(b.partition, b.offset);
  });
  std::map<std::pair<int, std::string>, std::pair<int64_t, int64_t>> span;  // (partition, tx) -> first, last
  std::map<int, std::set<int64_t>> offsets;
  for (const KafkaRecord& r : records) {
    const std::size_t at = r.value ? r.value->find("\"tx\": ") : std::string::npos;
    if (at == std::string::npos) continue;
    const std::string tx = r.value->substr(at + 6, r.value->find_first_of(",}", at) - at - 6);
    auto [it, fresh] = span.try_emplace({r.partition, tx}, r.offset, r.offset);
    if (!fresh) it->second.second = r.offset;
    offsets[r.partition].insert(r.offset);
  }
  std::size_t split = 0;
  for (const auto& [where, range] : span) {
    const std::set<int64_t>& seen = offsets[where.first];
    const auto count = std::distance(seen.find(range.first), seen.upper_bound(range.second));
    if (count != range.second - range.first + 1) ++split;
  }
  return split;
}

// What a topic says about per-key order: each id counted once (its first
// record); a record whose n is below an n already seen for its key is a
// violation.
struct OrderCheck {
  std::size_t records = 0;
  std::size_t duplicates = 0;
  std::size_t violations = 0;
  std::vector<std::string> examples;  // the first few violations
  std::set<std::string> ids;

  explicit OrderCheck(const std::vector<KafkaRecord>& topic) {
    std::map<std::string, int> last_n;
    for (const KafkaRecord& r : topic) {
      ++records;
      if (!ids.insert(HeaderValue(r, "id")).second) {
        ++duplicates;
        continue;
      }
      const int n = PayloadN(r);
      auto it = last_n.find(*r.key);
      if (it != last_n.end() && n < it->second) {
        ++violations;
        if (examples.size() < 5) {
          examples.push_back("key " + *r.key + ": n=" + std::to_string(n) + " after n=" + std::to_string(it->second) +
                             " (offset " + std::to_string(r.offset) + ")");
        }
      }
      if (it == last_n.end() || n > it->second) last_n[*r.key] = n;
    }
  }
  std::string Describe() const {
    std::string out = std::to_string(records) + " records, " + std::to_string(ids.size()) + " ids, " +
                      std::to_string(duplicates) + " duplicates, " + std::to_string(violations) + " order violations";
    for (const std::string& e : examples) out += "\n  " + e;
    return out;
  }
};

class PollOrderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDatabase>();
    type_ = UniqueTopic("order");
    topic_ = "outbox.event." + type_;
    port_ = FreePort();
    KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic_, 3, {});
  }

  void CreateTable(bool mark, int cache = 1) {
    db_->Exec(OutboxDdl("outbox", mark));
    db_->Exec(NotifyTriggerDdl("outbox", "outbox"));
    if (cache > 1) db_->Exec("ALTER TABLE outbox ALTER COLUMN seq SET CACHE " + std::to_string(cache));
    mark_ = mark;
  }

  std::string Config() const {
    return "[postgres]\nconninfo = \"" + db_->conninfo() + "\"\n" + "[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap + "\"\n" +
           (exactly_once_ ? "delivery = \"exactly-once\"\nposition_topic = \"" + topic_ + ".positions\"\n" : "") +
           HttpSection(port_) + "[log]\nlevel = \"" +
           (std::getenv("OUTBOXD_ORDER_TEST_LOG") ? std::getenv("OUTBOXD_ORDER_TEST_LOG") : "info") + "\"\n" +
           "[[outbox]]\ntable = \"public.outbox\"\norder_by = \"seq\"\nnotify_channel = \"outbox\"\n" +
           (mark_ ? "after_delivery = \"mark\"\nsent_column = \"sent_at\"\n" : "");
  }

  int64_t Unsent() const {
    return db_->QueryInt64(std::string("SELECT count(*) FROM outbox") + (mark_ ? " WHERE sent_at IS NULL" : ""));
  }
  bool AllSent(std::chrono::milliseconds deadline = 120s) const {
    return WaitUntil([&] { return Unsent() == 0; }, deadline, 5ms);
  }

  // Inserts one row of `key` with counter n on `conn` (in whatever
  // transaction it has open).
  void InsertOn(PgConn& conn, const std::string& key, int n) {
    auto r = conn.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', '" +
                       key + "', 'E', '{\"n\": " + std::to_string(n) + "}')");
    ASSERT_TRUE(r.ok()) << r.status().message();
  }
  void Insert(const std::string& key, int n) {
    db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', '" + key +
              "', 'E', '{\"n\": " + std::to_string(n) + "}')");
  }
  // `rows` rows of keys other-0..other-99 in one transaction.
  void InsertOthers(int rows) {
    db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type_ +
              "', 'other-' || (g % 100), 'E', '{\"n\": 0}' FROM generate_series(1, " + std::to_string(rows) + ") g");
  }
  PgConn Session() const {
    auto conn = PgConn::Connect(db_->conninfo(), std::nullopt, "test-session");
    if (!conn.ok()) throw HarnessError(conn.status().message());
    return std::move(conn).value();
  }

  // The n values of `key` in topic order (first record of each id).
  std::vector<int> KeyOrder(const std::vector<KafkaRecord>& records, const std::string& key) {
    std::vector<int> out;
    std::set<std::string> seen;
    for (const KafkaRecord& r : records) {
      if (r.key == key && seen.insert(HeaderValue(r, "id")).second) out.push_back(PayloadN(r));
    }
    return out;
  }

  void ExpectNothingFoundBySweep() {
    Scrape s = ScrapeMetrics(port_);
    const Scrape::Labels table{{"table", "public.outbox"}};
    EXPECT_EQ(0, s.Or0("outboxd_poll_sweep_rows_total", table)) << s.text();
    std::printf("late rows published in order from gaps: %.0f, gaps now: %.0f\n",
                s.Or0("outboxd_poll_late_rows_total", table), s.Or0("outboxd_poll_gaps", table));
  }

  void RunKeyedWorkload(bool mark, int cache, Delivery delivery = Delivery::kAtLeastOnce) {
    CreateTable(mark, cache);
    exactly_once_ = delivery == Delivery::kExactlyOnce;
    OutboxdProcess outboxd(Config());
    outboxd.Start();
    ASSERT_TRUE(outboxd.WaitForLog("relaying \"public.outbox\"", 30s)) << outboxd.Log();
    KeyedWriters::Options options;
    if (const char* s = std::getenv("OUTBOXD_ORDER_TEST_SECONDS"))
      options.duration = std::chrono::seconds(std::atoi(s));
    KeyedWriters writers(db_->conninfo(), type_, options);
    writers.Start();
    writers.Join();
    ASSERT_EQ(0, writers.failures());
    const auto committed = writers.committed();
    ASSERT_TRUE(AllSent()) << outboxd.Log();
    ExpectNothingFoundBySweep();
    outboxd.Terminate();
    ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

    const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, committed.size(), 120s);
    const OrderCheck check(records);
    std::printf("%zu rows committed by %d sessions (%d transactions held open 0.2-3 s): %s\n", committed.size(),
                options.threads * options.sessions_per_thread, writers.held_transactions(), check.Describe().c_str());
    EXPECT_EQ(0u, check.violations) << check.Describe();
    EXPECT_EQ(committed.size(), check.ids.size()) << "every committed row, once or more";
    if (exactly_once_) {
      EXPECT_EQ(0u, check.duplicates) << "exactly once";
      const std::size_t split = SplitTransactions(records);
      std::printf("PostgreSQL transactions split over Kafka transactions: %zu\n", split);
      EXPECT_EQ(0u, split);
    }
    for (const auto& [id, row] : committed) {
      if (!check.ids.count(id)) {
        ADD_FAILURE() << "committed row " << id << " (" << row.key << " n=" << row.n << ") never published";
        break;
      }
    }
  }

  std::unique_ptr<TestDatabase> db_;
  std::string type_;
  std::string topic_;
  int port_ = 0;
  bool mark_ = false;
  bool exactly_once_ = false;
};

// The workload of issue 8: 20 sessions, 100 keys, ~1,000 rows/s for 60 s,
// some transactions held open up to 3 s.
TEST_F(PollOrderTest, LongTransactionsNeverReorderAKeyDeleteMode) { RunKeyedWorkload(false, 1); }
TEST_F(PollOrderTest, LongTransactionsNeverReorderAKeyMarkMode) { RunKeyedWorkload(true, 1); }
// Each session takes 100 positions at a time and uses them in later
// transactions: positions jump by hundreds, and gaps stay fillable for as
// long as the session lives.
TEST_F(PollOrderTest, LongTransactionsNeverReorderAKeyWithACachedSequence) { RunKeyedWorkload(false, 100); }
// The same exactly once: Kafka transactions group the rows of many claims and
// gap reads, and a read_committed reader sees each row once, in key order.
TEST_F(PollOrderTest, LongTransactionsNeverReorderAKeyExactlyOnce) {
  RunKeyedWorkload(true, 1, Delivery::kExactlyOnce);
}

// A transaction holds rows of one key open for 30 s while 50,000 rows of
// other keys are published; its rows go out before the key's next row, and
// the other keys were not held back meanwhile.
TEST_F(PollOrderTest, AThirtySecondTransactionKeepsItsKeyInOrderAndHoldsNothingElseBack) {
  CreateTable(false);
  OutboxdProcess outboxd(Config());
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("relaying \"public.outbox\"", 30s)) << outboxd.Log();

  PgConn held = Session();
  ASSERT_TRUE(held.Exec("BEGIN").ok());
  for (int n = 0; n < 10; ++n) InsertOn(held, "held", n);
  const Clock::time_point begun = Clock::now();
  // 50,000 rows of other keys, in 500 transactions over ~25 s.
  for (int i = 0; i < 500; ++i) {
    InsertOthers(100);
    std::this_thread::sleep_until(begun + i * 50ms);  // pacing the writes
  }
  ASSERT_TRUE(AllSent(60s)) << "rows of other keys waited for the open transaction\n" << outboxd.Log();
  const auto before_commit = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 50'000, 60s);
  EXPECT_EQ(50'000u, Ids(before_commit).size());
  ASSERT_LT(Clock::now() - begun, 30s) << "the machine is too slow for this scenario";
  std::this_thread::sleep_until(begun + 30s);  // the transaction's own 30 s

  ASSERT_TRUE(held.Exec("COMMIT").ok());
  const Clock::time_point committed = Clock::now();
  Insert("held", 10);
  ASSERT_TRUE(AllSent()) << outboxd.Log();
  const auto latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - committed);
  std::printf("the held transaction's rows were deleted (acknowledged) %lld ms after its COMMIT\n",
              static_cast<long long>(latency.count()));

  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 50'011, 60s);
  EXPECT_EQ((std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}), KeyOrder(records, "held"));
  ExpectNothingFoundBySweep();
}

// outboxd starts while a transaction holds a position far below the first
// visible row: 11,000 rolled-back positions and a jump of a million lie
// between them.
TEST_F(PollOrderTest, StartingBelowAnOpenTransactionKeepsItsKeyInOrder) {
  CreateTable(false);
  PgConn held = Session();
  ASSERT_TRUE(held.Exec("BEGIN").ok());
  InsertOn(held, "k", 0);
  db_->Exec(
      "BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'x', 'x', 'E', '{}' "
      "FROM generate_series(1, 11000); ROLLBACK");
  db_->Exec("SELECT setval(pg_get_serial_sequence('outbox', 'seq'), 1000000)");
  InsertOthers(200);

  OutboxdProcess outboxd(Config());
  outboxd.Start();
  ASSERT_TRUE(AllSent(60s)) << outboxd.Log();
  ASSERT_TRUE(held.Exec("COMMIT").ok());
  Insert("k", 1);
  ASSERT_TRUE(AllSent()) << outboxd.Log();
  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 202, 60s);
  EXPECT_EQ((std::vector<int>{0, 1}), KeyOrder(records, "k"));
  ExpectNothingFoundBySweep();
}

// While outboxd runs: a transaction inserts 1,200 rows of one key and stays
// open while rolled-back work burns 11,000 positions and other rows commit;
// its rows go out before the key's next row.
TEST_F(PollOrderTest, ALargeOpenTransactionAndBurntPositionsKeepTheKeyInOrder) {
  CreateTable(false);
  OutboxdProcess outboxd(Config());
  outboxd.Start();
  InsertOthers(10);
  ASSERT_TRUE(AllSent(60s)) << outboxd.Log();

  PgConn held = Session();
  ASSERT_TRUE(held.Exec("BEGIN").ok());
  ASSERT_TRUE(held.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type_ +
                        "', 'k', 'E', ('{\"n\": ' || g || '}')::jsonb FROM generate_series(0, 1199) g")
                  .ok());
  db_->Exec(
      "BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'x', 'x', 'E', '{}' "
      "FROM generate_series(1, 11000); ROLLBACK");
  for (int i = 0; i < 5; ++i) InsertOthers(100);
  ASSERT_TRUE(AllSent(60s)) << outboxd.Log();
  ASSERT_TRUE(held.Exec("COMMIT").ok());
  Insert("k", 1200);
  ASSERT_TRUE(AllSent()) << outboxd.Log();

  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 1'711, 60s);
  std::vector<int> expected(1201);
  for (int n = 0; n <= 1200; ++n) expected[static_cast<std::size_t>(n)] = n;
  EXPECT_EQ(expected, KeyOrder(records, "k"));
  ExpectNothingFoundBySweep();
}

}  // namespace
}  // namespace outboxd::testing
