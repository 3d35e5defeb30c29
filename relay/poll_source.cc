#include "relay/poll_source.h"

#include <prometheus/counter.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>

#include "common/advisory_locks.h"
#include "common/logging.h"
#include "pipeline/dead_letter.h"
#include "pipeline/failure.h"
#include "relay/poll_position.h"
#include "relay/position_set.h"

namespace outboxd {

namespace {

// Delivery tokens: stream index (12 bits) | dead-letter flag (1 bit) | ticket.
constexpr int kTicketBits = 51;
constexpr uint64_t kTicketMask = (uint64_t{1} << kTicketBits) - 1;
constexpr uint64_t kDeadLetterBit = uint64_t{1} << kTicketBits;

// The stream index of the position record that ends a Kafka transaction
// (exactly once); no table has it.
constexpr std::size_t kPositionStream = (std::size_t{1} << 12) - 1;

uint64_t Token(std::size_t stream, bool dead_letter, uint64_t ticket) {
  return (static_cast<uint64_t>(stream) << (kTicketBits + 1)) | (dead_letter ? kDeadLetterBit : 0) |
         (ticket & kTicketMask);
}

// A warning that could repeat every turn (the sweep found rows, gaps were
// merged) is logged at most this often per table.
constexpr std::chrono::seconds kRepeatedWarningInterval(60);
// After taking a table over from another instance, wait this long before
// the first claim: the old holder, if it is alive and only lost its
// session, reconnects (its first retry comes after 100 ms) and deletes or
// marks what Kafka acknowledged after its session ended, so those rows are
// not sent a second time.
constexpr std::chrono::seconds kTakeoverGrace(1);

}  // namespace

struct PollSource::Stream {
  Stream(std::size_t i, const OutboxTableConfig& c, Router r) : index(i), config(&c), router(std::move(r)) {}

  // Constant after Create().
  const std::size_t index;  // in streams_ and in delivery tokens
  const OutboxTableConfig* const config;
  const Router router;

  std::optional<OutboxTable> table;  // resolved on every connect
  std::string name() const { return table ? table->name() : config->table; }
  SourceMetrics* metrics = nullptr;  // from the first connect (needs the resolved name)
  TableMetrics* table_metrics = nullptr;

  Phase phase = Phase::kStarting;  // changed by Enter() and Halt() only

  // A produced row: its position, the published counter of its topic and
  // when it was claimed (for outboxd_commit_to_ack_seconds).
  struct Tracked {
    long long value;
    prometheus::Counter* published;
    Clock::time_point claimed_at;
  };
  Checkpoint<Tracked> checkpoint;
  RewindGate gate;
  // Positions produced in this generation and not yet deleted/marked: no
  // read must produce them again.
  PositionSet claimed;
  // Acknowledged positions waiting for the DELETE/UPDATE to succeed.
  std::vector<long long> unreleased;
  // Tickets forgotten by a rewind before their report came: an
  // acknowledgement counts the row as resent, for this cause.
  std::unordered_map<uint64_t, ResendCause> resend_if_acked;
  // The cursor and the gaps below it; created on the first connect (its
  // rule depends on the table's sequence).
  std::optional<GapTracker> gaps;

  bool more = true;  // the last claim was full: claim again at once
  bool notified = false;
  Clock::time_point next_poll{};
  Clock::time_point claim_not_before{};  // kTakeoverGrace after a takeover
  Clock::time_point next_sweep{};
  uint64_t published = 0;
  uint64_t dead_lettered = 0;
  LogThrottle sweep_warnings{kRepeatedWarningInterval};
  LogThrottle merge_warnings{kRepeatedWarningInterval};
  uint64_t gap_merges_logged = 0;

