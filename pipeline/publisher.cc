#include "pipeline/publisher.h"

#include "config/kafka_conf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "common/failpoint.h"
#include "common/logging.h"

namespace outboxd {

DeliveryOutcome ClassifyKafkaError(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
      return DeliveryOutcome::kPersisted;

    // The record itself can never be accepted as it is.
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    // Its topic cannot be written: no such topic after librdkafka waited for it
    // to appear, an illegal name, a policy or an ACL.
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
      return DeliveryOutcome::kPermanent;

    // The idempotent producer is dead or may never work: recreate it.
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return DeliveryOutcome::kFatal;

    // Everything else — timeouts, transport errors, leader changes, not enough
    // replicas, purged queues, authentication hiccups — is worth another try:
    // librdkafka already retried within message.timeout.ms, outboxd produces
    // the record again.
    default:
      return DeliveryOutcome::kRetriable;
  }
}

std::optional<std::string> KafkaRefusalHint(rd_kafka_resp_err_t err, std::string_view reason) {
  if (err != RD_KAFKA_RESP_ERR__AUTHENTICATION && err != RD_KAFKA_RESP_ERR__SSL &&
      err != RD_KAFKA_RESP_ERR__TRANSPORT) {
    return std::nullopt;
  }
  auto says = [&](std::string_view what) { return reason.find(what) != std::string_view::npos; };
  if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION) {
    return "(check sasl.mechanisms, sasl.username and sasl.password in [kafka.properties], and that the broker "
           "has that user)";
  }
  // outboxd did not trust the broker's certificate.
  if (says("certificate verify failed")) {
    return "(check that ssl.ca.location holds the CA that signed the broker's certificate, that the certificate "
           "names the host given in bootstrap_servers, and that it has not expired)";
  }
  // The broker ended the handshake with an alert: it did not accept
  // outboxd's client certificate (alert 42 "bad certificate" when none was
  // sent, 46 "certificate unknown" when expired or of another CA).
  if (says("SSL alert number")) {
    return "(check ssl.certificate.location and ssl.key.location: the broker requires a client certificate signed "
           "by a CA it trusts and not expired)";
  }
  if (err == RD_KAFKA_RESP_ERR__SSL) {
    return "(check security.protocol: this listener does not seem to speak TLS)";
  }
  // librdkafka's own guess when a broker hangs up on the first request.
  if (says("incorrect security.protocol")) {
    return "(check security.protocol: this listener seems to expect TLS or SASL)";
  }
  return std::nullopt;
}

Publisher::Publisher(KafkaConfig config, DeliveryHandler on_delivery, std::string transactional_id)
    : config_(std::move(config)),
      on_delivery_(std::move(on_delivery)),
      transactional_id_(std::move(transactional_id)),
      acks_until_fatal_(FailpointValue("kafka_fatal_after_acks").value_or(-1)),
      acks_until_timeout_(FailpointValue("kafka_timeout_report_after_acks").value_or(-1)) {}

Publisher::~Publisher() { Destroy(); }

Result<std::unique_ptr<Publisher>> Publisher::Create(const KafkaConfig& config, DeliveryHandler on_delivery,
                                                     std::string transactional_id) {
  std::unique_ptr<Publisher> p(new Publisher(config, std::move(on_delivery), std::move(transactional_id)));
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return Status::Internal(std::string("could not create a pipe: ") + std::strerror(errno));
  }
  p->wake_read_ = UniqueFd(fds[0]);
  p->wake_write_ = UniqueFd(fds[1]);
  OUTBOXD_RETURN_IF_ERROR(p->Build());
  return p;
}

