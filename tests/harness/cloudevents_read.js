// Reads Kafka records as `kcat -C -J` prints them (one JSON object per line
// on stdin) with the official CloudEvents JavaScript SDK's Kafka binding
// (`cloudevents` on npm, found through NODE_PATH as set up by
// cloudevents-sdk.sh javascript), and prints one JSON object per record:
//
//   {"offset": N, "attributes": {...}, "data": ...}
//
// as cloudevents_read.py does. Headers and the key are given to the SDK as
// strings, the value as a Buffer (an empty one for a null value: the SDK
// refuses a null value). Each event is also checked against the
// specification with the SDK's validate(). A record the SDK rejects ends the
// run with exit code 1 and the SDK's error.
"use strict";

const readline = require("readline");
const { Kafka } = require("cloudevents");

function toMessage(record) {
  const flat = record.headers || [];
  const headers = {};
  for (let i = 0; i < flat.length; i += 2) headers[flat[i]] = flat[i + 1] === null ? "" : flat[i + 1];
  return {
    headers,
    key: record.key === null || record.key === undefined ? undefined : record.key,
    value: Buffer.from(record.payload === null || record.payload === undefined ? "" : record.payload, "utf8"),
  };
}

function describe(record) {
  const event = Kafka.toEvent(toMessage(record));
  event.validate();
  const attributes = {};
  for (const [name, value] of Object.entries(event.toJSON())) {
    if (name === "data" || name === "data_base64" || value === undefined) continue;
    attributes[name] = String(value);
  }
  let data = event.data === undefined ? null : event.data;
  if (Buffer.isBuffer(data)) data = data.length === 0 ? null : { bytes_utf8: data.toString("utf8") };
  return { offset: record.offset, attributes, data };
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const record = JSON.parse(line);
    let out;
    try {
      out = describe(record);
    } catch (e) {
      process.stderr.write(
        `offset ${record.offset}: the CloudEvents SDK rejected the record: ${e.name}: ${e.message}` +
          (e.errors ? ` ${JSON.stringify(e.errors)}` : "") +
          "\n",
      );
      return 1;
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  }
  return 0;
}

// exitCode, not process.exit(): exit() would cut off output still queued for
// a pipe.
main().then((code) => {
  process.exitCode = code;
});
