// The Publisher's Kafka transactions against the real broker, read back with
// kcat in both isolation levels: the ground the exactly-once mode stands on
// (docs/design/exactly-once.md). What is committed is visible to
// read_committed consumers; what is aborted never is; a second producer with
// the same transactional.id fences the first, whose records then never
// become visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/position_store.h"
#include "pipeline/publisher.h"
#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

class TransactionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    topic_ = UniqueTopic("txn");
    KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic_, 3);
    transactional_id_ = "outboxd.test." + topic_;
  }

  std::unique_ptr<Publisher> NewPublisher() {
    KafkaConfig c;
    c.bootstrap_servers = SharedServices().kafka_bootstrap;
    auto p = Publisher::Create(
        c, [this](const DeliveryReport& r) { r.outcome == DeliveryOutcome::kPersisted ? ++acked_ : ++failed_; },
        transactional_id_);
    if (!p.ok()) throw HarnessError(p.status().message());
    return std::move(p).value();
  }

  // Calls `step` until it is no longer in progress (librdkafka works on in
  // the background between calls), serving reports meanwhile.
  template <typename Step>
  TxnResult Finish(Publisher& p, Step step) {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    TxnResult r = step();
    while (r.outcome == TxnOutcome::kInProgress && std::chrono::steady_clock::now() < deadline) {
      p.Poll(10ms);
      r = step();
    }
    return r;
  }

  // The outcome, and librdkafka's error when it is not kDone.
  static ::testing::AssertionResult IsDone(const TxnResult& r) {
    if (r.outcome == TxnOutcome::kDone) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << TxnOutcomeName(r.outcome) << ": " << r.error;
  }

  void Produce(Publisher& p, const std::string& value) {
    Record r;
    r.topic = topic_;
    r.key = "k-" + value;
    r.value = value;
    Status st = p.Produce(r, 0);
    ASSERT_TRUE(st.ok()) << st.message();
  }

  static std::vector<std::string> Values(const std::vector<KafkaRecord>& records) {
    std::vector<std::string> out;
    out.reserve(records.size());
    for (const auto& r : records) out.push_back(r.value.value_or("<null>"));
    std::sort(out.begin(), out.end());
    return out;
  }

  std::string topic_;
  std::string transactional_id_;
  int acked_ = 0;
  int failed_ = 0;
};

TEST_F(TransactionsTest, CommittedRecordsAreVisibleAndAbortedOnesNeverAre) {
  auto p = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->InitTransactions(10s); })));

  ASSERT_TRUE(IsDone(p->BeginTransaction()));
  for (const char* v : {"a1", "a2", "a3", "a4", "a5"}) Produce(*p, v);
  // Acknowledged inside the transaction (written to the log), then aborted:
  // an acknowledgement is not a commit.
  ASSERT_TRUE(WaitUntil(
      [&] {
        p->Poll(10ms);
        return acked_ == 5;
      },
      30s));
  ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->AbortTransaction(10s); })));

  ASSERT_TRUE(IsDone(p->BeginTransaction()));
  for (const char* v : {"c1", "c2", "c3"}) Produce(*p, v);
  // Called at once, the commit finds records not yet acknowledged and
  // returns without starting; called again (even with a zero timeout, which
  // the Publisher raises to its least) it commits.
  const TxnResult first = p->CommitTransaction(0ms);
  EXPECT_TRUE(first.outcome == TxnOutcome::kInProgress || first.outcome == TxnOutcome::kDone) << first.error;
  if (first.outcome == TxnOutcome::kInProgress) {
    ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->CommitTransaction(0ms); })));
  }
  EXPECT_EQ(3, acked_ - 5);
  p->Poll(0ms);

  const auto committed = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 3, 30s);
  EXPECT_EQ((std::vector<std::string>{"c1", "c2", "c3"}), Values(committed));
  // The aborted records are in the log: a read_uncommitted reader sees them.
  const auto everything = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 8, 30s, Isolation::kReadUncommitted);
  EXPECT_EQ((std::vector<std::string>{"a1", "a2", "a3", "a4", "a5", "c1", "c2", "c3"}), Values(everything));
}

