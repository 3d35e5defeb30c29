// The one switch that decides what a Kafka error means for a record.
#include "pipeline/publisher.h"

#include <gtest/gtest.h>

#include <set>

namespace outboxd {
namespace {

TEST(ClassifyKafkaError, SuccessIsPersisted) {
  EXPECT_EQ(DeliveryOutcome::kPersisted, ClassifyKafkaError(RD_KAFKA_RESP_ERR_NO_ERROR));
}

TEST(ClassifyKafkaError, RecordProblemsArePermanent) {
  for (auto e : {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                 RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, RD_KAFKA_RESP_ERR_INVALID_RECORD,
                 RD_KAFKA_RESP_ERR_POLICY_VIOLATION}) {
    EXPECT_EQ(DeliveryOutcome::kPermanent, ClassifyKafkaError(e)) << rd_kafka_err2name(e);
  }
}

TEST(ClassifyKafkaError, OutagesAndTimeoutsAreRetriable) {
  for (auto e :
       {RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR__PURGE_QUEUE}) {
    EXPECT_EQ(DeliveryOutcome::kRetriable, ClassifyKafkaError(e)) << rd_kafka_err2name(e);
  }
}

TEST(ClassifyKafkaError, FatalProducerErrorsRecreateTheProducer) {
  EXPECT_EQ(DeliveryOutcome::kFatal, ClassifyKafkaError(RD_KAFKA_RESP_ERR__FATAL));
}

TEST(Publisher, UnknownLibrdkafkaPropertyIsAConfigErrorNamingIt) {
  KafkaConfig c;
  c.bootstrap_servers = "127.0.0.1:1";
  c.properties["compression.typo"] = "lz4";
  auto p = Publisher::Create(c, [](const DeliveryReport&) {});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(StatusCode::kInvalidConfig, p.status().code());
  EXPECT_NE(std::string::npos, p.status().message().find("compression.typo")) << p.status().message();
}

TEST(Publisher, InvalidPropertyValueIsAConfigError) {
  KafkaConfig c;
  c.bootstrap_servers = "127.0.0.1:1";
  c.properties["compression.type"] = "zip";
  auto p = Publisher::Create(c, [](const DeliveryReport&) {});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(StatusCode::kInvalidConfig, p.status().code());
}

// A fatal idempotent-producer error cannot be provoked from a real broker on
// demand, so this uses librdkafka's mock cluster and its fatal-error hook.
class PublisherOnMockCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    KafkaConfig c;
    c.bootstrap_servers = "unused:9092";
    c.properties["test.mock.num.brokers"] = "1";
    auto p = Publisher::Create(c, [this](const DeliveryReport& r) { reports_.push_back(r); });
    ASSERT_TRUE(p.ok()) << p.status().message();
    publisher_ = std::move(p).value();
  }
  Record Event(const std::string& key) { return Record{"events", key, std::string("{}"), {{"id", key}}, std::nullopt}; }
  // Polls until `n` reports arrived or 30 s passed.
  bool AwaitReports(std::size_t n) {
    for (int i = 0; i < 300 && reports_.size() < n; ++i) {
      publisher_->Poll(std::chrono::milliseconds(100));
    }
    return reports_.size() >= n;
  }
  std::unique_ptr<Publisher> publisher_;
  std::vector<DeliveryReport> reports_;
};

TEST_F(PublisherOnMockCluster, ReportsCarryTheTokenAndPersisted) {
  ASSERT_TRUE(publisher_->Produce(Event("a"), 41).ok());
  ASSERT_TRUE(publisher_->Produce(Event("b"), 42).ok());
  ASSERT_TRUE(AwaitReports(2));
  // Keys a and b may land in different partitions: reports come in any order.
  std::set<uint64_t> tokens;
  for (const auto& r : reports_) {
    tokens.insert(r.token);
    EXPECT_EQ(DeliveryOutcome::kPersisted, r.outcome);
  }
  EXPECT_EQ((std::set<uint64_t>{41, 42}), tokens);
}

TEST_F(PublisherOnMockCluster, FatalErrorIsRaisedAndRecreateProducesAgain) {
  ASSERT_TRUE(publisher_->Produce(Event("a"), 1).ok());
  ASSERT_TRUE(AwaitReports(1));
  ASSERT_EQ(RD_KAFKA_RESP_ERR_NO_ERROR,
            rd_kafka_test_fatal_error(publisher_->native_handle(), RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                      "injected"));
  publisher_->Poll(std::chrono::milliseconds(100));
  EXPECT_TRUE(publisher_->fatal_error_raised());
  EXPECT_EQ(StatusCode::kFatal, publisher_->Produce(Event("b"), 2).code());

  ASSERT_TRUE(publisher_->Recreate().ok());
  EXPECT_FALSE(publisher_->fatal_error_raised());
  ASSERT_TRUE(publisher_->Produce(Event("b"), 3).ok());
  ASSERT_TRUE(AwaitReports(2));
  EXPECT_EQ(3u, reports_.back().token);
  EXPECT_EQ(DeliveryOutcome::kPersisted, reports_.back().outcome);
}

}  // namespace
}  // namespace outboxd