Status Publisher::Build() {
  KafkaConf conf;  // owned until rd_kafka_new() takes it
  auto set = [&](const std::string& k, const std::string& v, bool user) -> Status {
    return conf.Set(k, v).Prefixed(user ? "[kafka.properties] \"" + k + "\"" : "kafka property \"" + k + "\"");
  };
  // Defaults that make the producer safe and fast for outboxd; any of them can
  // be overridden in [kafka.properties].
  OUTBOXD_RETURN_IF_ERROR(set("bootstrap.servers", config_.bootstrap_servers, false));
  OUTBOXD_RETURN_IF_ERROR(set("client.id", "outboxd", false));
  OUTBOXD_RETURN_IF_ERROR(set("enable.idempotence", "true", false));
  OUTBOXD_RETURN_IF_ERROR(set("acks", "all", false));
  OUTBOXD_RETURN_IF_ERROR(set("linger.ms", "5", false));
  OUTBOXD_RETURN_IF_ERROR(set("queue.buffering.max.messages", std::to_string(config_.max_in_flight + 10000), false));
  // Bounds the memory of records waiting for Kafka (librdkafka's default is
  // 1 GiB); when it is full outboxd stops claiming until deliveries drain.
  OUTBOXD_RETURN_IF_ERROR(set("queue.buffering.max.kbytes", "65536", false));
  if (!transactional_id_.empty()) OUTBOXD_RETURN_IF_ERROR(set("transactional.id", transactional_id_, false));
  for (const auto& [k, v] : config_.properties) {
    if (k == "bootstrap.servers") continue;  // [kafka] bootstrap_servers wins
    OUTBOXD_RETURN_IF_ERROR(set(k, v, true));
  }
  auto it = config_.properties.find("enable.idempotence");
  if (it != config_.properties.end() && it->second != "true") {
    Logger("kafka")->warn("enable.idempotence is off: retries may reorder or duplicate events of the same key");
  }

  rd_kafka_conf_set_opaque(conf.get(), this);
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &Publisher::OnDelivery);
  rd_kafka_conf_set_error_cb(conf.get(), &Publisher::OnError);
  rd_kafka_conf_set_log_cb(conf.get(), &Publisher::OnLog);

  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof errstr);
  if (rk == nullptr) return Status::InvalidConfig(std::string("could not create the Kafka producer: ") + errstr);
  conf.release();  // now owned by rk
  rk_ = rk;
  main_queue_ = rd_kafka_queue_get_main(rk_);
  rd_kafka_queue_io_event_enable(main_queue_, wake_write_.get(), "1", 1);
  fatal_raised_ = false;
  return Status::Ok();
}

void Publisher::Destroy() {
  if (rk_ == nullptr) return;
  // Records still queued are dropped; the caller re-produces from its own
  // checkpoint, so nothing is lost.
  rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_queue_io_event_enable(main_queue_, -1, nullptr, 0);
  rd_kafka_queue_destroy(main_queue_);
  main_queue_ = nullptr;
  auto handler = std::move(on_delivery_);
  on_delivery_ = nullptr;  // reports of purged records must not reach the caller
  rd_kafka_destroy(rk_);
  rk_ = nullptr;
  known_topics_.clear();
  on_delivery_ = std::move(handler);
}

Status Publisher::UseTransactionalId(const std::string& id) {
  if (id == transactional_id_) return Status::Ok();
  transactional_id_ = id;
  Destroy();
  return Build();
}

Status Publisher::Recreate() {
  Logger("kafka")->warn("recreating the Kafka producer");
  Destroy();
  return Build();
}

// librdkafka (2.0) asks for the metadata of a topic it has not produced to
// yet only on its 1-second topic scan, so the first record of every new topic
// would wait up to a second. Asking once, right away, removes that wait. The
// look-up is bounded: while Kafka is down it costs one short wait per topic.
void Publisher::LookUpTopicOnce(const std::string& topic) {
  if (!known_topics_.insert(topic).second) return;
  rd_kafka_topic_t* t = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
  if (t == nullptr) return;
  const rd_kafka_metadata_t* md = nullptr;
  if (rd_kafka_metadata(rk_, 0, t, &md, 500) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_metadata_destroy(md);
  }
  rd_kafka_topic_destroy(t);
}

