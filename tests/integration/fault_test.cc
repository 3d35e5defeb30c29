// Faults users live through: outboxd killed with SIGKILL, the Kafka broker
// down for 30 s, PostgreSQL restarted and the relay's backend terminated.
// Nothing may be lost, and every duplicate carries its original's id.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "common/pg.h"
#include "tests/integration/metrics_support.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

// The id and payload of event number n: known before the insert, so that a
// commit whose outcome the writer could not see still has a known identity.
std::string EventId(int n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012d", n);
  return buf;
}
std::string EventPayload(int n) { return "{\"n\": " + std::to_string(n) + "}"; }

// Inserts events in small transactions from threads of its own and remembers
// the id and payload of every one whose commit it saw succeed.
class Writer {
 public:
  Writer(std::string conninfo, std::string type) : conninfo_(std::move(conninfo)), type_(std::move(type)) {}
  ~Writer() { Stop(); }

  // Writes `total` events, `per_txn` per transaction, pausing `pause` between
  // transactions to spread them over time; from `threads` sessions at once,
  // each with `total` events and keys of its own (per-key order is each
  // thread's commit order).
  void Start(int total, int per_txn, std::chrono::milliseconds pause, int threads = 1) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([=, this] { Write(t * kThreadStride, t * kThreadStride + total, per_txn, pause); });
    }
  }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  bool done() const { return done_ == static_cast<int>(threads_.size()); }
  std::size_t written() const { return written_; }
  std::map<std::string, std::string> committed() {
    std::lock_guard<std::mutex> lock(mu_);
    return committed_;
  }

 private:
  static constexpr int kThreadStride = 100'000'000;  // event numbers of thread t start at t * kThreadStride

  void Write(int first, int end, int per_txn, std::chrono::milliseconds pause) {
    auto conn = PgConn::Connect(conninfo_, std::nullopt, "test-writer");
    for (int n = first; n < end && !stop_; n += per_txn) {
      if (!conn.ok() || !conn->healthy()) {
        conn = PgConn::Connect(conninfo_, std::nullopt, "test-writer");
        if (!conn.ok()) {
          std::this_thread::sleep_for(100ms);  // server restarting: retry
          n -= per_txn;
          continue;
        }
      }
      std::string sql = "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ";
      for (int j = n; j < n + per_txn; ++j) {
        sql += (j == n ? "" : ",");
        sql += "('" + EventId(j) + "','" + type_ + "','key-" + std::to_string(j / kThreadStride) + "-" +
               std::to_string(j % 17) + "','E','" + EventPayload(j) + "')";
      }
      auto r = conn->Exec(sql + " RETURNING id::text, payload::text");
      if (!r.ok()) {
        // Not committed, or committed without the writer seeing it: write
        // the same events again (same ids), as an application would.
        n -= per_txn;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < PQntuples(r->get()); ++i) {
        committed_[PQgetvalue(r->get(), i, 0)] = PQgetvalue(r->get(), i, 1);
      }
      written_ = committed_.size();
      if (pause.count() > 0) std::this_thread::sleep_for(pause);  // pacing, not waiting
    }
    ++done_;
  }

  std::string conninfo_, type_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int> done_{0};  // threads that wrote all theirs
  std::atomic<std::size_t> written_{0};
  std::mutex mu_;
  std::map<std::string, std::string> committed_;  // id -> payload, guarded by mu_
};

// `extra`: more keys of the [[outbox]] block; `kafka_extra`: of [kafka].
std::string RelayConfig(const std::string& conninfo, const std::string& bootstrap, const std::string& extra = "",
                        const std::string& kafka_extra = "") {
  return "[postgres]\nconninfo = \"" + conninfo + "\"\n[kafka]\nbootstrap_servers = \"" + bootstrap +
         "\"\nshutdown_timeout = \"5s\"\n" + kafka_extra +
         "[[outbox]]\ntable = \"outbox\"\npoll_interval = \"50ms\"\n" + extra;
}

// `config` with application_name `name` added to its conninfo `conninfo`:
// one instance's sessions told from another's.
std::string AsApplication(std::string config, const std::string& conninfo, const std::string& name) {
  const std::string key = "conninfo = \"" + conninfo;
  config.replace(config.find(key), key.size(), key + " application_name=" + name);
  return config;
}

