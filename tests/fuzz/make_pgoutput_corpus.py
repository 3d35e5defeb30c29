#!/usr/bin/env python3
"""Builds the seed corpus of the pgoutput decoder fuzz target from the frames
recorded from a real server (tests/unit/cdc/fixtures/NNN_<type>.bin).

Each seed is a sequence of frames in the fuzz target's input format: a 2-byte
big-endian length, then the frame. Seeds: the whole recorded session, and
each transaction (Begin .. Commit) with the Relation/Type frames before it.
Frames longer than 65535 bytes are left out.
"""
import pathlib
import struct

root = pathlib.Path(__file__).resolve().parents[2]
fixtures = sorted((root / "tests/unit/cdc/fixtures").glob("*.bin"))
out = root / "tests/fuzz/corpus/pgoutput"
out.mkdir(parents=True, exist_ok=True)
for old in out.glob("seed-*"):
    old.unlink()


def framed(frames):
    return b"".join(struct.pack(">H", len(f)) + f for f in frames if len(f) <= 0xFFFF)


frames = [p.read_bytes() for p in fixtures]
(out / "seed-session").write_bytes(framed(frames))
schema, txn, n = [], [], 0
for f in frames:
    kind = f[:1]
    if kind in (b"R", b"Y"):
        schema.append(f)
    txn.append(f)
    if kind == b"C":
        n += 1
        (out / f"seed-txn-{n:02d}").write_bytes(framed(schema + txn))
        txn = []
print(f"{n + 1} seeds in {out}")