Status Publisher::Produce(const Record& record, uint64_t token) {
  if (rk_ == nullptr) return Status::Fatal("the Kafka producer is not running");
  LookUpTopicOnce(record.topic);
  rd_kafka_headers_t* headers = rd_kafka_headers_new(record.headers.size());
  for (const Header& h : record.headers) {
    rd_kafka_header_add(headers, h.name.data(), static_cast<ssize_t>(h.name.size()),
                        h.value ? h.value->data() : nullptr, h.value ? static_cast<ssize_t>(h.value->size()) : 0);
  }
  const char* key = record.key ? record.key->data() : nullptr;
  const std::size_t key_len = record.key ? record.key->size() : 0;
  // librdkafka copies a zero-length non-NULL value as an empty value; a NULL
  // pointer is a null value (tombstone).
  void* value = record.value ? const_cast<char*>(record.value->data()) : nullptr;
  const std::size_t value_len = record.value ? record.value->size() : 0;
  // rd_kafka_produceva rather than rd_kafka_producev: the same call without
  // the RD_KAFKA_V_* macros' GNU statement expressions.
  std::array<rd_kafka_vu_t, 7> args{};
  args[0].vtype = RD_KAFKA_VTYPE_TOPIC;
  args[0].u.cstr = record.topic.c_str();
  args[1].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
  args[1].u.i = RD_KAFKA_MSG_F_COPY;
  args[2].vtype = RD_KAFKA_VTYPE_KEY;
  args[2].u.mem = {const_cast<char*>(key), key_len};
  args[3].vtype = RD_KAFKA_VTYPE_VALUE;
  args[3].u.mem = {value, value_len};
  args[4].vtype = RD_KAFKA_VTYPE_HEADERS;
  args[4].u.headers = headers;
  args[5].vtype = RD_KAFKA_VTYPE_TIMESTAMP;
  args[5].u.i64 = record.timestamp_ms.value_or(0);
  // The token travels in the opaque pointer and comes back in the report.
  args[6].vtype = RD_KAFKA_VTYPE_OPAQUE;
  args[6].u.ptr = reinterpret_cast<void*>(static_cast<uintptr_t>(token));  // NOLINT(performance-no-int-to-ptr)
  rd_kafka_error_t* error = rd_kafka_produceva(rk_, args.data(), args.size());
  if (error == nullptr) return Status::Ok();
  // A fatal error comes with its cause's code; producev said _FATAL.
  const rd_kafka_resp_err_t err =
      rd_kafka_error_is_fatal(error) ? RD_KAFKA_RESP_ERR__FATAL : rd_kafka_error_code(error);
  rd_kafka_error_destroy(error);
  rd_kafka_headers_destroy(headers);  // not taken over on failure
  last_produce_error_ = rd_kafka_err2name(err);
  const std::string what = last_produce_error_ + ": " + rd_kafka_err2str(err);
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return Status::Retriable(what);
  switch (ClassifyKafkaError(err)) {
    case DeliveryOutcome::kPermanent:
      return Status::Permanent(what);
    case DeliveryOutcome::kFatal:
      fatal_raised_ = true;
      return Status::Fatal(what);
    case DeliveryOutcome::kRetriable:
    case DeliveryOutcome::kPersisted:
      break;
  }
  return Status::Retriable(what);
}

// --- Transactions -----------------------------------------------------------------

std::string_view TxnOutcomeName(TxnOutcome outcome) {
  switch (outcome) {
    case TxnOutcome::kDone:
      return "done";
    case TxnOutcome::kInProgress:
      return "in progress";
    case TxnOutcome::kAbort:
      return "abort";
    case TxnOutcome::kFenced:
      return "fenced";
    case TxnOutcome::kFatal:
      return "fatal";
  }
  return "?";
}