  // Exactly once.
  uint64_t committed_before = 0;  // tickets below it are in committed Kafka transactions
  // The PostgreSQL transactions (xids) of its rows in the open Kafka transaction.
  std::set<std::string> txn_xids;
  bool round_complete = true;  // the last round produced every row its claim and gap read found
  bool claim_full = false;     // the last claim hit its limit: rows may be left past the cursor
  bool late_in_txn = false;    // the transaction holds gap or sweep rows (read after their claim)
  Clock::time_point last_claim{};
  int64_t split_check_at = 0;  // check for rows left past the cursor once the transaction has this many
  // Rows Kafka refused for good: dead-lettered when produced again after the
  // abort (error name, message).
  std::map<long long, std::pair<std::string, std::string>> poisoned;
};

PollSource::PollSource(const Config& config, Metrics& metrics) : config_(config), metrics_(metrics) {}
PollSource::~PollSource() = default;

Result<std::unique_ptr<PollSource>> PollSource::Create(const Config& config, Metrics& metrics) {
  std::unique_ptr<PollSource> source(new PollSource(config, metrics));
  for (const OutboxTableConfig& t : config.outboxes) {
    if (t.source != OutboxSource::kPoll) continue;  // captured by the cdc source
    auto router = Router::Create(t);
    if (!router.ok()) return router.status().Prefixed(t.config_location);
    source->streams_.push_back(std::make_unique<Stream>(source->streams_.size(), t, std::move(router).value()));
  }
  return source;
}

// --- Phases -----------------------------------------------------------------------

void PollSource::Enter(Stream& s, Phase phase, std::string_view why) {
  if (s.phase == Phase::kHalted) return;  // final
  if (!why.empty()) Logger("relay")->info("{}", why);
  s.phase = phase;
  if (phase == Phase::kClaiming) s.more = true;
}

void PollSource::Locked(Stream& s, LockAttempt attempt) {
  // Exactly once, Kafka's position says what the old holder committed.
  if (attempt == LockAttempt::kStandbyRetry && txn_ == nullptr) s.claim_not_before = Clock::now() + kTakeoverGrace;
  const std::string why = attempt == LockAttempt::kStandbyRetry
                              ? "took over \"" + s.name() + "\" from another outboxd instance"
                              : "relaying \"" + s.name() + "\" (order by " + s.config->order_by + ", " +
                                    (s.config->after_delivery == AfterDelivery::kDelete ? "delete" : "mark") +
                                    " after delivery, topic " + s.config->topic +
                                    (txn_ != nullptr ? ", exactly once" : "") + ")";
  Enter(s, s.gate.rewinding() ? Phase::kRewinding : Phase::kClaiming, why);
}

Status PollSource::TryLock(Stream& s, LockAttempt attempt) {
  if (txn_ != nullptr) return TryLockAll(attempt);
  auto r = conn_.Exec(kTryLockPollTableSql, {std::to_string(s.table->oid())});
  if (!r.ok()) return r.status().Prefixed("could not lock \"" + s.name() + "\"");
  if (std::string_view(PQgetvalue(r->get(), 0, 0)) == "t") {
    Locked(s, attempt);
    return Status::Ok();
  }
  // Another instance took the table while this one was away. What this one
  // had in flight stays tracked: what Kafka acknowledged is still deleted or
  // marked (ReleaseAcknowledged() needs no lock), so the new holder, which
  // waits kTakeoverGrace before its first claim, does not send it again.
  if (s.phase != Phase::kStandingBy) {
    Enter(s, Phase::kStandingBy, "\"" + s.name() + "\" is relayed by another outboxd instance; standing by");
  }
  return Status::Ok();
}

Status PollSource::TryLockAll(LockAttempt attempt) {
  // In oid order, whatever the configuration's order: two instances try the
  // same table first, and the one that gets it gets all.
  std::vector<Stream*> order;
  for (auto& s : streams_) order.push_back(s.get());
  std::sort(order.begin(), order.end(),
            [](const Stream* a, const Stream* b) { return a->table->oid() < b->table->oid(); });
  std::vector<const Stream*> taken;
  for (Stream* s : order) {
    auto r = conn_.Exec(kTryLockPollTableSql, {std::to_string(s->table->oid())});
    if (!r.ok()) return r.status().Prefixed("could not lock \"" + s->name() + "\"");
    if (std::string_view(PQgetvalue(r->get(), 0, 0)) == "t") {
      taken.push_back(s);
      continue;
    }
    // Held elsewhere: give back what this attempt took, and stand by.
    for (const Stream* t : taken) {
      auto u = conn_.Exec(kUnlockPollTableSql, {std::to_string(t->table->oid())});
      if (!u.ok()) return u.status().Prefixed("could not unlock \"" + t->name() + "\"");
    }
    for (auto& o : streams_) {
      o->next_poll = Clock::now() + o->config->poll_interval;
      if (o->phase == Phase::kStandingBy) continue;
      Enter(*o, Phase::kStandingBy,
            "\"" + s->name() +
                "\" is relayed by another outboxd instance; standing by with every table (exactly once, "
                "the tables share one Kafka transaction stream)");
    }
    return Status::Ok();
  }
  position_read_ = false;
  for (auto& s : streams_) Locked(*s, attempt);
  return Status::Ok();
}

void PollSource::Rewind(Stream& s, const std::string& why, RewindGate::Pause pause, ResendCause cause) {
  if (txn_ == nullptr) {
    RewindStream(s, why, pause, cause);
    return;
  }
  // Exactly once, the open Kafka transaction holds every table's rows: it is
  // aborted, and each table claims again once Kafka's position was read
  // again (a commit Kafka was asked for may still end committed).
  txn_->StartAbort();
  position_read_ = false;
  for (auto& other : streams_) {
    // A halted table too: what it had in the transaction is not committed.
    RewindStream(*other,
                 other.get() == &s ? why : "the Kafka transaction it shares with \"" + s.name() + "\" is aborted",
                 pause, cause);
  }
}

void PollSource::RewindStream(Stream& s, const std::string& why, RewindGate::Pause pause, ResendCause cause) {
  const std::chrono::milliseconds delay = s.gate.Start(pause, Clock::now());
  if (s.metrics != nullptr) {
    // Rows claimed again once the gate opens: those acknowledged already, and
    // those whose report is still owed if it says acknowledged (OnDelivery).
    s.metrics->Resent(cause, s.checkpoint.CountAcked([](const Stream::Tracked&) { return true; }));
    for (uint64_t ticket : s.checkpoint.PendingTickets()) s.resend_if_acked[ticket] = cause;
  }
  if (s.phase == Phase::kHalted) {
    // Nothing is produced again; only what it tracked is forgotten.
  } else if (pause == RewindGate::Pause::kBackOff) {
    // Kafka refused or lost records librdkafka had already retried: wait a
    // little longer each time before producing them again.
    Logger("relay")->warn("\"{}\": {}; producing its unacknowledged rows again in {} ms", s.name(), why, delay.count());
  } else {
    Logger("relay")->warn("\"{}\": {}; producing its unacknowledged rows again", s.name(), why);
  }
  s.checkpoint.Reset();
  s.claimed.clear();
  for (long long p : s.unreleased) s.claimed.insert(p);  // still to be deleted/marked
  if (s.gaps) s.gaps->Reset();
  s.txn_xids.clear();
  s.round_complete = true;
  s.claim_full = false;
  s.late_in_txn = false;
  s.split_check_at = 0;
  if (s.phase == Phase::kClaiming) Enter(s, Phase::kRewinding);
}

void PollSource::Halt(Stream& s, const std::string& why) {
  if (s.metrics != nullptr) s.metrics->SetHalted(true);
  if (s.phase != Phase::kHalted) {
    Logger("relay")->error(
        "\"{}\" halted: {}. The row stays unsent; fix it or configure dead_letter_topic, then restart outboxd",
        s.name(), why);
  }
  s.phase = Phase::kHalted;  // final: Enter() changes it no more
  // Exactly once, the open Kafka transaction may hold rows of this table
  // before the one that halts it (and of the same PostgreSQL transaction):
  // abort it, so that none of them is listed or released.
  if (txn_ != nullptr) {
    Rewind(s, "\"" + s.name() + "\" halted", RewindGate::Pause::kNone, ResendCause::kRewind);
  }
}

// --- Connecting ---------------------------------------------------------------------

Status PollSource::Connect(bool first) {
  auto log = Logger("relay");
  auto conn = PgConn::Connect(config_.postgres.conninfo, config_.postgres.password, "outboxd");
  if (!conn.ok()) return conn.status();
  conn_ = std::move(conn).value();

  std::set<std::string> channels;
  for (auto& s : streams_) {
    auto table = OutboxTable::Resolve(conn_, *s->config, s->router);
    if (!table.ok()) return table.status();
    s->table = std::move(table).value();
    if (s->metrics == nullptr) {
      s->metrics = &metrics_.Source(TableSource(s->table->name()));
      s->table_metrics = &metrics_.Table(s->table->name());
    }
    if (!s->gaps || s->gaps->fill() != s->table->gap_fill()) {
      if (s->table->gap_fill() == GapFill::kOpenSessions) {
        log->info(
            "\"{}\": {}; a gap below the cursor is watched until the sessions connected "
            "when it appeared have disconnected",
            s->name(), s->table->gap_fill_reason());
      }
      if (!s->gaps)
        s->gaps.emplace(s->table->gap_fill());
      else
        s->gaps->SetFill(s->table->gap_fill());
    }
    if (s->config->notify_channel) channels.insert(*s->config->notify_channel);
  }
  for (const std::string& ch : channels) {
    auto r = conn_.Exec("LISTEN " + conn_.QuoteIdentifier(ch));
    if (!r.ok()) return r.status().Prefixed("could not LISTEN on channel \"" + ch + "\"");
  }
  if (config_.kafka.delivery == Delivery::kExactlyOnce && txn_ == nullptr) {
    // The stream's id needs the cluster's identity: nothing is produced before.
    auto id = conn_.Exec("SELECT system_identifier::text, current_database() FROM pg_control_system()");
    if (!id.ok()) return id.status().Prefixed("could not read the PostgreSQL system identifier");
    std::vector<std::string> tables;
    for (const auto& s : streams_) tables.push_back(s->name());
    txn_ = std::make_unique<KafkaTransactions>(
        config_.kafka, KafkaTransactions::PollStream(PQgetvalue(id->get(), 0, 0), PQgetvalue(id->get(), 0, 1), tables),
        metrics_);
  }
  for (auto& s : streams_) s->next_poll = Clock::now();
  // Halted tables keep their lock too: a standby would halt on the same row.
  if (txn_ != nullptr) {
    OUTBOXD_RETURN_IF_ERROR(TryLockAll(LockAttempt::kOnConnect));
  } else {
    for (auto& s : streams_) OUTBOXD_RETURN_IF_ERROR(TryLock(*s, LockAttempt::kOnConnect));
  }
  resolved_once_ = true;
  if (lost_connection_) {
    for (auto& s : streams_) s->metrics->Reconnected();
  }
  lost_connection_ = false;
  log->info("connected to PostgreSQL{}", first ? "" : " again");
  return Status::Ok();
}

void PollSource::Disconnect() {
  conn_.reset();
  lost_connection_ = resolved_once_;
  // The session's advisory locks went with it; Connect() takes them again.
  // Exactly once, another instance may take the tables meanwhile: the open
  // Kafka transaction is aborted, and once the locks are taken again Kafka's
  // position tells what committed.
  if (txn_ != nullptr && !streams_.empty()) {
    Rewind(*streams_.front(), "lost the PostgreSQL session", RewindGate::Pause::kNone, ResendCause::kReconnect);
  }
}

// --- Deliveries ---------------------------------------------------------------------

void PollSource::OnDelivery(const DeliveryReport& r) {
  const std::size_t index = static_cast<std::size_t>(r.token >> (kTicketBits + 1));
  const bool dead_letter = (r.token & kDeadLetterBit) != 0;
  const uint64_t ticket = r.token & kTicketMask;
  if (index >= streams_.size()) return;
  Stream& s = *streams_[index];
  s.gate.Reported();
  if (!s.checkpoint.IsTracked(ticket)) {  // from before a rewind
    auto it = s.resend_if_acked.find(ticket);
    if (it == s.resend_if_acked.end()) return;
    if (r.outcome == DeliveryOutcome::kPersisted) s.metrics->Resent(it->second, 1);
    s.resend_if_acked.erase(it);
    return;
  }
  if (r.outcome == DeliveryOutcome::kPersisted) {
    const Stream::Tracked tracked = *s.checkpoint.PositionOf(ticket);
    if (s.checkpoint.MarkAcked(ticket)) {
      s.gate.Delivered();
      ++s.published;
      if (dead_letter) {
        ++s.dead_lettered;
        s.metrics->DeadLettered();
      } else {
        if (tracked.published != nullptr) tracked.published->Increment();
        s.metrics->ObserveCommitToAck(std::chrono::duration<double>(Clock::now() - tracked.claimed_at).count());
        s.metrics->Delivered();
      }
    }
    return;
  }
  s.metrics->PublishError(r.error_name);
  failures_.push_back({index, ticket, dead_letter, r});
}

Status PollSource::Settle(Clock::time_point now, FailedDeliveries failed) {
  auto release = [&]() -> Status {
    if (!conn_.healthy()) return Status::Ok();
    for (auto& s : streams_) OUTBOXD_RETURN_IF_ERROR(ReleaseAcknowledged(*s));
    return Status::Ok();
  };
  OUTBOXD_RETURN_IF_ERROR(release());
  if (failed == FailedDeliveries::kHold) return Status::Ok();
  HandleFailures();
  if (txn_ == nullptr) return Status::Ok();
  // Failures first: a refused record aborts the transaction, and is
  // remembered for the dead-letter topic before the abort forgets it.
  OUTBOXD_RETURN_IF_ERROR(AdvanceTransaction());
  OUTBOXD_RETURN_IF_ERROR(release());  // what just committed
  return CommitIfDue(now);
}

Status PollSource::OnProducerLost() {
  Status lost;
  if (txn_ != nullptr && !streams_.empty()) {
    lost = txn_->ProducerLost(Clock::now());  // what was open went with it
    // One rewind covers every table: they share the transaction.
    Rewind(*streams_.front(), "the Kafka producer failed fatally", RewindGate::Pause::kBackOff, ResendCause::kProducer);
  }
  for (auto& s : streams_) {
    if (txn_ == nullptr && s->phase != Phase::kHalted) {
      Rewind(*s, "the Kafka producer failed fatally", RewindGate::Pause::kBackOff, ResendCause::kProducer);
    }
    s->gate.ProducerLost();  // its queue went with it, and the reports it owed
    s->resend_if_acked.clear();
  }
  failures_.clear();
  return lost;
}

void PollSource::HandleFailures() {
  std::vector<Failure> failures;
  failures.swap(failures_);
  for (const Failure& f : failures) HandleFailure(f);
}

void PollSource::HandleFailure(const Failure& f) {
  Stream& s = *streams_[f.stream];
  const Stream::Tracked* pos = s.checkpoint.PositionOf(f.ticket);
  if (pos == nullptr) return;  // made stale by an earlier rewind
  const std::string what = "row " + s.config->order_by + "=" + std::to_string(pos->value) + " of \"" + s.name() + "\"";
  const std::string err = f.report.error_name + ": " + f.report.error_message;
  switch (ActionFor(f.report.outcome, f.dead_letter, s.config->dead_letter_topic.has_value())) {
    case FailureAction::kRewind:
      Rewind(s, what + " was not delivered (" + err + ")", RewindGate::Pause::kBackOff, ResendCause::kRewind);
      return;
    case FailureAction::kHalt:
      s.checkpoint.MarkFailed(f.ticket);
      Halt(s, f.dead_letter ? what + " could not be written to the dead-letter topic \"" +
                                  *s.config->dead_letter_topic + "\" either: " + err
                            : what + " can never be delivered: " + err);
      return;
    case FailureAction::kDeadLetter:
      if (txn_ != nullptr) {
        // The refusal makes the Kafka transaction abort-only: the row goes
        // to the dead-letter topic when the rows are produced again.
        s.poisoned[pos->value] = {f.report.error_name, f.report.error_message};
        Rewind(s, what + " was refused (" + err + ")", RewindGate::Pause::kNone, ResendCause::kRewind);
        return;
      }
      break;
    default:
      return;  // kRecreateProducer: the runner recreates it and every stream rewinds
  }
  if (!conn_.healthy()) {
    Rewind(s, what + " must go to the dead-letter topic but PostgreSQL is unreachable", RewindGate::Pause::kNone,
           ResendCause::kRewind);
    return;
  }
  auto res = conn_.Exec(s.table->fetch_sql(), {PgInt64Array({pos->value})});
  if (!res.ok()) {
    Rewind(s, what + " must go to the dead-letter topic: " + res.status().message(), RewindGate::Pause::kNone,
           ResendCause::kRewind);
    return;
  }
  if (PQntuples(res->get()) == 0) {
    // The row is gone or was marked sent by someone else: nothing left to
    // publish for it.
    Logger("relay")->warn("{} failed with {} and no longer exists unsent; skipping it", what, err);
    s.checkpoint.MarkAcked(f.ticket);
    return;
  }
  std::optional<std::string> original_topic;
  const Row row = s.table->RowAt(res->get(), 0);
  auto routed = s.router.Route(row);
  if (routed.ok()) original_topic = routed->topic;
  ToDeadLetter(s, f.ticket, row, f.report.error_name, f.report.error_message, original_topic)
      .IgnoreError();  // on failure it already rewound or halted the stream
}

Status PollSource::ProduceRows(Stream& s, const std::vector<RowRef>& rows, const std::function<void(std::size_t)>& took,
                               bool* completed) {
  *completed = false;
  const Clock::time_point claimed_at = Clock::now();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (s.phase == Phase::kHalted || s.gate.rewinding()) return Status::Ok();
    const OutboxPosition pos{rows[i].pos};
    if (s.claimed.contains(pos.value)) {  // already in flight
      took(i);
      continue;
    }
    Row row = s.table->RowAt(rows[i].res, rows[i].row);
    auto routed = s.router.Route(row);
    if (txn_ != nullptr) {
      if (auto it = s.poisoned.find(pos.value); it != s.poisoned.end()) {
        // Refused in an aborted transaction: to the dead-letter topic now.
        s.checkpoint.Add({pos.value, nullptr, claimed_at});
        s.claimed.insert(pos.value);
        s.txn_xids.insert(s.table->TransactionAt(rows[i].res, rows[i].row));
        took(i);
        const auto [name, message] = it->second;
        if (!ToDeadLetter(s, s.checkpoint.next_ticket() - 1, row, name, message,
                          routed.ok() ? std::optional<std::string>(routed->topic) : std::nullopt)
                 .ok()) {
          return Status::Ok();  // rewound or halted
        }
        continue;
      }
    }
    Status st;
    if (routed.ok()) {
      st = ProduceRecord(*routed, Token(s.index, false, s.checkpoint.next_ticket()));
      if (!st.ok() && txn_ != nullptr) {
        if (publisher_->last_produce_needs_abort()) {
          Rewind(s, "the Kafka transaction cannot take records: " + st.message(), RewindGate::Pause::kBackOff,
                 ResendCause::kRewind);
          return Status::Ok();
        }
        if (ActionForProduce(st, false, s.config->dead_letter_topic.has_value()) == FailureAction::kDeadLetter) {
          // Refused before it left, inside the transaction: abort it and
          // dead-letter the row when the rows are produced again.
          s.metrics->PublishError(publisher_->last_produce_error());
          s.poisoned[pos.value] = {publisher_->last_produce_error(), st.message()};
          Rewind(s, "row " + s.config->order_by + "=" + std::to_string(pos.value) + " was refused: " + st.message(),
                 RewindGate::Pause::kNone, ResendCause::kRewind);
          return Status::Ok();
        }
      }
      if (st.ok()) s.gate.Produced();
      if (st.ok() || st.code() != StatusCode::kRetriable) {
        // Tracked from here on: acknowledged, failed, or handed to dead letter.
        s.checkpoint.Add({pos.value, &s.metrics->Published(routed->topic), claimed_at});
      }
    } else {
      st = routed.status();
      s.checkpoint.Add({pos.value, nullptr, claimed_at});
    }
    const FailureAction action =
        ActionForProduce(st, /*dead_letter_record=*/false, s.config->dead_letter_topic.has_value());
    if (action == FailureAction::kWaitForRoom) {
      s.more = false;  // librdkafka's queue is full; wait for deliveries
      return Status::Ok();
    }
    s.claimed.insert(pos.value);
    if (txn_ != nullptr) s.txn_xids.insert(s.table->TransactionAt(rows[i].res, rows[i].row));
    took(i);
    if (action == FailureAction::kNone) continue;
    if (action == FailureAction::kRecreateProducer) return Status::Ok();  // the runner recreates it
    // The row cannot be published as it is.
    const uint64_t ticket = s.checkpoint.next_ticket() - 1;
    const std::string name = routed.ok() ? publisher_->last_produce_error() : std::string(kUnroutable);
    s.metrics->PublishError(name);
    if (action == FailureAction::kDeadLetter) {
      if (!ToDeadLetter(s, ticket, row, name, st.message(),
                        routed.ok() ? std::optional<std::string>(routed->topic) : std::nullopt)
               .ok()) {
        return Status::Ok();  // rewound or halted
      }
    } else {
      s.checkpoint.MarkFailed(ticket);
      Halt(s,
           "row " + s.config->order_by + "=" + std::to_string(pos.value) + " can never be delivered: " + st.message());
    }
  }
  *completed = true;
  return Status::Ok();
}

