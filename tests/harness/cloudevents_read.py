#!/usr/bin/env python3
"""Reads Kafka records as `kcat -C -J` prints them (one JSON object per line
on stdin) with the official CloudEvents Python SDK's Kafka binding
(`cloudevents` on PyPI), and prints one JSON object per record:

  {"offset": N, "attributes": {...}, "data": ...}

The SDK tells binary from structured mode by the content-type header. Its
attributes are printed as strings (time in ISO 8601 as the SDK parsed it);
data is what the SDK made of the value: parsed JSON, or
{"bytes_utf8": "..."} for raw bytes. A record the SDK rejects ends the run
with exit code 1 and the SDK's error.
"""
import json
import sys

from cloudevents.core.bindings import kafka


def to_message(record):
    flat = record.get("headers") or []
    headers = {}
    for i in range(0, len(flat), 2):
        value = flat[i + 1]
        headers[flat[i]] = b"" if value is None else value.encode("utf-8")
    key = record.get("key")
    payload = record.get("payload")
    return kafka.KafkaMessage(
        headers=headers,
        key=None if key is None else key.encode("utf-8"),
        value=b"" if payload is None else payload.encode("utf-8"),
    )


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        try:
            event = kafka.from_kafka_event(to_message(record))
        except Exception as e:  # the SDK rejected the record
            print(f"offset {record.get('offset')}: the CloudEvents SDK rejected the record: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        attributes = {k: (v.isoformat() if hasattr(v, "isoformat") else str(v))
                      for k, v in event.get_attributes().items()}
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = {"bytes_utf8": bytes(data).decode("utf-8", "replace")}
        print(json.dumps({"offset": record.get("offset"), "attributes": attributes, "data": data}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