namespace {

// The one place that decides what a transactional call's error means; takes
// ownership of `error`.
TxnResult ClassifyTxnError(rd_kafka_error_t* error) {
  if (error == nullptr) return {};
  TxnResult r;
  r.error = std::string(rd_kafka_error_name(error)) + ": " + rd_kafka_error_string(error);
  const rd_kafka_resp_err_t code = rd_kafka_error_code(error);
  const bool fenced = code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
                      code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
  // Another call is still in progress (e.g. an abort while a commit waits
  // to be resumed): retrying would spin, the caller called out of turn.
  const bool out_of_turn = code == RD_KAFKA_RESP_ERR__CONFLICT || code == RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS;
  const bool usable = !out_of_turn && !rd_kafka_error_is_fatal(error);
  if (fenced) {
    r.outcome = TxnOutcome::kFenced;
  } else if (usable && rd_kafka_error_txn_requires_abort(error)) {
    r.outcome = TxnOutcome::kAbort;
  } else if (usable && (rd_kafka_error_is_retriable(error) || code == RD_KAFKA_RESP_ERR__TIMED_OUT)) {
    r.outcome = TxnOutcome::kInProgress;
  } else {
    // Fatal, or a state error (a call out of turn): the producer is unusable.
    r.outcome = TxnOutcome::kFatal;
  }
  rd_kafka_error_destroy(error);
  return r;
}

TxnResult NotTransactional() { return {TxnOutcome::kFatal, "the producer is not transactional"}; }

}  // namespace

TxnResult Publisher::InitTransactions(std::chrono::milliseconds timeout) {
  if (rk_ == nullptr || !transactional()) return NotTransactional();
  return ClassifyTxnError(rd_kafka_init_transactions(rk_, static_cast<int>(timeout.count())));
}

TxnResult Publisher::BeginTransaction() {
  if (rk_ == nullptr || !transactional()) return NotTransactional();
  return ClassifyTxnError(rd_kafka_begin_transaction(rk_));
}

// librdkafka's commit and abort begin with a step that cannot be resumed: a
// call that times out there leaves its result behind, and the next call takes
// it for its own and fails with a state error (2.0.2: "_STATE: Operation not
// valid in state BeginCommit", 1 run in 100 of a commit called first with a
// zero timeout). So a commit starts only once nothing is outstanding (its
// flush is then instant), and neither ever gets less than kMinTxnEndTimeout; a
// timeout after that first step is resumable.
TxnResult Publisher::CommitTransaction(std::chrono::milliseconds timeout) {
  if (rk_ == nullptr || !transactional()) return NotTransactional();
  if (const int outstanding = OutstandingCount(); outstanding > 0) {
    return {TxnOutcome::kInProgress, std::to_string(outstanding) + " record(s) not yet acknowledged"};
  }
  const auto ms = std::max(timeout, kMinTxnEndTimeout).count();
  return ClassifyTxnError(rd_kafka_commit_transaction(rk_, static_cast<int>(ms)));
}

TxnResult Publisher::AbortTransaction(std::chrono::milliseconds timeout) {
  if (rk_ == nullptr || !transactional()) return NotTransactional();
  const auto ms = std::max(timeout, kMinTxnEndTimeout).count();
  return ClassifyTxnError(rd_kafka_abort_transaction(rk_, static_cast<int>(ms)));
}

void Publisher::Poll(std::chrono::milliseconds timeout) {
  if (rk_ != nullptr) rd_kafka_poll(rk_, static_cast<int>(timeout.count()));
}

int Publisher::OutstandingCount() const { return rk_ ? rd_kafka_outq_len(rk_) : 0; }

bool Publisher::ProbeKafka(std::chrono::milliseconds timeout) {
  if (rk_ == nullptr) return false;
  const rd_kafka_metadata_t* md = nullptr;
  if (rd_kafka_metadata(rk_, 0, nullptr, &md, static_cast<int>(timeout.count())) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return false;
  }
  rd_kafka_metadata_destroy(md);
  last_answer_ = std::chrono::steady_clock::now();
  return true;
}

Status Publisher::CheckRefused() {
  if (!refusal_) return Status::Ok();
  const std::string why = std::move(*refusal_);
  refusal_.reset();
  if (last_answer_ != std::chrono::steady_clock::time_point{} || ProbeKafka(kRefusalProbe)) {
    Logger("kafka")->warn("a broker refused outboxd, another one answers; going on: {}", why);
    return Status::Ok();
  }
  return Status::InvalidConfig("Kafka refused outboxd: " + why);
}

