#include "relay/outbox_relay.h"

#include <poll.h>
#include <prometheus/counter.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <set>

#include "common/advisory_locks.h"
#include "common/logging.h"
#include "pipeline/dead_letter.h"

namespace outboxd {

namespace {

using std::chrono::milliseconds;

// Delivery tokens: stream index (12 bits) | dead-letter flag (1 bit) | ticket.
constexpr int kTicketBits = 51;
constexpr uint64_t kTicketMask = (uint64_t{1} << kTicketBits) - 1;
constexpr uint64_t kDeadLetterBit = uint64_t{1} << kTicketBits;

uint64_t Token(std::size_t stream, bool dead_letter, uint64_t ticket) {
  return (static_cast<uint64_t>(stream) << (kTicketBits + 1)) | (dead_letter ? kDeadLetterBit : 0) |
         (ticket & kTicketMask);
}


// A warning that could repeat every turn (the sweep found rows, gaps were
// merged) is logged at most this often per table.
constexpr std::chrono::seconds kRepeatedWarningInterval(60);

}  // namespace

struct OutboxRelay::Stream {
  Stream(std::size_t i, const OutboxTableConfig& c, Router r)
      : index(i), config(&c), router(std::move(r)) {}

  std::size_t index;
  const OutboxTableConfig* config;
  Router router;
  std::optional<OutboxTable> table;  // resolved on every connect
  std::string name() const { return table ? table->name() : config->table; }

  // A produced row: its position, the published counter of its topic and
  // when it was claimed (for outboxd_commit_to_ack_seconds).
  struct Tracked {
    long long value;
    prometheus::Counter* published;
    Clock::time_point claimed_at;
  };
  Checkpoint<Tracked> checkpoint;
  SourceMetrics* metrics = nullptr;       // from the first connect (needs the resolved name)
  TableMetrics* table_metrics = nullptr;
  // Positions produced in this epoch and not yet deleted/marked: no read
  // must produce them again.
  std::unordered_set<long long> claimed;
  // Acknowledged positions waiting for the DELETE/UPDATE to succeed.
  std::vector<long long> unreleased;
  // The cursor and the gaps below it; created on the first connect (its
  // rule depends on the table's sequence).
  std::optional<GapTracker> gaps;
  LogThrottle sweep_warnings{kRepeatedWarningInterval};
  LogThrottle merge_warnings{kRepeatedWarningInterval};
  uint64_t gap_merges_logged = 0;