Result<PollSource::GapRows> PollSource::ReadGaps(Stream& s) {
  auto snapshot = conn_.Exec(s.table->snapshot_sql());
  if (!snapshot.ok()) return snapshot.status().Prefixed("could not read the current snapshot");
  const PGresult* res = snapshot->get();
  std::optional<uint32_t> youngest_running;
  if (!PQgetisnull(res, 0, 2)) {
    youngest_running = static_cast<uint32_t>(std::strtoul(PQgetvalue(res, 0, 2), nullptr, 10));
  }
  std::vector<int> sessions;
  if (PQnfields(res) > 3) {
    // "{123,456}": the pids of the other sessions.
    for (const char* p = PQgetvalue(res, 0, 3); *p != '\0';) {
      char* end = nullptr;
      const long pid = std::strtol(p, &end, 10);
      if (end != p) {
        sessions.push_back(static_cast<int>(pid));
        p = end;
      } else {
        ++p;
      }
    }
  }
  const GapSnapshot after_claim = GapSnapshot::FromServer(std::strtoull(PQgetvalue(res, 0, 0), nullptr, 10),
                                                          std::strtoull(PQgetvalue(res, 0, 1), nullptr, 10),
                                                          youngest_running, std::move(sessions), Clock::now());
  s.gaps->BeginRound(after_claim);
  if (s.gaps->empty()) return GapRows{};

  std::vector<long long> firsts, lasts;
  std::string listed;  // for the trace log
  const bool trace = Logger("relay")->should_log(spdlog::level::trace);
  for (const GapTracker::Range& r : s.gaps->Ranges()) {
    firsts.push_back(r.first);
    lasts.push_back(r.last);
    if (trace) listed += " " + std::to_string(r.first) + ".." + std::to_string(r.last);
  }
  if (trace) {
    Logger("relay")->trace("\"{}\": xmin {} xmax {} cursor {}, gaps{}", s.name(), after_claim.xmin, after_claim.xmax,
                           s.gaps->cursor().value_or(0), listed);
  }
  // Rows in flight may lie in a merged range: read past them.
  const std::size_t limit = s.config->batch_size + s.claimed.size();
  auto rows = conn_.Exec(s.table->gap_read_sql(), {PgInt64Array(firsts), PgInt64Array(lasts), std::to_string(limit)});
  if (!rows.ok()) return rows.status().Prefixed("could not read late rows of \"" + s.name() + "\"");
  const bool hit_limit = static_cast<std::size_t>(PQntuples(rows->get())) == limit;
  return GapRows{std::move(rows).value(), hit_limit};
}