// Every committed event is in Kafka, and every record's id carries the
// payload that was written with that id (duplicates are true duplicates).
// Returns how many records were duplicates.
std::size_t ExpectAllDelivered(const std::map<std::string, std::string>& committed,
                               const std::vector<KafkaRecord>& records) {
  std::map<std::string, int> seen;
  for (const auto& r : records) {
    const std::string id = HeaderValue(r, "id");
    if (id.size() != 36 || EventId(std::stoi(id.substr(24))) != id || !r.value.has_value()) {
      ADD_FAILURE() << "record without a proper id header or value: id \"" << id << "\" at offset " << r.offset;
      continue;
    }
    const int n = std::stoi(id.substr(24));
    EXPECT_EQ(EventPayload(n), *r.value) << "id " << id << " carries another event's payload";
    ++seen[id];
  }
  std::size_t missing = 0;
  for (const auto& [id, payload] : committed) missing += seen.count(id) ? 0 : 1;
  EXPECT_EQ(0u, missing) << "of " << committed.size() << " committed events";
  std::size_t duplicates = records.size() - seen.size();
  std::cout << "[ stats    ] " << committed.size() << " events, " << records.size() << " records, " << duplicates
            << " duplicates\n";
  return duplicates;
}

TEST(Fault, SigkillSeveralTimesLosesNothing) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("kill");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic, 3, {});
  Writer writer(db.conninfo(), type);
  writer.Start(1000000, 50, 10ms);  // until stopped
  // Rows deleted so far: each was acknowledged by Kafka first.
  auto relayed = [&] {
    const std::size_t written = writer.written();
    return static_cast<int64_t>(written) - db.QueryInt64("SELECT count(*) FROM outbox");
  };
  const std::string config = RelayConfig(db.conninfo(), SharedServices().kafka_bootstrap);

  for (int round = 0; round < 4; ++round) {
    OutboxdProcess outboxd(config);
    outboxd.Start();
    // Kill it in the middle of the flow, once it relayed more in this round.
    const int64_t before = relayed();
    ASSERT_TRUE(WaitUntil([&] { return relayed() > before + 1000; }, 60s)) << outboxd.Log();
    outboxd.Kill();
    EXPECT_EQ(128 + SIGKILL, outboxd.WaitExit(10s));
  }
  writer.Stop();
  OutboxdProcess outboxd(config);
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 120s)) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s));
  const auto committed = writer.committed();
  const std::size_t duplicates =
      ExpectAllDelivered(committed, ConsumeTopic(SharedServices().kafka_bootstrap, topic, committed.size(), 60s));
  // A kill replays what Kafka had not acknowledged and the acknowledged rows
  // not yet deleted: well under a quarter second of traffic per kill.
  EXPECT_LE(duplicates, 4 * 250u);
}

// Two instances on one table; the active one's PostgreSQL session is
// terminated three times while events flow, so the table changes hands (or
// the same instance takes it back). Nothing is lost, and an event the
// instance that lost the table had delivered is not sent again by the other.
TEST(Fault, HandoverAfterTerminatedSessionsSendsNothingTwice) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("handover");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic, 3, {});
  const std::string base = RelayConfig(db.conninfo(), SharedServices().kafka_bootstrap);
  OutboxdProcess a(AsApplication(base, db.conninfo(), "outboxd_a"));
  a.Start();
  ASSERT_TRUE(a.WaitForLog("relaying \"public.outbox\"", 30s)) << a.Log();
  OutboxdProcess b(AsApplication(base, db.conninfo(), "outboxd_b"));
  b.Start();
  ASSERT_TRUE(b.WaitForLog("standing by", 30s)) << b.Log();

  Writer writer(db.conninfo(), type);
  writer.Start(1000000, 10, 10ms);  // until stopped: about 1,000 events/s
  auto relayed = [&] { return static_cast<int64_t>(writer.written()) - db.QueryInt64("SELECT count(*) FROM outbox"); };
  // The holder of the table's lock, by application_name.
  auto holder = [&] {
    const auto rows = db.Query(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.objid = 'public.outbox'::regclass::oid AND l.granted");
    return rows.empty() ? std::string() : rows[0][0].value_or("");
  };
  for (int round = 0; round < 3; ++round) {
    const int64_t before = relayed();
    ASSERT_TRUE(WaitUntil([&] { return relayed() > before + 1000 && !holder().empty(); }, 60s)) << a.Log() << b.Log();
    const std::string active = holder();
    db.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '" + active + "'");
  }
  const int64_t before = relayed();
  ASSERT_TRUE(WaitUntil([&] { return relayed() > before + 1000; }, 60s)) << a.Log() << b.Log();
  writer.Stop();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 120s)) << a.Log() << b.Log();
  a.Terminate();
  b.Terminate();
  ASSERT_EQ(0, a.WaitExit(30s)) << a.Log();
  ASSERT_EQ(0, b.WaitExit(30s)) << b.Log();
  std::cout << "[ handover ] a took the table over: " << (a.Log().find("took over") != std::string::npos)
            << ", b: " << (b.Log().find("took over") != std::string::npos) << "\n";
  const auto committed = writer.committed();
  EXPECT_EQ(
      0u, ExpectAllDelivered(committed, ConsumeTopic(SharedServices().kafka_bootstrap, topic, committed.size(), 60s)));
}