  bool halted = false;
  bool lock_held = false;
  bool standby_logged = false;
  bool more = true;  // the last claim was full: claim again at once
  bool notified = false;
  Clock::time_point next_poll{};
  Clock::time_point next_sweep{};
  uint64_t published = 0;
  uint64_t dead_lettered = 0;
  // After a delivery failure the stream pauses before producing again.
  Backoff kafka_backoff{std::chrono::milliseconds(200), std::chrono::seconds(30)};
  Clock::time_point paused_until{};
  // Records handed to librdkafka and not yet reported, including those from
  // before a rewind. After a rewind the stream produces again only once this
  // is zero, so that a row is never queued twice at once: duplicates stay
  // bounded by what was in flight when the fault happened.
  uint64_t outstanding = 0;
  bool await_drain = false;
};

OutboxRelay::OutboxRelay(const Config& config) : config_(config) {}
OutboxRelay::~OutboxRelay() = default;

Result<std::unique_ptr<OutboxRelay>> OutboxRelay::Create(const Config& config, Metrics* metrics) {
  std::unique_ptr<OutboxRelay> relay(new OutboxRelay(config));
  if (metrics == nullptr) {
    relay->own_metrics_ = std::make_unique<Metrics>();
    metrics = relay->own_metrics_.get();
  }
  relay->metrics_ = metrics;
  for (std::size_t i = 0; i < config.outboxes.size(); ++i) {
    const OutboxTableConfig& t = config.outboxes[i];
    if (t.source != OutboxSource::kPoll) continue;  // captured by the cdc relay
    auto router = Router::Create(t);
    if (!router.ok()) return router.status().Prefixed(t.config_location);
    relay->streams_.push_back(std::make_unique<Stream>(i, t, std::move(router).value()));
  }
  auto* raw = relay.get();
  auto publisher =
      Publisher::Create(config.kafka, [raw](const DeliveryReport& r) { raw->OnDelivery(r); });
  if (!publisher.ok()) return publisher.status();
  relay->publisher_ = std::move(publisher).value();
  relay->health_ = &metrics->AddRelay("poll");
  return relay;
}

Status OutboxRelay::Connect(bool first) {
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
      s->metrics = &metrics_->Source(TableSource(s->table->name()));
      s->table_metrics = &metrics_->Table(s->table->name());
    }
    if (!s->gaps || s->gaps->fill() != s->table->gap_fill()) {
      if (s->table->gap_fill() == GapFill::kOpenSessions) {
        log->info("\"{}\": {}; a gap below the cursor is watched until the sessions connected "
                  "when it appeared have disconnected",
                  s->name(), s->table->gap_fill_reason());
      }
      if (!s->gaps) s->gaps.emplace(s->table->gap_fill());
      else s->gaps->SetFill(s->table->gap_fill());
    }
    if (s->config->notify_channel) channels.insert(*s->config->notify_channel);
  }
  for (const std::string& ch : channels) {
    auto r = conn_.Exec("LISTEN " + conn_.QuoteIdentifier(ch));
    if (!r.ok()) return r.status().Prefixed("could not LISTEN on channel \"" + ch + "\"");
  }
  for (auto& s : streams_) {
    const bool had_lock = s->lock_held;
    auto r = conn_.Exec(kTryLockPollTableSql, {std::to_string(s->table->oid())});
    if (!r.ok()) return r.status().Prefixed("could not lock \"" + s->name() + "\"");
    s->lock_held = std::string_view(PQgetvalue(r->get(), 0, 0)) == "t";
    if (!s->lock_held && !s->checkpoint.empty()) {
      // Another instance took the table while we were away; what we had in
      // flight is its business now.
      Rewind(*s, "another outboxd instance holds the table");
    }
    if (s->lock_held) {
      s->standby_logged = false;
      if (!had_lock) {
        log->info("relaying \"{}\" (order by {}, {} after delivery, topic {})", s->name(),
                  s->config->order_by,
                  s->config->after_delivery == AfterDelivery::kDelete ? "delete" : "mark",
                  s->config->topic);
      }
    } else if (!s->standby_logged) {
      log->info("\"{}\" is relayed by another outboxd instance; standing by", s->name());
      s->standby_logged = true;
    }
    s->next_poll = Clock::now();
  }
  if (!resolved_once_ && on_lifecycle_) on_lifecycle_(Lifecycle::kReady);
  resolved_once_ = true;
  connected_at_ = Clock::now();
  if (!first) {
    for (auto& s : streams_) s->metrics->Reconnected();
  }
  next_sample_ = Clock::now();  // count pending rows right away
  log->info("connected to PostgreSQL{}", first ? "" : " again");
  return Status::Ok();
}

void OutboxRelay::Disconnect(const Status& why) {
  // A connection that worked for a while starts the backoff afresh; one that
  // fails again right after connecting (a revoked privilege, a dropped
  // column) keeps backing off.
  if (connected_at_ && Clock::now() - *connected_at_ > std::chrono::seconds(30)) {
    reconnect_backoff_.Reset();
  }
  connected_at_.reset();
  const milliseconds delay = reconnect_backoff_.Next();
  Logger("relay")->warn("{}; reconnecting in {} ms", why.message(), delay.count());
  conn_.reset();
  for (auto& s : streams_) s->lock_held = false;
  reconnect_at_ = Clock::now() + delay;
}

