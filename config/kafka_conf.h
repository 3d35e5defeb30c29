#pragma once
// KafkaConf: owns one librdkafka configuration (rd_kafka_conf_t) and is the
// one place that asks librdkafka whether a property name and value are
// valid — the config loader judges [kafka.properties] with a scratch one
// (reporting file:line:column), the Publisher builds its producer from one.
// Move-only; not thread-safe.

#include <librdkafka/rdkafka.h>

#include <memory>
#include <string>

#include "common/status.h"

namespace outboxd {

class KafkaConf {
 public:
  KafkaConf() : conf_(rd_kafka_conf_new(), &rd_kafka_conf_destroy) {}

  // Sets one property; InvalidConfig with librdkafka's own words ("No such
  // configuration property: ...", "Invalid value for ...") when it refuses.
  [[nodiscard]] Status Set(const std::string& name, const std::string& value);

  rd_kafka_conf_t* get() const { return conf_.get(); }
  // Gives the handle up, for rd_kafka_new(), which takes it on success.
  rd_kafka_conf_t* release() { return conf_.release(); }

 private:
  std::unique_ptr<rd_kafka_conf_t, decltype(&rd_kafka_conf_destroy)> conf_;
};

}  // namespace outboxd