TEST(Fault, KafkaDown30SecondsLosesNothingAndMarksNothingEarly) {
  ServiceControl services;
  services.StartKafka();
  TestDatabase db;
  db.Exec(OutboxDdl("outbox", /*with_sent_at=*/true));
  const std::string type = UniqueTopic("outage");
  const std::string topic = "outbox.event." + type;
  OutboxdProcess outboxd(RelayConfig(db.conninfo(), services.info().kafka_bootstrap,
                                     "after_delivery = \"mark\"\nsent_column = \"sent_at\"\n"));
  outboxd.Start();
  Writer writer(db.conninfo(), type);
  writer.Start(8000, 10, 10ms);
  auto sent = [&] { return db.QueryInt64("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL"); };
  ASSERT_TRUE(WaitUntil([&] { return sent() > 500; }, 60s)) << outboxd.Log();

  services.StopKafkaKeepData();
  // Deliveries acknowledged just before the stop may still be marked; after
  // that nothing is, for as long as the broker is down.
  ASSERT_TRUE(WaitUntil(
      [&] {
        const int64_t a = sent();
        std::this_thread::sleep_for(1s);  // sampling interval of a stability check
        return sent() == a;
      },
      20s));
  const int64_t sent_at_stop = sent();
  std::this_thread::sleep_for(30s);  // the outage itself
  EXPECT_EQ(sent_at_stop, sent()) << "rows were marked sent while Kafka was down";
  const int64_t hwm_kb = ProcessRssKb(outboxd.pid()).second;
  services.StartKafkaAgain();

  ASSERT_TRUE(WaitUntil([&] { return writer.done(); }, 180s));
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0; }, 180s))
      << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s));
  const auto committed = writer.committed();
  std::cout << "[ stats    ] peak RSS during the outage " << hwm_kb << " kB, " << committed.size() << " events\n";
  EXPECT_LT(hwm_kb, 256 * 1024) << "memory not bounded during the outage";
  // The idempotent producer retries across the outage without duplicating.
  EXPECT_EQ(
      0u, ExpectAllDelivered(committed, ConsumeTopic(services.info().kafka_bootstrap, topic, committed.size(), 120s)));
}

// An outage longer than message.timeout.ms: librdkafka gives the records up,
// outboxd produces them again once the broker is back.
TEST(Fault, KafkaOutageLongerThanMessageTimeoutLosesNothing) {
  ServiceControl services;
  services.StartKafka();
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("timeout");
  const std::string topic = "outbox.event." + type;
  const int port = FreePort();
  OutboxdProcess outboxd(RelayConfig(db.conninfo(), services.info().kafka_bootstrap) + HttpSection(port) +
                         "[kafka.properties]\n\"message.timeout.ms\" = 2000\n");
  outboxd.Start();
  Writer writer(db.conninfo(), type);
  writer.Start(1000000, 10, 10ms);  // until stopped
  auto relayed = [&] {
    const std::size_t written = writer.written();
    return static_cast<int64_t>(written) - db.QueryInt64("SELECT count(*) FROM outbox");
  };
  ASSERT_TRUE(WaitUntil([&] { return relayed() > 200; }, 60s)) << outboxd.Log();
  services.StopKafkaKeepData();
  ASSERT_TRUE(outboxd.WaitForLog("_MSG_TIMED_OUT", 60s)) << outboxd.Log();
  services.StartKafkaAgain();
  const int64_t after = relayed();
  ASSERT_TRUE(WaitUntil([&] { return relayed() > after + 200; }, 120s)) << outboxd.Log();
  writer.Stop();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 120s)) << outboxd.Log();
  const Scrape scrape = ScrapeMetrics(port);
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s));
  const auto committed = writer.committed();
  const std::size_t duplicates =
      ExpectAllDelivered(committed, ConsumeTopic(services.info().kafka_bootstrap, topic, committed.size(), 60s));
  // Every duplicate comes from the rewinds; the metric counts those whose
  // first copy was acknowledged (a record librdkafka gave up on may still
  // have reached the broker: a duplicate the metric cannot know of).
  const double resent = scrape.Or0("outboxd_events_resent_total", {{"cause", "rewind"}});
  std::cout << "[ resent   ] outboxd_events_resent_total{cause=\"rewind\"} " << resent << ", duplicates in Kafka "
            << duplicates << "\n";
  EXPECT_LE(resent, static_cast<double>(duplicates));
  EXPECT_EQ(0, scrape.Or0("outboxd_events_resent_total", {{"cause", "producer"}}));
}

