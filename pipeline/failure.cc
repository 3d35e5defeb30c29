#include "pipeline/failure.h"

namespace outboxd {

std::string_view FailureActionName(FailureAction action) {
  switch (action) {
    case FailureAction::kNone:
      return "none";
    case FailureAction::kWaitForRoom:
      return "wait for room";
    case FailureAction::kReconnect:
      return "reconnect";
    case FailureAction::kRecreateProducer:
      return "recreate the producer";
    case FailureAction::kRewind:
      return "rewind";
    case FailureAction::kDeadLetter:
      return "dead-letter";
    case FailureAction::kHalt:
      return "halt";
    case FailureAction::kStop:
      return "stop";
  }
  return "?";
}

FailureAction ActionFor(const Status& status, StartState state) {
  switch (status.code()) {
    case StatusCode::kOk:
      return FailureAction::kNone;
    case StatusCode::kRetriable:
    case StatusCode::kInternal:  // an unexpected SQL error: log it and try again
      return FailureAction::kReconnect;
    case StatusCode::kInvalidConfig:
      return state == StartState::kStarting ? FailureAction::kStop : FailureAction::kReconnect;
    case StatusCode::kPermanent:
      return FailureAction::kStop;
    case StatusCode::kFatal:
      return FailureAction::kRecreateProducer;
  }
  return FailureAction::kStop;
}

namespace {

FailureAction Refused(bool dead_letter_record, bool has_dead_letter_topic) {
  if (dead_letter_record || !has_dead_letter_topic) return FailureAction::kHalt;
  return FailureAction::kDeadLetter;
}

}  // namespace

FailureAction ActionFor(DeliveryOutcome outcome, bool dead_letter_record, bool has_dead_letter_topic) {
  switch (outcome) {
    case DeliveryOutcome::kPersisted:
      return FailureAction::kNone;
    case DeliveryOutcome::kRetriable:
      return FailureAction::kRewind;
    case DeliveryOutcome::kPermanent:
      return Refused(dead_letter_record, has_dead_letter_topic);
    case DeliveryOutcome::kFatal:
      return FailureAction::kRecreateProducer;
  }
  return FailureAction::kHalt;
}

FailureAction ActionForProduce(const Status& status, bool dead_letter_record, bool has_dead_letter_topic) {
  switch (status.code()) {
    case StatusCode::kOk:
      return FailureAction::kNone;
    case StatusCode::kRetriable:
      return FailureAction::kWaitForRoom;
    case StatusCode::kFatal:
      return FailureAction::kRecreateProducer;
    case StatusCode::kPermanent:
    case StatusCode::kInvalidConfig:
    case StatusCode::kInternal:
      return Refused(dead_letter_record, has_dead_letter_topic);
  }
  return FailureAction::kHalt;
}

}  // namespace outboxd
