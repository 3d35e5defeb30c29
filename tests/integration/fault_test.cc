// Faults users live through: outboxd killed with SIGKILL, the Kafka broker
// down for 30 s, PostgreSQL restarted and the relay's backend terminated.
// Nothing may be lost, and every duplicate carries its original's id.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

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

// Inserts events in small transactions from its own thread and remembers the
// id and payload of every one whose commit it saw succeed.
class Writer {
 public:
  Writer(std::string conninfo, std::string type) : conninfo_(std::move(conninfo)), type_(std::move(type)) {}
  ~Writer() { Stop(); }

  // Writes `total` events, `per_txn` per transaction, pausing `pause` between
  // transactions to spread them over time.
  void Start(int total, int per_txn, std::chrono::milliseconds pause) {
    thread_ = std::thread([=, this] {
      auto conn = PgConn::Connect(conninfo_, std::nullopt, "test-writer");
      for (int n = 0; n < total && !stop_; n += per_txn) {
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
          sql += "('" + EventId(j) + "','" + type_ + "','key-" + std::to_string(j % 17) + "','E','" + EventPayload(j) +
                 "')";
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
      done_ = true;
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  bool done() const { return done_; }
  std::size_t written() const { return written_; }
  std::map<std::string, std::string> committed() {
    std::lock_guard<std::mutex> lock(mu_);
    return committed_;
  }

 private:
  std::string conninfo_, type_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, done_{false};
  std::atomic<std::size_t> written_{0};
  std::mutex mu_;
  std::map<std::string, std::string> committed_;  // id -> payload, guarded by mu_
};

std::string RelayConfig(const std::string& conninfo, const std::string& bootstrap, const std::string& extra = "") {
  return "[postgres]\nconninfo = \"" + conninfo + "\"\n[kafka]\nbootstrap_servers = \"" + bootstrap +
         "\"\nshutdown_timeout = \"5s\"\n[[outbox]]\ntable = \"outbox\"\npoll_interval = \"50ms\"\n" + extra;
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
  auto config_as = [&](const std::string& name) {
    std::string c = base;
    const std::string conninfo = "conninfo = \"" + db.conninfo();
    c.replace(c.find(conninfo), conninfo.size(), conninfo + " application_name=" + name);
    return c;
  };
  OutboxdProcess a(config_as("outboxd_a"));
  a.Start();
  ASSERT_TRUE(a.WaitForLog("relaying \"public.outbox\"", 30s)) << a.Log();
  OutboxdProcess b(config_as("outboxd_b"));
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

}  // namespace
}  // namespace outboxd::testing