// A fatal error of the idempotent producer (the failpoint raises one, as an
// out-of-order sequence from the broker would) while events flow: outboxd
// lets the reports of what the old producer had sent come in, deletes what
// Kafka acknowledged and produces the rest with a new producer. Nothing is
// lost, and outboxd_events_resent_total{cause="producer"} is exactly the
// duplicates in Kafka.
TEST(Fault, FatalProducerErrorResendsOnlyWhatKafkaDidNotAcknowledge) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("fatal");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic, 3, {});
  const int port = FreePort();
  OutboxdProcess outboxd(RelayConfig(db.conninfo(), SharedServices().kafka_bootstrap) + HttpSection(port));
  outboxd.SetEnv("OUTBOXD_FAILPOINTS", "kafka_fatal_after_acks=3000");
  outboxd.Start();
  Writer writer(db.conninfo(), type);
  writer.Start(8000, 20, 5ms);  // about 4,000 events/s
  ASSERT_TRUE(outboxd.WaitForLog("recreating the Kafka producer", 60s)) << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return writer.done(); }, 60s));
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
  const Scrape scrape = ScrapeMetrics(port);
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  const auto committed = writer.committed();
  const std::size_t duplicates =
      ExpectAllDelivered(committed, ConsumeTopic(SharedServices().kafka_bootstrap, topic, committed.size(), 60s));
  const double resent = scrape.Or0("outboxd_events_resent_total", {{"cause", "producer"}});
  std::cout << "[ resent   ] outboxd_events_resent_total{cause=\"producer\"} " << resent << ", duplicates in Kafka "
            << duplicates << "\n";
  // The broker stayed up, so every record the old producer sent was
  // reported and none had an unknown fate: every duplicate is one outboxd
  // knows of (recreating at once, before the reports: 123-158 duplicates,
  // the metric once 49 of 123).
  EXPECT_EQ(static_cast<double>(duplicates), resent);
  EXPECT_EQ(0, scrape.Or0("outboxd_events_resent_total", {{"cause", "rewind"}}));
}

// A record Kafka persisted is reported as timed out (the failpoint: its
// acknowledgement was lost). outboxd produces it again and, to keep each
// key's order, the rows after it that were in flight. Every duplicate but
// that one record (whose fate outboxd could not know) is counted in
// outboxd_events_resent_total{cause="rewind"}.
TEST(Fault, LostAcknowledgementIsResentWithWhatFollowedAndCounted) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("lostack");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic, 3, {});
  const int port = FreePort();
  OutboxdProcess outboxd(RelayConfig(db.conninfo(), SharedServices().kafka_bootstrap) + HttpSection(port));
  outboxd.SetEnv("OUTBOXD_FAILPOINTS", "kafka_timeout_report_after_acks=3000");
  outboxd.Start();
  Writer writer(db.conninfo(), type);
  writer.Start(8000, 20, 5ms);  // about 4,000 events/s
  ASSERT_TRUE(outboxd.WaitForLog("_MSG_TIMED_OUT", 60s)) << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return writer.done(); }, 60s));
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
  const Scrape scrape = ScrapeMetrics(port);
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  const auto committed = writer.committed();
  const std::size_t duplicates =
      ExpectAllDelivered(committed, ConsumeTopic(SharedServices().kafka_bootstrap, topic, committed.size(), 60s));
  const double resent = scrape.Or0("outboxd_events_resent_total", {{"cause", "rewind"}});
  std::cout << "[ resent   ] outboxd_events_resent_total{cause=\"rewind\"} " << resent << ", duplicates in Kafka "
            << duplicates << "\n";
  EXPECT_EQ(static_cast<double>(duplicates), resent + 1);
  EXPECT_EQ(0, scrape.Or0("outboxd_events_resent_total", {{"cause", "producer"}}));
}

