#include "config/kafka_conf.h"

namespace outboxd {

Status KafkaConf::Set(const std::string& name, const std::string& value) {
  char errstr[512];
  if (rd_kafka_conf_set(conf_.get(), name.c_str(), value.c_str(), errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
    return Status::InvalidConfig(errstr);
  }
  return Status::Ok();
}

}  // namespace outboxd
