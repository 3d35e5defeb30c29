// The one switch that decides what a Kafka error means for a record.
#include "pipeline/publisher.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

TEST(ClassifyKafkaError, SuccessIsPersisted) {
  EXPECT_EQ(DeliveryOutcome::kPersisted, ClassifyKafkaError(RD_KAFKA_RESP_ERR_NO_ERROR));
}

TEST(ClassifyKafkaError, RecordProblemsArePermanent) {
  for (auto e : {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                 RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
                 RD_KAFKA_RESP_ERR_INVALID_RECORD, RD_KAFKA_RESP_ERR_POLICY_VIOLATION}) {
    EXPECT_EQ(DeliveryOutcome::kPermanent, ClassifyKafkaError(e)) << rd_kafka_err2name(e);
  }
}

TEST(ClassifyKafkaError, OutagesAndTimeoutsAreRetriable) {
  for (auto e : {RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TRANSPORT,
                 RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                 RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR__PURGE_QUEUE}) {
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

}  // namespace
}  // namespace outboxd