TEST(Fault, PostgresRestartAndTerminatedBackendLoseNothing) {
  ServiceControl services;
  services.StartPostgres();
  TestDatabase db(services.info());
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("pgrestart");
  const std::string topic = "outbox.event." + type;
  OutboxdProcess outboxd(RelayConfig(db.conninfo(), SharedServices().kafka_bootstrap));
  outboxd.Start();
  Writer writer(db.conninfo(), type);
  writer.Start(1000000, 10, 10ms);  // until stopped; reconnects after the restart
  auto relayed = [&] {
    const std::size_t written = writer.written();
    return static_cast<int64_t>(written) - db.QueryInt64("SELECT count(*) FROM outbox");
  };
  ASSERT_TRUE(WaitUntil([&] { return relayed() > 500; }, 60s)) << outboxd.Log();

  services.RestartPostgres();
  const int64_t after_restart = relayed();
  ASSERT_TRUE(WaitUntil([&] { return relayed() > after_restart + 500; }, 60s)) << outboxd.Log();

  // Terminate the relay's own backend, as an operator or a failover would.
  ASSERT_EQ(1, db.QueryInt64("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = 'outboxd'"));
  const int64_t after_kill = relayed();
  ASSERT_TRUE(WaitUntil([&] { return relayed() > after_kill + 500; }, 60s)) << outboxd.Log();

  writer.Stop();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 120s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("connected to PostgreSQL again")) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s));
  const auto committed = writer.committed();
  // What was in flight stays tracked across the reconnects: nothing is sent twice.
  EXPECT_EQ(
      0u, ExpectAllDelivered(committed, ConsumeTopic(SharedServices().kafka_bootstrap, topic, committed.size(), 60s)));
}

// --- Exactly-once ([kafka] delivery = "exactly-once") ----------------------
//
// A read_committed consumer (kcat's default) must see every committed event
// once, whatever the fault: no duplicate at all.

// The [kafka] keys of the mode, with a position topic of the test's own.
std::string ExactlyOnce(const std::string& topic) {
  return "delivery = \"exactly-once\"\nposition_topic = \"" + topic + ".positions\"\n";
}

// Each key's events arrive in commit order (one writer commits in event
// number order), and each PostgreSQL transaction (events n / per_txn) sits in
// one Kafka transaction: in its partition, no offset between its first and
// its last record is missing — a missing offset is a transaction marker (or
// an aborted record), so the transaction was not split.
void ExpectOrderedAndUnsplit(std::vector<KafkaRecord> records, int per_txn) {
  std::sort(records.begin(), records.end(), [](const KafkaRecord& a, const KafkaRecord& b) {
    return std::tie(a.partition, a.offset) < std::tie(b.partition, b.offset);
  });
  std::map<std::string, int> last_of_key;
  std::map<std::pair<int, int>, std::pair<int64_t, int64_t>> span;  // (partition, transaction) -> first, last offset
  std::map<int, std::set<int64_t>> offsets;                         // partition -> offsets seen
  std::size_t order_violations = 0, split = 0;
  for (const KafkaRecord& r : records) {
    const std::string id = HeaderValue(r, "id");
    if (id.size() != 36) continue;  // reported by ExpectAllDelivered
    const int n = std::stoi(id.substr(24));
    const std::string key = r.key.value_or("");
    if (auto it = last_of_key.find(key); it != last_of_key.end() && it->second >= n) ++order_violations;
    last_of_key[key] = n;
    auto [it, fresh] = span.try_emplace({r.partition, n / per_txn}, r.offset, r.offset);
    if (!fresh) it->second.second = r.offset;
    offsets[r.partition].insert(r.offset);
  }
  for (const auto& [where, range] : span) {
    const std::set<int64_t>& seen = offsets[where.first];
    const auto first = seen.find(range.first);
    const auto count = static_cast<int64_t>(std::distance(first, seen.upper_bound(range.second)));
    if (count != range.second - range.first + 1) {
      if (++split <= 3) {
        ADD_FAILURE() << "transaction " << where.second << " is split in partition " << where.first << ": offsets "
                      << range.first << ".." << range.second << " hold " << count << " of its records";
      }
    }
  }
  EXPECT_EQ(0u, order_violations) << "events of a key out of commit order";
  EXPECT_EQ(0u, split) << "PostgreSQL transactions split over Kafka transactions";
  std::cout << "[ stats    ] " << span.size() << " (partition, transaction) spans, " << split << " split, "
            << order_violations << " out of order\n";
}

