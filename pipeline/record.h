#pragma once
// Row and Record: what flows through the pipeline.
//
// A Row is one source row as text values by column name (SQL NULL is
// nullopt), exactly as the source read it. A Record is what the Router made of
// it for Kafka. Both are plain value types.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace outboxd {

// Position of an outbox row: the value of its ordering column.
struct OutboxPosition {
  long long value = 0;
  auto operator<=>(const OutboxPosition&) const = default;
};

struct Row {
  std::vector<std::string> columns;                // column names
  std::vector<std::optional<std::string>> values;  // same order as columns

  // The value of `column`; nullptr when the row has no such column.
  const std::optional<std::string>* Find(const std::string& column) const {
    for (std::size_t i = 0; i < columns.size(); ++i) {
      if (columns[i] == column) return &values[i];
    }
    return nullptr;
  }
};

struct Header {
  std::string name;
  std::optional<std::string> value;
  bool operator==(const Header&) const = default;
};

struct Record {
  std::string topic;
  std::optional<std::string> key;       // nullopt: no key
  std::optional<std::string> value;     // nullopt: null value (tombstone)
  std::vector<Header> headers;          // "id" first
  std::optional<int64_t> timestamp_ms;  // nullopt: the producer's clock

  // Bytes of key, value and headers (names and values): what a record
  // weighs against a byte bound.
  std::size_t payload_bytes() const {
    std::size_t n = (key ? key->size() : 0) + (value ? value->size() : 0);
    for (const Header& h : headers) n += h.name.size() + (h.value ? h.value->size() : 0);
    return n;
  }
};

}  // namespace outboxd
