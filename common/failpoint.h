#pragma once
// Failpoints: test-only triggers that make outboxd fail at a chosen point, so
// a test hits a crash or error path deterministically instead of by timing.
// They are read from the environment variable OUTBOXD_FAILPOINTS, a
// comma-separated list of NAME=VALUE (e.g. "kafka_fatal_after_acks=3000").
// Unset — as in every production run — no failpoint is armed and
// FailpointValue() costs one branch.
//
// The failpoints outboxd knows:
//   kafka_fatal_after_acks=N  the producer raises a fatal error
//                             (rd_kafka_test_fatal_error) once N records were
//                             acknowledged, counted over the process's life.
//   kafka_timeout_report_after_acks=N
//                             the N-th acknowledged record is reported as
//                             _MSG_TIMED_OUT instead: a record in Kafka whose
//                             acknowledgement was lost, once per process.
//   kill_after_kafka_commits=N
//                             exactly-once: outboxd kills itself (SIGKILL)
//                             right after its N-th Kafka transaction
//                             committed, before the source confirms it.
//   kill_before_kafka_commits=N
//                             exactly-once: outboxd kills itself right before
//                             it asks Kafka to commit its N-th transaction
//                             (every record of it, the position record too,
//                             acknowledged): the transaction is never visible.

#include <cstdint>
#include <optional>
#include <string_view>

namespace outboxd {

// The value of failpoint `name`, when OUTBOXD_FAILPOINTS arms it.
std::optional<int64_t> FailpointValue(std::string_view name);

}  // namespace outboxd