Status PollSource::Sweep(Stream& s) {
  const std::optional<long long> cursor = s.gaps->cursor();
  if (!cursor) return Status::Ok();
  const std::size_t limit = s.claimed.size() + s.config->batch_size;
  auto r = conn_.Exec(s.table->sweep_sql(), {std::to_string(*cursor), std::to_string(limit)});
  if (!r.ok()) return r.status().Prefixed("could not sweep \"" + s.name() + "\" for late rows");
  std::vector<long long> missed;
  for (int i = 0; i < PQntuples(r->get()) && missed.size() < s.config->batch_size; ++i) {
    const long long p = s.table->PositionAt(r->get(), i).value;
    // In flight, or in a gap (read with the next claim, in order): not missed.
    if (!s.claimed.contains(p) && !s.gaps->Contains(p)) missed.push_back(p);
  }
  if (missed.empty()) return Status::Ok();
  auto rows = conn_.Exec(s.table->fetch_sql(), {PgInt64Array(missed)});
  if (!rows.ok()) return rows.status().Prefixed("could not read late rows of \"" + s.name() + "\"");
  const int n = PQntuples(rows->get());
  if (n == 0) return Status::Ok();  // committed meanwhile... or gone
  s.table_metrics->SweepRows(static_cast<std::size_t>(n));
  if (s.sweep_warnings.Allow(Clock::now())) {
    Logger("relay")->warn(
        "\"{}\": the sweep found {} unsent rows below position {} outside every watched gap "
        "(first {}={}); they are published now, possibly after later rows of their keys. "
        "Positions should come from a sequence; see outboxd_poll_sweep_rows_total",
        s.name(), n, *cursor, s.config->order_by, s.table->PositionAt(rows->get(), 0).value);
  }
  std::vector<RowRef> refs;
  refs.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) refs.push_back({rows->get(), i, s.table->PositionAt(rows->get(), i).value});
  bool completed = false;
  Status st = ProduceRows(
      s, refs, [](std::size_t) {}, &completed);
  if (!completed) s.round_complete = false;
  s.late_in_txn = true;  // read on a newer snapshot than the claims
  return st;
}

