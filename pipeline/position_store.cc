#include "pipeline/position_store.h"

#include "config/kafka_conf.h"

#include <algorithm>
#include <array>
#include <memory>
#include <string_view>

namespace outboxd {

namespace {

using Clock = std::chrono::steady_clock;

int Millis(std::chrono::milliseconds d) { return static_cast<int>(std::max<int64_t>(0, d.count())); }

std::chrono::milliseconds Remaining(Clock::time_point end) {
  return std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(end - Clock::now()));
}

// The partition count of `topic`, 0 when it does not exist.
Result<int> PartitionCount(rd_kafka_t* rk, const std::string& topic, std::chrono::milliseconds timeout) {
  rd_kafka_topic_t* t = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  if (t == nullptr) return Status::Internal("could not look up topic \"" + topic + "\"");
  const rd_kafka_metadata_t* md = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t, &md, Millis(timeout));
  rd_kafka_topic_destroy(t);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Retriable("could not read the metadata of topic \"" + topic + "\": " + rd_kafka_err2name(err));
  }
  int partitions = 0;
  if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) partitions = md->topics[0].partition_cnt;
  rd_kafka_metadata_destroy(md);
  return partitions;
}

}  // namespace

Result<std::unique_ptr<PositionStore>> PositionStore::Create(const KafkaConfig& kafka, std::string topic) {
  KafkaConf conf;
  auto set = [&](const std::string& k, const std::string& v) { return conf.Set(k, v).Prefixed("position reader"); };
  OUTBOXD_RETURN_IF_ERROR(set("bootstrap.servers", kafka.bootstrap_servers));
  // The connection (and, later, security) properties are the producer's;
  // librdkafka ignores the producer-only ones for a consumer (with a warning,
  // silenced by log_level 3).
  for (const auto& [k, v] : kafka.properties) OUTBOXD_RETURN_IF_ERROR(set(k, v));
  OUTBOXD_RETURN_IF_ERROR(set("log_level", "3"));                     // not the warnings about producer-only properties
  OUTBOXD_RETURN_IF_ERROR(set("allow.auto.create.topics", "false"));  // EnsureTopic() creates it, compacted
  OUTBOXD_RETURN_IF_ERROR(set("client.id", "outboxd-positions"));
  // assign() only: the group is never joined and nothing is committed.
  OUTBOXD_RETURN_IF_ERROR(set("group.id", "outboxd-positions"));
  OUTBOXD_RETURN_IF_ERROR(set("enable.auto.commit", "false"));
  OUTBOXD_RETURN_IF_ERROR(set("isolation.level", "read_committed"));
  OUTBOXD_RETURN_IF_ERROR(set("enable.partition.eof", "true"));
  OUTBOXD_RETURN_IF_ERROR(set("auto.offset.reset", "earliest"));  // a hint past a compacted end
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof errstr);
  if (rk == nullptr) return Status::InvalidConfig(std::string("could not create the position reader: ") + errstr);
  conf.release();                  // now owned by rk
  rd_kafka_poll_set_consumer(rk);  // one queue: errors are served by consumer_poll, not left to pile up
  return std::unique_ptr<PositionStore>(new PositionStore(std::move(topic), rk));
}

PositionStore::~PositionStore() {
  rd_kafka_consumer_close(rk_);
  rd_kafka_destroy(rk_);
}