TEST_F(TransactionsTest, ASecondProducerWithTheSameIdFencesTheFirst) {
  auto old_holder = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*old_holder, [&] { return old_holder->InitTransactions(10s); })));
  ASSERT_TRUE(IsDone(old_holder->BeginTransaction()));
  Produce(*old_holder, "old-open");  // left open: the new holder aborts it
  ASSERT_TRUE(WaitUntil(
      [&] {
        old_holder->Poll(10ms);
        return acked_ == 1;  // in the log, inside the open transaction
      },
      30s));

  auto new_holder = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*new_holder, [&] { return new_holder->InitTransactions(10s); })));

  // The old holder goes on as a paused instance would after resuming. Its
  // produce may already be refused (it may have learnt it is fenced).
  Record late;
  late.topic = topic_;
  late.value = "old-after-fence";
  old_holder->Produce(late, 0).IgnoreError();
  const TxnResult old_commit = Finish(*old_holder, [&] { return old_holder->CommitTransaction(10s); });
  EXPECT_EQ(TxnOutcome::kFenced, old_commit.outcome) << TxnOutcomeName(old_commit.outcome) << ": " << old_commit.error;

  ASSERT_TRUE(IsDone(new_holder->BeginTransaction()));
  Produce(*new_holder, "new");
  ASSERT_TRUE(IsDone(Finish(*new_holder, [&] { return new_holder->CommitTransaction(10s); })));

  EXPECT_EQ(std::vector<std::string>{"new"}, Values(ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 1, 30s)));
}

// A record the broker refuses for good makes the transaction abortable: the
// commit says kAbort, nothing of it becomes visible, and after the abort the
// next transaction commits.
TEST_F(TransactionsTest, ARefusedRecordMakesTheTransactionAbortOnly) {
  const std::string small = topic_ + ".small";
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(small, 1, {{"max.message.bytes", "1000"}});
  auto p = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->InitTransactions(10s); })));
  ASSERT_TRUE(IsDone(p->BeginTransaction()));
  Record fits;
  fits.topic = small;
  fits.value = "fits";
  ASSERT_TRUE(p->Produce(fits, 0).ok());
  Record too_large = fits;
  too_large.value = std::string(5000, 'x');  // under librdkafka's limit, over the topic's
  ASSERT_TRUE(p->Produce(too_large, 0).ok());
  const TxnResult commit = Finish(*p, [&] { return p->CommitTransaction(10s); });
  EXPECT_EQ(TxnOutcome::kAbort, commit.outcome) << TxnOutcomeName(commit.outcome) << ": " << commit.error;
  EXPECT_GE(failed_, 1);
  ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->AbortTransaction(10s); })));

  // librdkafka 2.0.2 fails the next transaction once more (the refused
  // record left a gap in the partition's sequence numbers:
  // OUT_OF_ORDER_SEQUENCE_NUMBER); that abort bumps the producer's epoch and
  // the one after commits. A replay after a refused record must allow for it.
  int attempts = 0;
  TxnResult next;
  do {
    ++attempts;
    ASSERT_TRUE(IsDone(p->BeginTransaction()));
    fits.value = "after";
    ASSERT_TRUE(p->Produce(fits, 0).ok());
    next = Finish(*p, [&] { return p->CommitTransaction(10s); });
    if (next.outcome == TxnOutcome::kAbort) {
      ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->AbortTransaction(10s); })));
    }
  } while (next.outcome == TxnOutcome::kAbort && attempts < 3);
  ASSERT_TRUE(IsDone(next));
  EXPECT_LE(attempts, 2);
  EXPECT_EQ(std::vector<std::string>{"after"}, Values(ConsumeTopic(SharedServices().kafka_bootstrap, small, 1, 30s)));
}

TEST_F(TransactionsTest, AnIdempotentPublisherRefusesTransactionCalls) {
  KafkaConfig c;
  c.bootstrap_servers = SharedServices().kafka_bootstrap;
  auto p = Publisher::Create(c, [](const DeliveryReport&) {});
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_FALSE((*p)->transactional());
  EXPECT_EQ(TxnOutcome::kFatal, (*p)->BeginTransaction().outcome);
}