void PollSource::UpdateGapMetrics(Stream& s, Clock::time_point now) {
  if (s.table_metrics == nullptr || !s.gaps) return;
  const auto oldest = s.gaps->OldestSince();
  s.table_metrics->SetGaps(s.gaps->size(), oldest ? std::chrono::duration<double>(now - *oldest).count() : 0.0);
  if (s.gaps->merges() > s.gap_merges_logged) {
    s.gap_merges_logged = s.gaps->merges();
    if (s.merge_warnings.Allow(now)) {
      Logger("relay")->warn(
          "\"{}\": more gaps below the cursor than outboxd tracks one by one; the closest were "
          "merged into wider ranges (read a little more, never skipped). Long transactions or "
          "many sessions holding cached sequence values cause this",
          s.name());
    }
  }
}

Status PollSource::ToDeadLetter(Stream& s, uint64_t ticket, const Row& row, const std::string& reason_name,
                                const std::string& reason, const std::optional<std::string>& original_topic) {
  const Stream::Tracked pos = *s.checkpoint.PositionOf(ticket);
  DeadLetterOrigin origin;
  if (s.config->key) {
    if (const auto* k = row.Find(*s.config->key)) origin.key = *k;
  }
  if (const auto* id = row.Find(s.config->id)) origin.id = *id;
  if (const auto* payload = row.Find(s.config->payload)) origin.value = *payload;
  origin.original_topic = original_topic;
  origin.where = {{"outboxd.table", s.name()}, {"outboxd.position", std::to_string(pos.value)}};
  const Record dl = DeadLetterRecord(*s.config->dead_letter_topic, origin, reason_name, reason);
  Logger("relay")->warn("row {}={} of \"{}\" goes to dead-letter topic \"{}\": {}: {}", s.config->order_by, pos.value,
                        s.name(), dl.topic, reason_name, reason);
  Status st = ProduceRecord(dl, Token(s.index, true, ticket));
  if (!st.ok() && txn_ != nullptr && publisher_->last_produce_needs_abort()) {
    Rewind(s, "the Kafka transaction cannot take records: " + st.message(), RewindGate::Pause::kBackOff,
           ResendCause::kRewind);
    return st;
  }
  switch (ActionForProduce(st, /*dead_letter_record=*/true, true)) {
    case FailureAction::kNone:
      s.gate.Produced();
      break;
    case FailureAction::kRecreateProducer:
      break;  // the runner recreates it; every stream rewinds
    case FailureAction::kWaitForRoom:
      Rewind(s, "could not queue a dead-letter record: " + st.message(), RewindGate::Pause::kBackOff,
             ResendCause::kRewind);
      break;
    default:
      s.metrics->PublishError(publisher_->last_produce_error());
      s.checkpoint.MarkFailed(ticket);
      Halt(s, "row " + std::to_string(pos.value) + " could not be written to the dead-letter topic: " + st.message());
      break;
  }
  return st;
}