// One outbox table with a 3-partition topic, a writer of its events, and the
// checks of the promise; on the shared services unless given a PostgreSQL
// (ServiceControl::info()) or a Kafka of the test's own.
class PollCase {
 public:
  explicit PollCase(const std::string& name, const ServiceInfo& postgres = SharedServices(),
                    std::string bootstrap = SharedServices().kafka_bootstrap)
      : db_(postgres),
        bootstrap_(std::move(bootstrap)),
        type_(UniqueTopic(name)),
        topic_("outbox.event." + type_),
        writer_(db_.conninfo(), type_) {
    db_.Exec(OutboxDdl("outbox"));
    KafkaAdmin(bootstrap_).CreateTopic(topic_, 3, {});
  }
  const TestDatabase& db() const { return db_; }
  Writer& writer() { return writer_; }
  // The exactly-once config; `extra`: more keys of the [[outbox]] block,
  // `kafka_extra`: of [kafka].
  std::string Config(const std::string& extra = "", const std::string& kafka_extra = "") const {
    return RelayConfig(db_.conninfo(), bootstrap_, extra, ExactlyOnce(topic_) + kafka_extra);
  }
  // The metrics' `stream` label: the poll stream's transactional.id.
  std::string Stream() const {
    return "outboxd.poll." + db_.QueryString("SELECT system_identifier::text FROM pg_control_system()") + "." +
           db_.name() + ".public.outbox";
  }
  int64_t Unsent() const { return db_.QueryInt64("SELECT count(*) FROM outbox"); }
  // Waits until `n` more rows were deleted (each after its Kafka commit).
  [[nodiscard]] bool WaitRelayedMore(int64_t n, std::chrono::milliseconds deadline = 60s) {
    auto relayed = [&] { return static_cast<int64_t>(writer_.written()) - Unsent(); };
    const int64_t before = relayed();
    return WaitUntil([&] { return relayed() > before + n; }, deadline);
  }
  [[nodiscard]] bool WaitDrained() const {
    return WaitUntil([&] { return Unsent() == 0; }, 120s);
  }
  // Starts outboxd with failpoint `failpoint` armed and the writer on
  // (10-row transactions), and waits for the failpoint's SIGKILL.
  void RunUntilKilledBy(const std::string& failpoint) {
    OutboxdProcess outboxd(Config());
    outboxd.SetEnv("OUTBOXD_FAILPOINTS", failpoint);
    outboxd.Start();
    writer_.Start(1000000, 10, 5ms);  // until stopped
    EXPECT_EQ(128 + SIGKILL, outboxd.WaitExit(120s)) << outboxd.Log();
  }
  // Starts another outboxd, which relays 500 more rows; then stops the
  // writer, drains the table and stops outboxd. Returns its log.
  std::string RelayMoreAndDrain() {
    OutboxdProcess outboxd(Config());
    outboxd.Start();
    EXPECT_TRUE(WaitRelayedMore(500)) << outboxd.Log();
    writer_.Stop();
    EXPECT_TRUE(WaitDrained()) << outboxd.Log();
    outboxd.Terminate();
    EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
    return outboxd.Log();
  }
  // What a read_uncommitted reader sees: also the records of aborted
  // transactions.
  std::size_t RecordsReadUncommitted(std::size_t at_least) const {
    return ConsumeTopic(bootstrap_, topic_, at_least, 60s, Isolation::kReadUncommitted).size();
  }
  // A read_committed reader sees every committed event once, each key in
  // commit order, each PostgreSQL transaction (`per_txn` events) whole.
  void ExpectEveryEventOnce(int per_txn) {
    const auto committed = writer_.committed();
    const auto records = ConsumeTopic(bootstrap_, topic_, committed.size(), 60s);
    EXPECT_EQ(0u, ExpectAllDelivered(committed, records));
    ExpectOrderedAndUnsplit(records, per_txn);
  }

 private:
  TestDatabase db_;
  std::string bootstrap_;
  std::string type_, topic_;
  Writer writer_;
};

TEST(PollExactlyOnce, SigkillTenTimesDeliversEveryEventOnceInOrder) {
  PollCase c("eoskill");
  c.writer().Start(1000000, 50, 10ms, 3);  // three sessions, until stopped
  for (int round = 0; round < 10; ++round) {
    OutboxdProcess outboxd(c.Config());
    outboxd.Start();
    ASSERT_TRUE(c.WaitRelayedMore(800)) << "round " << round << "\n" << outboxd.Log();
    outboxd.Kill();
    EXPECT_EQ(128 + SIGKILL, outboxd.WaitExit(10s));
  }
  c.writer().Stop();
  OutboxdProcess outboxd(c.Config());
  outboxd.Start();
  ASSERT_TRUE(c.WaitDrained()) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  c.ExpectEveryEventOnce(50);
}

