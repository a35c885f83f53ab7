// The codec against every golden vector of docs/protocol.md.

import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeFrame, describe, encode, FRAME_TYPES, Decoder, PROTOCOL_V1, PROTOCOL_V2 } from "../codec.js";
import { errorName, hex, parseValue, table } from "../test-support/spec.js";
import { mintClient, mintBackend } from "../test-support/mint.js";

const at = (/** @type {{line: number}} */ row) => `docs/protocol.md line ${row.line}`;

/** Checks each row of a frame table both ways; returns the frame types it covers. */
function checkFrameTable(/** @type {string} */ name, /** @type {number} */ version) {
  const kinds = new Set();
  for (const row of table(name)) {
    const [id, shown, bytesCell] = row.cells;
    assert.equal(row.cells.length, 3, at(row));
    const bytes = hex(bytesCell);
    const value = parseValue(shown);
    assert.equal(describe(value), shown, `${at(row)}: ${id} reads back as the value column`);
    assert.deepEqual(encode(value), bytes, `${at(row)}: encoding of ${id}`);
    const got = decodeFrame(bytes, { version });
    assert.ok(got, `${at(row)}: ${id} is whole`);
    assert.equal(got.used, bytes.length, `${at(row)}: ${id} consumed whole`);
    assert.deepEqual(got.frame, value, `${at(row)}: decoding of ${id}`);
    assert.equal(describe(got.frame), shown, at(row));
    kinds.add(bytes[0]);
  }
  return kinds;
}

test("version-1 frames encode and decode exactly as the spec says", () => {
  const kinds = checkFrameTable("frames", PROTOCOL_V1);
  const v1 = FRAME_TYPES.filter(([, , since]) => since === 1).map(([, code]) => code);
  assert.deepEqual([...kinds].sort((a, b) => a - b), v1, "every version-1 frame type has a row");
});

test("version-2 frames encode and decode exactly as the spec says", () => {
  const kinds = checkFrameTable("frames-v2", PROTOCOL_V2);
  for (const [name, code, since] of FRAME_TYPES) {
    if (since === 2) assert.ok(kinds.has(code), `${name} has a golden row`);
  }
});

test("every version-1 vector reads the same in version 2", () => {
  for (const row of table("frames")) {
    const got = decodeFrame(hex(row.cells[2]), { version: PROTOCOL_V2 });
    assert.equal(got && describe(got.frame), row.cells[1], at(row));
  }
});

test("growth rules decode as the spec says", () => {
  for (const row of table("versions")) {
    const [id, version, bytesCell, expected] = row.cells;
    const bytes = hex(bytesCell);
    let got;
    try {
      const r = decodeFrame(bytes, { version: Number(version) });
      if (r) assert.equal(r.used, bytes.length, `${at(row)}: ${id} consumed whole`);
      got = r ? describe(r.frame) : "incomplete";
    } catch (e) {
      got = errorName(e);
    }
    assert.equal(got, expected, `${at(row)}: ${id}`);
  }
});

test("invalid inputs are refused, or waited on, as the spec says", () => {
  for (const row of table("invalid")) {
    const [id, bytesCell, expected] = row.cells;
    let got;
    try {
      got = decodeFrame(hex(bytesCell), { version: PROTOCOL_V1 }) ? "decoded" : "incomplete";
    } catch (e) {
      got = errorName(e);
    }
    assert.equal(got, expected, `${at(row)}: ${id}`);
  }
});

test("every frame reassembles from every split into two pieces, and from single bytes", () => {
  const rows = [...table("frames"), ...table("frames-v2")];
  const stream = Uint8Array.from(rows.flatMap((r) => [...hex(r.cells[2])]));
  const want = rows.map((r) => r.cells[1]);
  const drain = (/** @type {Decoder} */ d, /** @type {string[]} */ out) => {
    for (let f; (f = d.next()); ) out.push(describe(f));
  };
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new Decoder({ version: PROTOCOL_V2 });
    const got = [];
    d.push(stream.subarray(0, cut));
    drain(d, got);
    d.push(stream.subarray(cut));
    drain(d, got);
    assert.deepEqual(got, want, `split at byte ${cut}`);
    assert.equal(d.pending, 0);
  }
  const d = new Decoder({ version: PROTOCOL_V2 });
  const got = [];
  for (const b of stream) {
    d.push(Uint8Array.of(b));
    drain(d, got);
  }
  assert.deepEqual(got, want, "one byte at a time");
});

test("an oversized length is refused from its prefix, before the body arrives", () => {
  const d = new Decoder({ max: 100 });
  d.push(Uint8Array.of(0x05, 0x65));
  assert.throws(() => d.next(), (e) => errorName(e) === "Oversized → 2001");
});

test("the test token minter gives the spec's tokens", () => {
  for (const row of table("tokens")) {
    const [id, secret, token] = row.cells;
    const minted =
      id === "client"
        ? mintClient(secret, "alice", "phone", 1767225600)
        : id === "client-no-device"
          ? mintClient(secret, "alice", "", 1767225600)
          : mintBackend(secret, "billing", 1767225600);
    assert.equal(minted, token, at(row));
  }
});