Status PollSource::ReleaseAcknowledged(Stream& s) {
  // Exactly once, only what is in a committed Kafka transaction.
  for (const Stream::Tracked& p :
       txn_ != nullptr ? s.checkpoint.TakeReleasable(s.committed_before) : s.checkpoint.TakeReleasable()) {
    s.unreleased.push_back(p.value);
    if (txn_ != nullptr) s.poisoned.erase(p.value);
  }
  if (s.unreleased.empty() || !s.table) return Status::Ok();
  auto r = conn_.Exec(s.table->checkpoint_sql(), {PgInt64Array(s.unreleased)});
  if (!r.ok()) {
    return r.status().Prefixed(std::string("could not ") +
                               (s.config->after_delivery == AfterDelivery::kDelete ? "delete delivered rows from \""
                                                                                   : "mark delivered rows sent in \"") +
                               s.name() + "\"");
  }
  for (long long p : s.unreleased) s.claimed.erase(p);
  s.unreleased.clear();
  return Status::Ok();
}

Status PollSource::ClaimAndProduce(Stream& s, Clock::time_point now) {
  switch (s.phase) {
    case Phase::kStarting:
    case Phase::kHalted:
      return Status::Ok();
    case Phase::kStandingBy:
      if (now < s.next_poll) return Status::Ok();
      s.next_poll = now + s.config->poll_interval;
      OUTBOXD_RETURN_IF_ERROR(TryLock(s, LockAttempt::kStandbyRetry));
      if (s.phase == Phase::kStandingBy) return Status::Ok();
      break;
    case Phase::kRewinding:
      if (!s.gate.TakeFinished(now)) return Status::Ok();
      Enter(s, Phase::kClaiming);
      break;
    case Phase::kClaiming:
      break;
  }
  if (s.phase != Phase::kClaiming || now < s.claim_not_before) return Status::Ok();
  // Exactly once: not before Kafka's position is read, nor while the
  // transaction ends.
  if (txn_ != nullptr && (!position_read_ || txn_->ending())) return Status::Ok();
  const std::size_t pending = TotalPending();
  if (pending >= config_.kafka.max_in_flight) return Status::Ok();
  if (!(s.more || s.notified || now >= s.next_poll)) return Status::Ok();

  GapTracker& gaps = *s.gaps;
  const std::size_t limit = std::min(s.config->batch_size, config_.kafka.max_in_flight - pending);
  const std::optional<long long> cursor = gaps.cursor();
  Result<PgResult> claim =
      cursor ? conn_.Exec(s.table->claim_after_sql(), {std::to_string(*cursor), std::to_string(limit)})
             : conn_.Exec(s.table->claim_first_sql(), {std::to_string(limit)});
  if (!claim.ok()) return claim.status().Prefixed("could not claim rows from \"" + s.name() + "\"");
  const std::size_t n = static_cast<std::size_t>(PQntuples(claim->get()));
  if (n > 0) s.metrics->ObserveBatch(n);
  s.more = n == limit;
  s.claim_full = n == limit;
  s.last_claim = now;
  s.round_complete = true;
  s.notified = false;
  s.next_poll = now + s.config->poll_interval;
  // An empty claim with no gaps has nothing to read or settle: an idle poll
  // costs one query (plus the periodic sweep).
  bool completed = true;
  if (n > 0 || !gaps.empty()) {
    std::vector<long long> claimed_positions, late_positions;
    claimed_positions.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      claimed_positions.push_back(s.table->PositionAt(claim->get(), static_cast<int>(i)).value);
    }
    // The gaps are read after the claim: a row that committed before the
    // claim, in a gap, is seen and goes out before the claimed rows. Claimed
    // rows that follow the cursor without a hole, with no gaps open (the
    // busy steady state), need neither the snapshot nor a read.
    Result<GapRows> late = GapRows{};
    if (gaps.NeedsSnapshot(claimed_positions)) {
      late = ReadGaps(s);
      if (!late.ok()) return late.status();
    } else {
      gaps.BeginRoundWithoutSnapshot();
    }
    const PGresult* late_res = late->rows.get();
    const int late_n = late_res == nullptr ? 0 : PQntuples(late_res);
    for (int i = 0; i < late_n; ++i) late_positions.push_back(s.table->PositionAt(late_res, i).value);
    const std::vector<GapTracker::RoundRow> order = gaps.Order(claimed_positions, late_positions, late->hit_limit);
    if (late->hit_limit) s.more = true;  // the claimed rows wait for the rest of the gap rows

    std::vector<RowRef> refs;
    refs.reserve(order.size());
    std::size_t late_taken = 0;
    for (const GapTracker::RoundRow& r : order) {
      const PGresult* res = r.from == GapTracker::RoundRow::From::kGap ? late_res : claim->get();
      refs.push_back({res, r.index, r.position});
    }
    Status st = ProduceRows(
        s, refs,
        [&](std::size_t i) {
          gaps.Took(order[i]);
          if (order[i].from == GapTracker::RoundRow::From::kGap) ++late_taken;
        },
        &completed);
    gaps.EndRound();
    s.round_complete = completed && !late->hit_limit;
    if (late_taken > 0) s.late_in_txn = true;
    if (late_taken > 0) {
      s.table_metrics->LateRows(late_taken);
      Logger("relay")->debug("\"{}\": {} rows committed late below position {}, published in order", s.name(),
                             late_taken, cursor ? *cursor : 0);
    }
    OUTBOXD_RETURN_IF_ERROR(st);
  }
  UpdateGapMetrics(s, now);

  // The safety net: rows below the cursor outside every gap (none are
  // expected; each one is counted).
  if (completed && now >= s.next_sweep && s.phase == Phase::kClaiming) {
    s.next_sweep = now + std::max<std::chrono::milliseconds>(10 * s.config->poll_interval, std::chrono::seconds(1));
    OUTBOXD_RETURN_IF_ERROR(Sweep(s));
  }
  return Status::Ok();
}

Status PollSource::Pump(Clock::time_point now) {
  if (PositionToRead()) OUTBOXD_RETURN_IF_ERROR(ReadKafkaPosition());
  for (auto& s : streams_) OUTBOXD_RETURN_IF_ERROR(ClaimAndProduce(*s, now));
  return ReadNotifications();
}

// --- Kafka transactions (exactly once) ------------------------------------------------

bool PollSource::PositionToRead() const {
  if (txn_ == nullptr || position_read_ || txn_->open() || !conn_.healthy()) return false;
  for (const auto& s : streams_) {
    if (s->phase == Phase::kStarting || s->phase == Phase::kStandingBy) return false;  // not every lock held
  }
  return true;
}