// The position a stream commits with its events, read back after a restart:
// the last committed one, never one of an aborted transaction, per stream.
TEST_F(TransactionsTest, PositionStoreReadsTheLastCommittedPositionOfAStream) {
  KafkaConfig c;
  c.bootstrap_servers = SharedServices().kafka_bootstrap;
  auto store = PositionStore::Create(c, topic_ + ".positions");
  ASSERT_TRUE(store.ok()) << store.status().message();
  ASSERT_TRUE((*store)->EnsureTopic(30s).ok());
  ASSERT_TRUE((*store)->EnsureTopic(30s).ok());  // it exists now: nothing to do
  auto none = (*store)->ReadLast("cdc.s1", 0, 30s);
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_FALSE(none->has_value());

  auto p = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->InitTransactions(10s); })));
  auto commit_with_position = [&](const std::string& stream, const std::string& position, bool abort) {
    ASSERT_TRUE(IsDone(p->BeginTransaction()));
    Produce(*p, "event-before-" + position);
    ASSERT_TRUE(p->Produce((*store)->PositionRecord(stream, position), 0).ok());
    if (abort) {
      const int expected = acked_ + 2;
      ASSERT_TRUE(WaitUntil(
          [&] {
            p->Poll(10ms);
            return acked_ >= expected;
          },
          30s));
      ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->AbortTransaction(10s); })));
    } else {
      ASSERT_TRUE(IsDone(Finish(*p, [&] { return p->CommitTransaction(10s); })));
    }
  };
  commit_with_position("cdc.s1", "0/100", false);
  commit_with_position("poll.t1", "7", false);
  commit_with_position("cdc.s1", "0/200", true);  // acknowledged, then aborted
  auto s1 = (*store)->ReadLast("cdc.s1", 0, 30s);
  ASSERT_TRUE(s1.ok()) << s1.status().message();
  ASSERT_TRUE(s1->has_value());
  EXPECT_EQ("0/100", (*s1)->value);

  commit_with_position("cdc.s1", "0/300", false);
  // From the offset remembered with the last read, as a restart would.
  auto again = (*store)->ReadLast("cdc.s1", (*s1)->offset, 30s);
  ASSERT_TRUE(again.ok()) << again.status().message();
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ("0/300", (*again)->value);
  auto t1 = (*store)->ReadLast("poll.t1", 0, 30s);
  ASSERT_TRUE(t1.ok() && t1->has_value());
  EXPECT_EQ("7", (*t1)->value);
}

// Another stream's transaction open in the position topic holds read_committed
// readers back at its first record; a position committed after it must not be
// missed: ReadLast() waits for the open one to end rather than return an
// older position.
TEST_F(TransactionsTest, PositionStoreWaitsForATransactionOpenAheadOfTheEnd) {
  KafkaConfig c;
  c.bootstrap_servers = SharedServices().kafka_bootstrap;
  auto store = PositionStore::Create(c, topic_ + ".positions");
  ASSERT_TRUE(store.ok()) << store.status().message();
  ASSERT_TRUE((*store)->EnsureTopic(30s).ok());

  auto mine = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*mine, [&] { return mine->InitTransactions(10s); })));
  ASSERT_TRUE(IsDone(mine->BeginTransaction()));
  ASSERT_TRUE(mine->Produce((*store)->PositionRecord("mine", "1"), 0).ok());
  ASSERT_TRUE(IsDone(Finish(*mine, [&] { return mine->CommitTransaction(10s); })));

  // Another stream's transaction, open with its position record in the log.
  transactional_id_ += ".other";
  auto other = NewPublisher();
  ASSERT_TRUE(IsDone(Finish(*other, [&] { return other->InitTransactions(10s); })));
  ASSERT_TRUE(IsDone(other->BeginTransaction()));
  const int acked_before = acked_;
  ASSERT_TRUE(other->Produce((*store)->PositionRecord("other", "x"), 0).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        other->Poll(10ms);
        return acked_ > acked_before;
      },
      30s));

  ASSERT_TRUE(IsDone(mine->BeginTransaction()));
  ASSERT_TRUE(mine->Produce((*store)->PositionRecord("mine", "2"), 0).ok());
  ASSERT_TRUE(IsDone(Finish(*mine, [&] { return mine->CommitTransaction(10s); })));

  auto blocked = (*store)->ReadLast("mine", 0, 2s);
  EXPECT_FALSE(blocked.ok()) << "read past an open transaction: "
                             << (blocked.ok() && blocked->has_value() ? (*blocked)->value : std::string("nothing"));
  EXPECT_EQ(StatusCode::kRetriable, blocked.status().code());

  ASSERT_TRUE(IsDone(Finish(*other, [&] { return other->CommitTransaction(10s); })));
  auto read = (*store)->ReadLast("mine", 0, 30s);
  ASSERT_TRUE(read.ok()) << read.status().message();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ("2", (*read)->value);
}

TEST_F(TransactionsTest, APositionTopicWithSeveralPartitionsIsRefusedByName) {
  KafkaConfig c;
  c.bootstrap_servers = SharedServices().kafka_bootstrap;
  auto store = PositionStore::Create(c, topic_);  // made with 3 partitions in SetUp()
  ASSERT_TRUE(store.ok()) << store.status().message();
  const Status st = (*store)->EnsureTopic(30s);
  EXPECT_EQ(StatusCode::kInvalidConfig, st.code());
  EXPECT_NE(std::string::npos, st.message().find("\"" + topic_ + "\" has 3 partitions")) << st.message();
}

}  // namespace
}  // namespace outboxd::testing