// The crash point at-least-once turns into duplicates: Kafka committed the
// transaction, its rows are not deleted yet. The failpoint kills outboxd right
// after its 30th Kafka commit; the next start reads the position from Kafka
// and deletes the rows it lists without producing them.
TEST(PollExactlyOnce, KilledAfterTheKafkaCommitBeforeTheDeleteSendsNothingTwice) {
  PollCase c("eoscommit");
  c.RunUntilKilledBy("kill_after_kafka_commits=30");
  // `outboxd status` shows the rows Kafka has that the table still holds.
  const OutboxdProcess unstarted(c.Config());  // for its config file
  const CommandResult status = OutboxdProcess::RunCommand({"status", "-c", unstarted.config_path(), "--json"}, 60s);
  const auto report = nlohmann::json::parse(status.output, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(report.is_object() && report["tables"].size() == 1) << status.output;
  ASSERT_TRUE(report["tables"][0]["kafka_unsent_rows"].is_number()) << status.output;
  EXPECT_GT(report["tables"][0]["kafka_unsent_rows"].get<int64_t>(), 0) << status.output;
  const std::string log = c.RelayMoreAndDrain();
  // The kill really left rows Kafka had.
  EXPECT_NE(std::string::npos, log.find("although Kafka has them")) << log;
  c.ExpectEveryEventOnce(10);
}

// The other side of the commit: the failpoint kills outboxd right before it
// asks Kafka to commit its 30th transaction, every record of it acknowledged.
// The broker aborts it (the next instance's init_transactions does), its rows
// are still unsent, and they are produced again: once for read_committed.
TEST(PollExactlyOnce, KilledBeforeTheKafkaCommitProducesTheRowsOnceMore) {
  PollCase c("eosprecommit");
  c.RunUntilKilledBy("kill_before_kafka_commits=30");
  const std::string log = c.RelayMoreAndDrain();
  EXPECT_EQ(std::string::npos, log.find("although Kafka has them")) << log;
  c.ExpectEveryEventOnce(10);
  // The killed transaction's copies are in the log, visible only to a
  // read_uncommitted reader.
  const std::size_t committed = c.writer().committed().size();
  EXPECT_GT(c.RecordsReadUncommitted(committed), committed);
}

// A backlog of transactions larger than a claim (250 rows, batch_size 100):
// claims come back full, and a Kafka transaction still never ends inside a
// PostgreSQL transaction.
TEST(PollExactlyOnce, ABacklogOfLargeTransactionsIsNeverSplit) {
  PollCase c("eosbacklog");
  c.writer().Start(20000, 250, std::chrono::milliseconds(0));
  ASSERT_TRUE(WaitUntil([&] { return c.writer().done(); }, 120s));
  // A backlog commits at the size bound: 1,050 events end a transaction
  // after 11 claims, 1,100 rows, in the middle of a PostgreSQL transaction.
  OutboxdProcess outboxd(c.Config("batch_size = 100\n", "transaction_max_events = 1050\n"));
  outboxd.Start();
  ASSERT_TRUE(c.WaitDrained()) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  c.ExpectEveryEventOnce(250);
}

// Instance a is paused (SIGSTOP) with rows in flight, its PostgreSQL session
// is terminated, and b takes the table over: b fences a's transactional
// producer, reads Kafka's position and relays. Resumed (SIGCONT), a's queued
// records go out with a stale epoch: nothing of them becomes visible, and a
// stands by.
TEST(PollExactlyOnce, APausedInstanceThatResumesAfterATakeoverMakesNothingVisible) {
  PollCase c("eoszombie");
  OutboxdProcess a(AsApplication(c.Config(), c.db().conninfo(), "outboxd_a"));
  a.Start();
  ASSERT_TRUE(a.WaitForLog("relaying \"public.outbox\"", 30s)) << a.Log();
  OutboxdProcess b(AsApplication(c.Config(), c.db().conninfo(), "outboxd_b"));
  b.Start();
  ASSERT_TRUE(b.WaitForLog("standing by", 30s)) << b.Log();

  c.writer().Start(1000000, 10, 5ms);  // until stopped
  ASSERT_TRUE(c.WaitRelayedMore(1000)) << a.Log();
  a.Signal(SIGSTOP);
  const std::size_t log_b = b.LogSize();
  c.db().Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outboxd_a'");
  ASSERT_TRUE(b.WaitForLog("took over", 30s, log_b)) << b.Log();
  ASSERT_TRUE(c.WaitRelayedMore(1000)) << b.Log();
  const std::size_t log_a = a.LogSize();
  a.Signal(SIGCONT);
  ASSERT_TRUE(a.WaitForLog("standing by", 60s, log_a)) << a.Log();
  ASSERT_TRUE(c.WaitRelayedMore(1000)) << b.Log();
  c.writer().Stop();
  ASSERT_TRUE(c.WaitDrained()) << a.Log() << b.Log();
  ASSERT_TRUE(a.Running()) << a.Log();
  a.Terminate();
  b.Terminate();
  ASSERT_EQ(0, a.WaitExit(30s)) << a.Log();
  ASSERT_EQ(0, b.WaitExit(30s)) << b.Log();
  c.ExpectEveryEventOnce(10);
}

// PostgreSQL restarted, then the relay's backend terminated: each time the
// open Kafka transaction is aborted, and once connected again outboxd reads
// Kafka's position and deletes what Kafka has before claiming.
TEST(PollExactlyOnce, PostgresRestartAndTerminatedBackendDeliverEveryEventOnce) {
  ServiceControl services;
  services.StartPostgres();
  PollCase c("eospgrestart", services.info());
  OutboxdProcess outboxd(c.Config());
  outboxd.Start();
  c.writer().Start(1000000, 10, 10ms);  // until stopped; reconnects after the restart
  ASSERT_TRUE(c.WaitRelayedMore(500)) << outboxd.Log();
  services.RestartPostgres();
  ASSERT_TRUE(c.WaitRelayedMore(500)) << outboxd.Log();
  ASSERT_EQ(1, c.db().QueryInt64("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE application_name = 'outboxd'"));
  ASSERT_TRUE(c.WaitRelayedMore(500)) << outboxd.Log();
  c.writer().Stop();
  ASSERT_TRUE(c.WaitDrained()) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("connected to PostgreSQL again")) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  c.ExpectEveryEventOnce(10);
}