Status PollSource::ReadKafkaPosition() {
  auto log = Logger("relay");
  health_->SetInLongCall(true);
  auto position = txn_->Initialise(*publisher_, KafkaTransactions::kInitialiseTimeout);
  health_->SetInLongCall(false);
  if (!position.ok()) return position.status();
  if (!position->has_value()) {
    log->info("Kafka transactions of \"{}\" initialised; no position stored in \"{}\" yet", txn_->stream(),
              config_.kafka.position_topic);
    position_read_ = true;
    return Status::Ok();
  }
  auto rows = ParsePollPosition(**position);
  if (!rows.ok()) {
    return rows.status().Prefixed("the position of \"" + txn_->stream() + "\" in topic \"" +
                                  config_.kafka.position_topic + "\"");
  }
  for (const auto& listed : *rows) {
    const std::string& table = listed.first;
    const std::vector<long long>& positions = listed.second;
    auto it = std::find_if(streams_.begin(), streams_.end(), [&](const auto& s) { return s->name() == table; });
    if (it == streams_.end()) {
      log->warn("the position of \"{}\" lists rows of \"{}\", which is not relayed here; they are left alone",
                txn_->stream(), table);
      continue;
    }
    Stream& s = **it;
    auto r = conn_.Exec(s.table->checkpoint_sql(), {PgInt64Array(positions)});
    if (!r.ok()) {
      return r.status().Prefixed("could not " +
                                 std::string(s.config->after_delivery == AfterDelivery::kDelete ? "delete" : "mark") +
                                 " the rows of \"" + s.name() + "\" that Kafka has");
    }
    const std::string done = PQcmdTuples(r->get());
    if (done != "0") {
      log->info(
          "\"{}\": {} rows were still unsent although Kafka has them (committed before the last stop or "
          "takeover); {} without producing them again",
          s.name(), done, s.config->after_delivery == AfterDelivery::kDelete ? "deleted" : "marked sent");
    }
    for (long long p : positions) s.claimed.erase(p);
    std::erase_if(s.unreleased, [&](long long p) { return std::binary_search(positions.begin(), positions.end(), p); });
    for (long long p : s.unreleased) s.claimed.insert(p);
  }
  log->info("Kafka transactions of \"{}\" initialised; Kafka's position read", txn_->stream());
  position_read_ = true;
  return Status::Ok();
}

Status PollSource::ProduceRecord(const Record& record, uint64_t token) {
  if (txn_ != nullptr) OUTBOXD_RETURN_IF_ERROR(txn_->Begin(*publisher_, Clock::now()));
  Status st = publisher_->Produce(record, token);
  if (st.ok() && txn_ != nullptr) txn_->Added(record.payload_bytes());
  return st;
}

Result<bool> PollSource::TransactionsComplete(Stream& s, const std::set<std::string>& xids) {
  if (xids.empty()) return true;
  if (!s.txn_xids.empty() && !s.round_complete) return false;  // the rest of a claim or a gap read first
  // Every row past the cursor was read by a claim that came back short, so
  // every transaction committed before it is whole here — unless a row of
  // the transaction came later: from a gap read or the sweep (a newer
  // snapshot), or from another table (another claim).
  if (!s.claim_full && !s.late_in_txn && streams_.size() == 1) return true;
  // In a backlog the check scans the rows past the cursor, so after a
  // positive answer it runs again only once the transaction doubled.
  if (s.claim_full && txn_->events() < s.split_check_at) return false;
  const long long cursor = s.gaps->cursor().value_or(std::numeric_limits<long long>::min());
  std::string list = "{";
  for (const std::string& x : xids) list += (list.size() > 1 ? "," : "") + x;
  list += "}";
  auto r = conn_.Exec(s.table->split_check_sql(), {std::to_string(cursor), list});
  if (!r.ok()) return r.status().Prefixed("could not check \"" + s.name() + "\" for rows of the same transactions");
  if (std::string_view(PQgetvalue(r->get(), 0, 0)) == "t") {
    s.split_check_at = std::max<int64_t>(2 * txn_->events(), txn_->events() + 1);
    return false;
  }
  return true;
}

Status PollSource::CommitIfDue(Clock::time_point now) {
  if (txn_ == nullptr || !txn_->CommitDue(now) || !conn_.healthy()) return Status::Ok();
  // In a backlog (claims come back full) readers are behind anyway: the
  // transaction grows to its size bound, so fewer commits and fewer checks
  // for rows past the cursor (TransactionsComplete) slow the catch-up.
  // Not once claims have stopped (stopping, or waiting for room).
  const bool backlog = std::any_of(streams_.begin(), streams_.end(), [&](const auto& s) {
    return s->phase != Phase::kHalted && s->claim_full && !s->txn_xids.empty() &&
           now - s->last_claim < config_.kafka.transaction_max_wait;
  });
  if (backlog && !txn_->SizeReached()) return Status::Ok();
  std::set<std::string> xids;  // of every table's rows in the transaction
  for (const auto& s : streams_) xids.insert(s->txn_xids.begin(), s->txn_xids.end());
  for (auto& s : streams_) {
    if (s->phase == Phase::kHalted) continue;      // reads no more
    if (s->gate.rewinding()) return Status::Ok();  // the transaction is being aborted
    auto complete = TransactionsComplete(*s, xids);
    if (!complete.ok()) return complete.status();
    if (!*complete) return Status::Ok();
  }
  const Status st = publisher_->Produce(txn_->PositionRecord(PositionText()), Token(kPositionStream, false, 0));
  if (st.ok()) {
    txn_->StartCommit();
    for (auto& s : streams_) {
      s->txn_xids.clear();
      s->split_check_at = 0;
      s->late_in_txn = false;
    }
    return Status::Ok();
  }
  if (publisher_->last_produce_needs_abort()) {
    Rewind(*streams_.front(), "the Kafka transaction cannot take its position record: " + st.message(),
           RewindGate::Pause::kBackOff, ResendCause::kRewind);
    return Status::Ok();
  }
  switch (ActionForProduce(st, /*dead_letter_record=*/false, /*has_dead_letter_topic=*/false)) {
    case FailureAction::kNone:
    case FailureAction::kWaitForRoom:       // librdkafka's queue is full: again next turn
    case FailureAction::kRecreateProducer:  // the runner recreates it
      return Status::Ok();
    default:
      return Status::Permanent(st.message())
          .Prefixed("the position record was refused by topic \"" + config_.kafka.position_topic + "\"");
  }
}