Status PositionStore::EnsureTopic(std::chrono::milliseconds timeout) {
  const Clock::time_point end = Clock::now() + timeout;
  auto existing = PartitionCount(rk_, topic_, timeout);
  if (!existing.ok()) return existing.status();
  if (*existing == 0) {
    char errstr[512];
    rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic_.c_str(), 1, -1, errstr, sizeof errstr);
    if (nt == nullptr) return Status::InvalidConfig("position topic \"" + topic_ + "\": " + errstr);
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_queue_t* q = rd_kafka_queue_new(rk_);
    std::array<rd_kafka_NewTopic_t*, 1> topics = {nt};
    rd_kafka_CreateTopics(rk_, topics.data(), topics.size(), nullptr, q);
    rd_kafka_event_t* ev = rd_kafka_queue_poll(q, Millis(Remaining(end)));
    Status st = Status::Retriable("Kafka did not answer the creation of topic \"" + topic_ + "\" in time");
    if (ev != nullptr) {
      std::size_t n = 0;
      const rd_kafka_topic_result_t** results =
          rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
      const rd_kafka_resp_err_t err = n == 1 ? rd_kafka_topic_result_error(results[0]) : rd_kafka_event_error(ev);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        st = Status::Ok();
      } else {
        st = Status::Retriable("could not create the position topic \"" + topic_ + "\": " + rd_kafka_err2name(err));
      }
      rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    OUTBOXD_RETURN_IF_ERROR(st);
    existing = PartitionCount(rk_, topic_, Remaining(end));
    if (!existing.ok()) return existing.status();
  }
  if (*existing > 1) {
    return Status::InvalidConfig("the position topic \"" + topic_ + "\" has " + std::to_string(*existing) +
                                 " partitions; it needs exactly one");
  }
  return Status::Ok();
}

Record PositionStore::PositionRecord(const std::string& stream, const std::string& position) const {
  Record r;
  r.topic = topic_;
  r.key = stream;
  r.value = position;
  return r;
}

Result<std::optional<StoredPosition>> PositionStore::ReadLast(const std::string& stream, int64_t from_offset,
                                                              std::chrono::milliseconds timeout) {
  const Clock::time_point end = Clock::now() + timeout;
  std::unique_ptr<rd_kafka_topic_partition_list_t, decltype(&rd_kafka_topic_partition_list_destroy)> parts(
      rd_kafka_topic_partition_list_new(1), &rd_kafka_topic_partition_list_destroy);
  rd_kafka_topic_partition_list_add(parts.get(), topic_.c_str(), 0)->offset = std::max<int64_t>(0, from_offset);
  if (rd_kafka_resp_err_t err = rd_kafka_assign(rk_, parts.get()); err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Retriable("could not read the position topic \"" + topic_ + "\": " + rd_kafka_err2name(err));
  }
  // Read at least to the end of the log as it is now: read_committed stops
  // early, at the first record of a transaction still open (another
  // stream's, or one its crashed holder left until transaction.timeout.ms),
  // and a position read there could be older than one committed after it.
  // The end is the high watermark of the first fetch, which librdkafka
  // caches (ListOffsets under read_committed would answer the stable offset).
  int64_t end_of_log = -1;
  std::optional<StoredPosition> last;
  Status st = Status::Retriable("the position topic \"" + topic_ +
                                "\" was not read to its end in time: a transaction is still open there, or Kafka "
                                "did not answer");
  while (Clock::now() < end) {
    rd_kafka_message_t* m =
        rd_kafka_consumer_poll(rk_, Millis(std::min(Remaining(end), std::chrono::milliseconds(100))));
    if (m == nullptr) continue;
    std::unique_ptr<rd_kafka_message_t, decltype(&rd_kafka_message_destroy)> msg(m, &rd_kafka_message_destroy);
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      int64_t low = 0;
      if (end_of_log < 0 &&
          rd_kafka_get_watermark_offsets(rk_, topic_.c_str(), 0, &low, &end_of_log) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        end_of_log = -1;
      }
      if (end_of_log < 0 || msg->offset < end_of_log) continue;  // an open transaction ends first
      st = Status::Ok();
      break;
    }
    if (msg->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || msg->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
      // Also right after EnsureTopic() created it, until the metadata spreads.
      st = Status::Retriable("the position topic \"" + topic_ + "\" does not exist (yet)");
      continue;
    }
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) continue;  // librdkafka retries until the deadline
    if (msg->key == nullptr || std::string_view(static_cast<const char*>(msg->key), msg->key_len) != stream) continue;
    std::string value;
    if (msg->payload != nullptr) value.assign(static_cast<const char*>(msg->payload), msg->len);
    last = StoredPosition{std::move(value), msg->offset};
  }
  rd_kafka_assign(rk_, nullptr);
  if (!st.ok()) return st;
  return last;
}

}  // namespace outboxd