void Publisher::DrainWakeup() {
  char buf[256];
  while (::read(wake_read_.get(), buf, sizeof buf) > 0) {
  }
}

namespace {

// One step of a failpoint that counts acknowledgements down: true once, at
// the N-th (unarmed: -1).
bool CountDown(int64_t& remaining) { return remaining > 0 && --remaining == 0; }

}  // namespace

void Publisher::OnDelivery(rd_kafka_t* rk, const rd_kafka_message_t* msg, void* opaque) {
  auto* self = static_cast<Publisher*>(opaque);
  if (!self->on_delivery_) return;
  rd_kafka_resp_err_t err = msg->err;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR && CountDown(self->acks_until_timeout_)) {
    // The failpoint (common/failpoint.h): a record the broker persisted is
    // reported as timed out, as when the acknowledgement is lost.
    err = RD_KAFKA_RESP_ERR__MSG_TIMED_OUT;
  }
  DeliveryReport r;
  r.token = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(msg->_private));
  r.error = err;
  r.outcome = ClassifyKafkaError(err);
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char buf[512];
    const rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
    r.error_name = std::string("_FATAL(") + rd_kafka_err2name(orig) + ")";
    r.error_message = buf;
    self->fatal_raised_ = true;
  } else if (err) {
    r.error_name = rd_kafka_err2name(err);
    r.error_message = rd_kafka_err2str(err);
  }
  if (r.outcome == DeliveryOutcome::kFatal) self->fatal_raised_ = true;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) self->last_answer_ = std::chrono::steady_clock::now();
  r.partition = msg->partition;
  r.offset = msg->offset;
  self->on_delivery_(r);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR && CountDown(self->acks_until_fatal_)) {
    // The failpoint: a fatal idempotence error, as the broker would cause
    // with an out-of-order sequence.
    rd_kafka_test_fatal_error(rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "failpoint kafka_fatal_after_acks");
  }
}

void Publisher::OnError(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* self = static_cast<Publisher*>(opaque);
  const auto code = static_cast<rd_kafka_resp_err_t>(err);
  if (code == RD_KAFKA_RESP_ERR__FATAL) {
    char buf[512];
    const rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
    Logger("kafka")->error("fatal producer error {}: {}", rd_kafka_err2name(orig), buf);
    self->fatal_raised_ = true;
    return;
  }
  Logger("kafka")->warn("{}: {}", rd_kafka_err2name(code), reason);
  if (self->last_answer_ == std::chrono::steady_clock::time_point{} && !self->refusal_) {
    if (auto hint = KafkaRefusalHint(code, reason)) self->refusal_ = std::string(reason) + " " + *hint;
  }
  // librdkafka before 2.6.1 builds the SCRAM client-final message with a
  // nonce Kafka 4.x brokers reject (librdkafka#4895): a right password
  // fails too, so say so rather than let it look like a wrong one.
  constexpr int kScramFixedVersion = 0x020601ff;
  if (code == RD_KAFKA_RESP_ERR__AUTHENTICATION && !self->scram_hint_logged_ &&
      rd_kafka_version() < kScramFixedVersion && std::string_view(reason).find("SCRAM") != std::string_view::npos) {
    self->scram_hint_logged_ = true;
    Logger("kafka")->error(
        "librdkafka {} cannot authenticate with SCRAM to Kafka 4.x brokers, whatever the password "
        "(librdkafka#4895, fixed in 2.6.1): with such a broker use PLAIN over TLS or mutual TLS, or build outboxd "
        "on librdkafka 2.6.1 or newer",
        rd_kafka_version_str());
  }
}

void Publisher::OnLog(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  // syslog levels: 0-3 error, 4 warning, 5-6 info, 7 debug.
  auto log = Logger("kafka");
  if (level <= 3) {
    log->error("{}: {}", fac, buf);
  } else if (level == 4) {
    log->warn("{}: {}", fac, buf);
  } else if (level <= 6) {
    log->info("{}: {}", fac, buf);
  } else {
    log->debug("{}: {}", fac, buf);
  }
}

}  // namespace outboxd