Status PollSource::AdvanceTransaction() {
  auto step = txn_->Advance(*publisher_);
  if (!step.ok()) return step.status();  // kFatal: the runner recreates the producer
  switch (*step) {
    case KafkaTransactions::Step::kCommitted:
      // Nothing is produced while a commit is under way: every row tracked
      // now is in it (or in an earlier one).
      for (auto& s : streams_) s->committed_before = s->checkpoint.next_ticket();
      break;
    case KafkaTransactions::Step::kAborted:
      if (std::none_of(streams_.begin(), streams_.end(), [](const auto& s) { return s->gate.rewinding(); }) &&
          !streams_.empty()) {
        Rewind(*streams_.front(), "the Kafka transaction was aborted", RewindGate::Pause::kBackOff,
               ResendCause::kRewind);
      }
      position_read_ = false;
      break;
    case KafkaTransactions::Step::kNothing:
    case KafkaTransactions::Step::kPending:
      break;
  }
  return Status::Ok();
}

std::string PollSource::PositionText() const {
  PollPositionRows rows;
  for (const auto& s : streams_) {
    std::vector<long long>& positions = rows[s->name()];
    positions.assign(s->unreleased.begin(), s->unreleased.end());
    s->checkpoint.ForEachLive([&](const Stream::Tracked& t) { positions.push_back(t.value); });
  }
  return FormatPollPosition(rows);
}

Status PollSource::ReadNotifications() {
  if (PQconsumeInput(conn_.get()) == 0) return ClassifyPgError(conn_.get(), nullptr, "lost the PostgreSQL connection");
  while (PGnotify* n = PQnotifies(conn_.get())) {
    for (auto& s : streams_) {
      if (s->config->notify_channel && *s->config->notify_channel == n->relname) s->notified = true;
    }
    PQfreemem(n);
  }
  return Status::Ok();
}

// --- Waiting, health, sampling, stopping ----------------------------------------------

Status PollSource::Sample() {
  for (auto& s : streams_) {
    if (!s->table || s->table_metrics == nullptr) continue;
    auto r = conn_.Exec(s->table->stats_sql());
    if (!r.ok()) return r.status().Prefixed("could not count the pending rows of \"" + s->name() + "\"");
    const PGresult* res = r->get();
    const long long count = std::strtoll(PQgetvalue(res, 0, 0), nullptr, 10);
    const long long min = PQgetisnull(res, 0, 1) ? 0 : std::strtoll(PQgetvalue(res, 0, 1), nullptr, 10);
    const long long max = PQgetisnull(res, 0, 2) ? 0 : std::strtoll(PQgetvalue(res, 0, 2), nullptr, 10);
    s->table_metrics->Sample(count, min, max, Clock::now());
  }
  return Status::Ok();
}

void PollSource::WaitFds(std::vector<pollfd>& fds, bool) const {
  if (conn_.healthy()) fds.push_back({conn_.socket(), POLLIN, 0});
}

PollSource::Clock::time_point PollSource::NextWakeup(Clock::time_point now) const {
  if (!failures_.empty()) return now;
  Clock::time_point next = now + std::chrono::seconds(1);
  if (!conn_.healthy()) return next;
  if (txn_ != nullptr) {
    if (PositionToRead()) return now;
    if (txn_->ending()) next = std::min(next, now + std::chrono::milliseconds(5));
    // Due but waiting for the rest of a PostgreSQL transaction's rows: look again soon.
    if (auto due = txn_->CommitDueAt()) next = std::min(next, std::max(*due, now + std::chrono::milliseconds(5)));
  }
  const bool room = TotalPending() < config_.kafka.max_in_flight;
  for (const auto& s : streams_) {
    switch (s->phase) {
      case Phase::kStarting:
      case Phase::kHalted:
        break;
      case Phase::kRewinding:
        // Woken by the Kafka fd while the old generation reports; then at
        // the end of the pause.
        if (s->gate.outstanding() == 0) next = std::min(next, s->gate.paused_until());
        break;
      case Phase::kStandingBy:
        next = std::min(next, s->next_poll);
        break;
      case Phase::kClaiming:
        if (!room) break;
        if (now < s->claim_not_before) {
          next = std::min(next, s->claim_not_before);
          break;
        }
        if (s->more || s->notified) return now;
        next = std::min(next, s->next_poll);
        break;
    }
  }
  return next;
}

Source::Health PollSource::CheckHealth() {
  const Stream* halted = nullptr;
  for (const auto& s : streams_) {
    if (s->metrics != nullptr) s->metrics->SetInFlight(static_cast<int64_t>(s->gate.outstanding()));
    if (s->phase == Phase::kHalted && halted == nullptr) halted = s.get();
  }
  if (!resolved_once_) return {false, "starting: the outbox tables were not checked yet"};
  if (halted != nullptr) {
    return {false, "table \"" + halted->name() + "\" is halted by a row that cannot be delivered"};
  }
  return {true, {}};
}

std::size_t PollSource::TotalPending() const {
  std::size_t n = 0;
  for (const auto& s : streams_) n += s->checkpoint.pending();
  return n;
}

bool PollSource::Drained() const {
  if (txn_ != nullptr && txn_->open()) return false;  // committed, or aborted at the deadline
  for (const auto& s : streams_) {
    if (s->phase == Phase::kHalted) continue;
    // Acknowledged rows still to delete/mark count too: drained only once
    // released (or when PostgreSQL is gone and the deadline passes).
    if (s->checkpoint.pending() > 0 || !s->unreleased.empty() || s->checkpoint.size() > s->checkpoint.pending()) {
      return false;
    }
  }
  return true;
}

void PollSource::Finish() {
  auto log = Logger("relay");
  if (txn_ != nullptr && txn_->open()) {
    // Aborted, its rows are produced again on the next start.
    const Result<KafkaTransactions::Step> step = txn_->EndAtShutdown(*publisher_, std::chrono::seconds(2));
    if (!step.ok()) {
      log->warn("could not end the open Kafka transaction: {}", step.status().message());
    } else if (*step == KafkaTransactions::Step::kCommitted) {
      for (auto& s : streams_) s->committed_before = s->checkpoint.next_ticket();
    }
  }
  std::size_t left = 0;
  for (auto& s : streams_) {
    if (conn_.healthy()) {
      Status st = ReleaseAcknowledged(*s);
      if (!st.ok()) log->warn("{}", st.message());
    }
    left += s->checkpoint.pending() + s->unreleased.size();
    log->info("\"{}\": {} events published, {} dead-lettered{}", s->name(), s->published, s->dead_lettered,
              s->phase == Phase::kHalted ? " (halted)" : "");
  }
  if (left > 0) {
    log->warn(
        "{} events were not confirmed before shutdown; they stay unsent and are published again on the "
        "next start",
        left);
  }
  log->info("stopped");
}

}  // namespace outboxd