// The broker SIGKILLed with a transaction open, and started again: outboxd
// deletes nothing while it is down, and then delivers every event once.
TEST(PollExactlyOnce, KafkaBrokerKilledMidTransactionDeliversEveryEventOnce) {
  ServiceControl services;
  services.StartPostgres();
  services.StartKafka();
  PollCase c("eosbroker", services.info(), services.kafka_bootstrap());
  OutboxdProcess outboxd(c.Config());
  outboxd.Start();
  c.writer().Start(1000000, 10, 10ms);  // until stopped
  ASSERT_TRUE(c.WaitRelayedMore(1000)) << outboxd.Log();
  services.KillKafka();
  // Writes go on while the broker is down; rows pile up unsent.
  const int64_t at_kill = c.Unsent();
  ASSERT_TRUE(WaitUntil([&] { return c.Unsent() >= at_kill + 500; }, 30s)) << outboxd.Log();
  services.StartKafkaAgain();
  ASSERT_TRUE(c.WaitRelayedMore(1000, 180s)) << outboxd.Log();
  c.writer().Stop();
  ASSERT_TRUE(c.WaitDrained()) << outboxd.Log();
  ASSERT_TRUE(outboxd.Running()) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  c.ExpectEveryEventOnce(10);
}

// transaction_max_bytes = 1: a Kafka transaction ends as soon as the
// PostgreSQL transactions of its rows are whole. A backlog of 100 ten-row
// transactions claimed ten rows at a time becomes 100 Kafka transactions of
// 10 events; with the default bound (and a 2-s transaction_max_wait) it goes
// in one or two.
TEST(PollExactlyOnce, TransactionMaxBytesEndsEachKafkaTransactionAtThatSize) {
  for (const bool bounded : {true, false}) {
    PollCase c(bounded ? "eosbytes" : "eosnobytes");
    c.writer().Start(1000, 10, std::chrono::milliseconds(0));
    ASSERT_TRUE(WaitUntil([&] { return c.writer().done(); }, 60s));
    const int port = FreePort();
    OutboxdProcess outboxd(
        c.Config("batch_size = 10\n" + HttpSection(port),
                 std::string("transaction_max_wait = \"2s\"\n") + (bounded ? "transaction_max_bytes = 1\n" : "")));
    outboxd.Start();
    ASSERT_TRUE(c.WaitDrained()) << outboxd.Log();
    const Scrape scrape = ScrapeMetrics(port);
    outboxd.Terminate();
    ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
    const Scrape::Labels stream = {{"stream", c.Stream()}};
    const double committed =
        scrape.Or0("outboxd_kafka_transactions_total", {{"stream", c.Stream()}, {"outcome", "committed"}});
    EXPECT_EQ(1000, scrape.Or0("outboxd_kafka_transaction_events_sum", stream)) << scrape.text();
    if (bounded) {
      EXPECT_EQ(100, committed) << scrape.text();
    } else {
      EXPECT_LE(committed, 2) << scrape.text();
    }
    std::cout << "[ stats    ] transaction_max_bytes " << (bounded ? "1" : "default") << ": " << committed
              << " Kafka transactions for 100 PostgreSQL transactions\n";
    c.ExpectEveryEventOnce(10);
  }
}

}  // namespace
}  // namespace outboxd::testing