void OutboxRelay::OnDelivery(const DeliveryReport& r) {
  const std::size_t index = static_cast<std::size_t>(r.token >> (kTicketBits + 1));
  const bool dead_letter = (r.token & kDeadLetterBit) != 0;
  const uint64_t ticket = r.token & kTicketMask;
  if (index >= streams_.size()) return;
  Stream& s = *streams_[index];
  if (s.outstanding > 0) --s.outstanding;
  if (!s.checkpoint.IsTracked(ticket)) return;  // from before a rewind
  if (r.outcome == DeliveryOutcome::kPersisted) {
    const Stream::Tracked tracked = *s.checkpoint.PositionOf(ticket);
    if (s.checkpoint.MarkAcked(ticket)) {
      s.kafka_backoff.Reset();
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

void OutboxRelay::HandleFailures() {
  auto log = Logger("relay");
  std::vector<Failure> failures;
  failures.swap(failures_);
  for (const Failure& f : failures) {
    Stream& s = *streams_[f.stream];
    const Stream::Tracked* pos = s.checkpoint.PositionOf(f.ticket);
    if (pos == nullptr) continue;  // made stale by an earlier rewind
    const std::string what = "row " + s.config->order_by + "=" + std::to_string(pos->value) +
                             " of \"" + s.name() + "\"";
    const std::string err = f.report.error_name + ": " + f.report.error_message;
    switch (f.report.outcome) {
      case DeliveryOutcome::kPersisted:
        break;
      case DeliveryOutcome::kFatal:
        break;  // HandleFatalProducer() rewinds every stream
      case DeliveryOutcome::kRetriable:
        Rewind(s, what + " was not delivered (" + err + ")", /*back_off=*/true);
        break;
      case DeliveryOutcome::kPermanent: {
        if (f.dead_letter) {
          s.checkpoint.MarkFailed(f.ticket);
          Halt(s, what + " could not be written to the dead-letter topic \"" +
                      *s.config->dead_letter_topic + "\" either: " + err);
          break;
        }
        if (!s.config->dead_letter_topic) {
          s.checkpoint.MarkFailed(f.ticket);
          Halt(s, what + " can never be delivered: " + err);
          break;
        }
        if (!conn_.healthy()) {
          Rewind(s, what + " must go to the dead-letter topic but PostgreSQL is unreachable");
          break;
        }
        auto res = conn_.Exec(s.table->fetch_sql(), {PgInt64Array({pos->value})});
        if (!res.ok()) {
          Rewind(s, what + " must go to the dead-letter topic: " + res.status().message());
          break;
        }
        if (PQntuples(res->get()) == 0) {
          // The row is gone or was marked sent by someone else: nothing left
          // to publish for it.
          log->warn("{} failed with {} and no longer exists unsent; skipping it", what, err);
          s.checkpoint.MarkAcked(f.ticket);
          break;
        }
        std::optional<std::string> original_topic;
        auto routed = s.router.Route(s.table->RowAt(res->get(), 0));
        if (routed.ok()) original_topic = routed->topic;
        ToDeadLetter(s, f.ticket, s.table->RowAt(res->get(), 0), f.report.error_name,
                     f.report.error_message, original_topic)
            .IgnoreError();  // on failure it already rewound or halted the stream
        break;
      }
    }
  }
}

Status OutboxRelay::ToDeadLetter(Stream& s, uint64_t ticket, const Row& row,
                                 const std::string& reason_name, const std::string& reason,
                                 const std::optional<std::string>& original_topic) {
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
  Logger("relay")->warn("row {}={} of \"{}\" goes to dead-letter topic \"{}\": {}: {}",
                        s.config->order_by, pos.value, s.name(), dl.topic, reason_name, reason);
  Status st = publisher_->Produce(dl, Token(s.index, true, ticket));
  if (st.ok()) {
    ++s.outstanding;
    return st;
  }
  if (st.code() == StatusCode::kRetriable) {
    Rewind(s, "could not queue a dead-letter record: " + st.message(), /*back_off=*/true);
  } else {
    s.metrics->PublishError(publisher_->last_produce_error());
    s.checkpoint.MarkFailed(ticket);
    Halt(s, "row " + std::to_string(pos.value) + " could not be written to the dead-letter topic: " +
                st.message());
  }
  return st;
}

void OutboxRelay::Rewind(Stream& s, const std::string& why, bool back_off) {
  if (back_off) {
    // Kafka refused or lost records librdkafka had already retried: wait a
    // little longer each time before producing them again.
    const milliseconds delay = s.kafka_backoff.Next();
    s.paused_until = Clock::now() + delay;
    Logger("relay")->warn("\"{}\": {}; producing its unacknowledged rows again in {} ms", s.name(),
                          why, delay.count());
  } else {
    Logger("relay")->warn("\"{}\": {}; producing its unacknowledged rows again", s.name(), why);
  }
  s.checkpoint.Reset();
  s.claimed.clear();
  for (long long p : s.unreleased) s.claimed.insert(p);  // still to be deleted/marked
  if (s.gaps) s.gaps->Reset();
  s.more = true;
  s.await_drain = true;
}

void OutboxRelay::Halt(Stream& s, const std::string& why) {
  if (s.metrics != nullptr) s.metrics->SetHalted(true);
  if (!s.halted) {
    Logger("relay")->error(
        "\"{}\" halted: {}. The row stays unsent; fix it or configure dead_letter_topic, then "
        "restart outboxd",
        s.name(), why);
  }
  s.halted = true;
}

void OutboxRelay::HandleFatalProducer() {
  for (auto& s : streams_) {
    if (!s->halted) Rewind(*s, "the Kafka producer failed fatally", /*back_off=*/true);
  }
  failures_.clear();
}

Status OutboxRelay::ReleaseAcknowledged(Stream& s) {
  for (const Stream::Tracked& p : s.checkpoint.TakeReleasable()) s.unreleased.push_back(p.value);
  if (s.unreleased.empty() || !s.table) return Status::Ok();
  auto r = conn_.Exec(s.table->checkpoint_sql(), {PgInt64Array(s.unreleased)});
  if (!r.ok()) {
    return r.status().Prefixed(std::string("could not ") +
                               (s.config->after_delivery == AfterDelivery::kDelete
                                    ? "delete delivered rows from \""
                                    : "mark delivered rows sent in \"") +
                               s.name() + "\"");
  }
  for (long long p : s.unreleased) s.claimed.erase(p);
  s.unreleased.clear();
  return Status::Ok();
}

Status OutboxRelay::ProduceRows(Stream& s, const std::vector<RowRef>& rows,
                                const std::function<void(std::size_t)>& took, bool* completed) {
  *completed = false;
  const Clock::time_point claimed_at = Clock::now();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (s.halted) return Status::Ok();
    const OutboxPosition pos{rows[i].pos};
    if (s.claimed.count(pos.value)) {  // already in flight
      took(i);
      continue;
    }
    Row row = s.table->RowAt(rows[i].res, rows[i].row);
    auto routed = s.router.Route(row);
    Status st;
    if (routed.ok()) {
      st = publisher_->Produce(*routed, Token(s.index, false, s.checkpoint.next_ticket()));
      if (st.ok()) ++s.outstanding;
      if (st.ok() || st.code() != StatusCode::kRetriable) {
        // Tracked from here on: acknowledged, failed, or handed to dead letter.
        s.checkpoint.Add({pos.value, &s.metrics->Published(routed->topic), claimed_at});
      }
    } else {
      st = routed.status();
      s.checkpoint.Add({pos.value, nullptr, claimed_at});
    }
    if (st.code() == StatusCode::kRetriable) {
      s.more = false;  // librdkafka's queue is full; wait for deliveries
      return Status::Ok();
    }
    s.claimed.insert(pos.value);
    took(i);
    if (st.ok()) continue;
    const uint64_t ticket = s.checkpoint.next_ticket() - 1;
    if (st.code() == StatusCode::kFatal) return Status::Ok();  // the loop recreates the producer
    // Permanent: the row cannot be published as it is.
    const std::string name = routed.ok() ? publisher_->last_produce_error() : std::string(kUnroutable);
    s.metrics->PublishError(name);
    if (s.config->dead_letter_topic) {
      if (!ToDeadLetter(s, ticket, row, name, st.message(),
                        routed.ok() ? std::optional<std::string>(routed->topic) : std::nullopt)
               .ok()) {
        return Status::Ok();  // rewound or halted
      }
    } else {
      s.checkpoint.MarkFailed(ticket);
      Halt(s, "row " + s.config->order_by + "=" + std::to_string(pos.value) +
                  " can never be delivered: " + st.message());
    }
  }
  *completed = true;
  return Status::Ok();
}

Result<OutboxRelay::GapRows> OutboxRelay::ReadGaps(Stream& s) {
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
  const GapSnapshot after_claim = GapSnapshot::FromServer(
      std::strtoull(PQgetvalue(res, 0, 0), nullptr, 10), std::strtoull(PQgetvalue(res, 0, 1), nullptr, 10),
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
    Logger("relay")->trace("\"{}\": xmin {} xmax {} cursor {}, gaps{}", s.name(), after_claim.xmin,
                           after_claim.xmax, s.gaps->cursor().value_or(0), listed);
  }
  // Rows in flight may lie in a merged range: read past them.
  const std::size_t limit = s.config->batch_size + s.claimed.size();
  auto rows = conn_.Exec(s.table->gap_read_sql(),
                         {PgInt64Array(firsts), PgInt64Array(lasts), std::to_string(limit)});
  if (!rows.ok()) return rows.status().Prefixed("could not read late rows of \"" + s.name() + "\"");
  const bool hit_limit = static_cast<std::size_t>(PQntuples(rows->get())) == limit;
  return GapRows{std::move(rows).value(), hit_limit};
}

Status OutboxRelay::Sweep(Stream& s) {
  const std::optional<long long> cursor = s.gaps->cursor();
  if (!cursor) return Status::Ok();
  const std::size_t limit = s.claimed.size() + s.config->batch_size;
  auto r = conn_.Exec(s.table->sweep_sql(), {std::to_string(*cursor), std::to_string(limit)});
  if (!r.ok()) return r.status().Prefixed("could not sweep \"" + s.name() + "\" for late rows");
  std::vector<long long> missed;
  for (int i = 0; i < PQntuples(r->get()) && missed.size() < s.config->batch_size; ++i) {
    const long long p = s.table->PositionAt(r->get(), i).value;
    // In flight, or in a gap (read with the next claim, in order): not missed.
    if (!s.claimed.count(p) && !s.gaps->Contains(p)) missed.push_back(p);
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
  for (int i = 0; i < n; ++i) refs.push_back({rows->get(), i, s.table->PositionAt(rows->get(), i).value});
  bool completed = false;
  return ProduceRows(s, refs, [](std::size_t) {}, &completed);
}

void OutboxRelay::UpdateGapMetrics(Stream& s, Clock::time_point now) {
  if (s.table_metrics == nullptr || !s.gaps) return;
  const auto oldest = s.gaps->OldestSince();
  s.table_metrics->SetGaps(s.gaps->size(),
                           oldest ? std::chrono::duration<double>(now - *oldest).count() : 0.0);
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

Status OutboxRelay::ClaimAndProduce(Stream& s, Clock::time_point now) {
  if (s.halted) return Status::Ok();
  if (!s.lock_held) {
    if (now < s.next_poll) return Status::Ok();
    s.next_poll = now + s.config->poll_interval;
    auto r = conn_.Exec(kTryLockPollTableSql, {std::to_string(s.table->oid())});
    if (!r.ok()) return r.status().Prefixed("could not lock \"" + s.name() + "\"");
    s.lock_held = std::string_view(PQgetvalue(r->get(), 0, 0)) == "t";
    if (!s.lock_held) return Status::Ok();
    Logger("relay")->info("took over \"{}\" from another outboxd instance", s.name());
    s.more = true;
  }
  if (now < s.paused_until) return Status::Ok();
  if (s.await_drain) {
    if (s.outstanding > 0) return Status::Ok();
    s.await_drain = false;
  }
  const std::size_t pending = TotalPending();
  if (pending >= config_.kafka.max_in_flight) return Status::Ok();
  if (!(s.more || s.notified || now >= s.next_poll)) return Status::Ok();

  GapTracker& gaps = *s.gaps;
  const std::size_t limit = std::min(s.config->batch_size, config_.kafka.max_in_flight - pending);
  const std::optional<long long> cursor = gaps.cursor();
  Result<PgResult> claim = cursor
      ? conn_.Exec(s.table->claim_after_sql(), {std::to_string(*cursor), std::to_string(limit)})
      : conn_.Exec(s.table->claim_first_sql(), {std::to_string(limit)});
  if (!claim.ok()) return claim.status().Prefixed("could not claim rows from \"" + s.name() + "\"");
  const std::size_t n = static_cast<std::size_t>(PQntuples(claim->get()));
  if (n > 0) s.metrics->ObserveBatch(n);
  s.more = n == limit;
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
    const std::vector<GapTracker::RoundRow> order =
        gaps.Order(claimed_positions, late_positions, late->hit_limit);
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
    if (late_taken > 0) {
      s.table_metrics->LateRows(late_taken);
      Logger("relay")->debug("\"{}\": {} rows committed late below position {}, published in order",
                             s.name(), late_taken, cursor ? *cursor : 0);
    }
    OUTBOXD_RETURN_IF_ERROR(st);
  }
  UpdateGapMetrics(s, now);

  // The safety net: rows below the cursor outside every gap (none are
  // expected; each one is counted).
  if (completed && now >= s.next_sweep && !s.halted) {
    s.next_sweep = now + std::max<std::chrono::milliseconds>(10 * s.config->poll_interval,
                                                             std::chrono::seconds(1));
    OUTBOXD_RETURN_IF_ERROR(Sweep(s));
  }
  return Status::Ok();
}

void OutboxRelay::ReadNotifications() {
  if (!conn_.healthy()) return;
  if (PQconsumeInput(conn_.get()) == 0) {
    Disconnect(ClassifyPgError(conn_.get(), nullptr, "lost the PostgreSQL connection"));
    return;
  }
  while (PGnotify* n = PQnotifies(conn_.get())) {
    for (auto& s : streams_) {
      if (s->config->notify_channel && *s->config->notify_channel == n->relname) s->notified = true;
    }
    PQfreemem(n);
  }
}

Status OutboxRelay::SampleMetrics(Clock::time_point now) {
  if (now < next_sample_) return Status::Ok();
  next_sample_ = now + kSampleInterval;
  if (Clock::now() - publisher_->last_answer() > kSampleInterval) {
    publisher_->ProbeKafka(std::chrono::milliseconds(500));
  }
  for (auto& s : streams_) {
    if (!conn_.healthy()) break;
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

void OutboxRelay::UpdateHealth() {
  health_->Beat();
  health_->SetPostgresConnected(conn_.healthy());
  health_->SetKafkaAnswered(publisher_->last_answer());
  health_->SetKafkaQueue(publisher_->OutstandingCount());
  const Stream* halted = nullptr;
  for (const auto& s : streams_) {
    if (s->metrics != nullptr) s->metrics->SetInFlight(static_cast<int64_t>(s->outstanding));
    if (s->halted && halted == nullptr) halted = s.get();
  }
  if (stopping_) {
    health_->SetRunning(false, "stopping");
  } else if (!resolved_once_) {
    health_->SetRunning(false, "starting: the outbox tables were not checked yet");
  } else if (halted != nullptr) {
    health_->SetRunning(false, "table \"" + halted->name() + "\" is halted by a row that cannot be delivered");
  } else {
    health_->SetRunning(true);
  }
}

std::size_t OutboxRelay::TotalPending() const {
  std::size_t n = 0;
  for (const auto& s : streams_) n += s->checkpoint.pending();
  return n;
}

milliseconds OutboxRelay::NextWait(Clock::time_point now) const {
  if (!failures_.empty()) return milliseconds(0);
  milliseconds wait(1000);
  auto until = [&](Clock::time_point t) {
    wait = std::min(wait, std::max(milliseconds(0),
                                   std::chrono::duration_cast<milliseconds>(t - now)));
  };
  if (conn_.healthy()) {
    const bool room = TotalPending() < config_.kafka.max_in_flight;
    for (const auto& s : streams_) {
      if (s->halted || stopping_) continue;
      if (now < s->paused_until) {
        until(s->paused_until);
        continue;
      }
      if (s->await_drain && s->outstanding > 0) continue;  // woken by the Kafka fd
      if (s->lock_held && room && (s->more || s->notified)) return milliseconds(0);
      if (room || !s->lock_held) until(s->next_poll);
    }
  } else {
    until(reconnect_at_);
  }
  if (stopping_) wait = std::min(wait, milliseconds(100));
  return wait;
}

Status OutboxRelay::Run(int stop_fd) {
  auto log = Logger("relay");
  Clock::time_point stop_deadline{};
  while (true) {
    Clock::time_point now = Clock::now();
    if (!conn_.healthy() && now >= reconnect_at_) {
      Status st = Connect(!resolved_once_);
      if (!st.ok()) {
        if (st.code() == StatusCode::kInvalidConfig && !resolved_once_) return st;
        Disconnect(st);
      }
    }

    publisher_->DrainWakeup();
    publisher_->Poll(milliseconds(0));
    if (publisher_->fatal_error_raised()) {
      HandleFatalProducer();
      OUTBOXD_RETURN_IF_ERROR(publisher_->Recreate());
      for (auto& s : streams_) s->outstanding = 0;  // purged with the old producer
    }
    for (auto& s : streams_) {
      if (!conn_.healthy()) break;
      Status st = ReleaseAcknowledged(*s);
      if (!st.ok()) Disconnect(st);
    }
    HandleFailures();

    now = Clock::now();
    if (!stopping_) {
      for (auto& s : streams_) {
        if (!conn_.healthy()) break;
        Status st = ClaimAndProduce(*s, now);
        if (!st.ok()) Disconnect(st);
      }
    }
    ReadNotifications();
    if (!stopping_) {
      Status st = SampleMetrics(now);
      if (!st.ok() && !conn_.healthy()) Disconnect(st);
      if (!st.ok() && conn_.healthy()) log->warn("{}", st.message());
    }
    UpdateHealth();

    if (stopping_) {
      bool settled = true;
      for (const auto& s : streams_) {
        if (!s->halted && s->checkpoint.pending() > 0) settled = false;
        if (!s->unreleased.empty() || s->checkpoint.size() > s->checkpoint.pending()) {
          // Acknowledged rows still to delete/mark: settled only once released
          // (or when PostgreSQL is gone and the deadline passes).
          if (!s->halted) settled = false;
        }
      }
      if (settled || now >= stop_deadline) break;
    }

    pollfd fds[3];
    int nfds = 0;
    fds[nfds++] = {stop_fd, POLLIN, 0};
    fds[nfds++] = {publisher_->WakeupFd(), POLLIN, 0};
    if (conn_.healthy()) fds[nfds++] = {conn_.socket(), POLLIN, 0};
    const int rc = ::poll(fds, nfds, static_cast<int>(NextWait(Clock::now()).count()));
    if (rc < 0 && errno != EINTR) {
      return Status::Internal(std::string("poll failed: ") + std::strerror(errno));
    }
    if (rc > 0 && (fds[0].revents & POLLIN) && !stopping_) {
      char buf[128];
      while (::read(stop_fd, buf, sizeof buf) < 0 && errno == EINTR) {
      }
      stopping_ = true;
      if (on_lifecycle_) on_lifecycle_(Lifecycle::kStopping);
      stop_deadline = Clock::now() + config_.kafka.shutdown_timeout;
      log->info("stopping: no new claims; waiting up to {} ms for {} deliveries in flight",
                config_.kafka.shutdown_timeout.count(), TotalPending());
    }
  }

  UpdateHealth();
  std::size_t left = 0;
  for (auto& s : streams_) {
    if (conn_.healthy()) {
      Status st = ReleaseAcknowledged(*s);
      if (!st.ok()) log->warn("{}", st.message());
    }
    left += s->checkpoint.pending() + s->unreleased.size();
    log->info("\"{}\": {} events published, {} dead-lettered{}", s->name(), s->published,
              s->dead_lettered, s->halted ? " (halted)" : "");
  }
  if (left > 0) {
    log->warn("{} events were not confirmed before shutdown; they stay unsent and are published "
              "again on the next start",
              left);
  }
  log->info("stopped");
  return Status::Ok();
}

}  // namespace outboxd
