// The golden vectors of docs/protocol.md, read from the spec itself (as proto/tests/golden.rs
// does), so the spec and the JavaScript codec cannot drift apart.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { CloseCode, RefuseReason } from "../codec.js";

const SPEC = readFileSync(fileURLToPath(new URL("../../docs/protocol.md", import.meta.url)), "utf8");

/**
 * The rows of the table after `<!-- golden:NAME -->`: `{ line, cells }`, cells trimmed and
 * without backticks.
 * @param {string} name
 */
export function table(name) {
  const lines = SPEC.split("\n");
  const marker = `<!-- golden:${name} -->`;
  let i = lines.findIndex((l) => l.trim() === marker);
  if (i < 0) throw new Error(`docs/protocol.md has no ${marker}`);
  i++;
  while (i < lines.length && lines[i].trim() === "") i++;
  const rows = [];
  for (let n = 0; i < lines.length && lines[i].trimStart().startsWith("|"); i++, n++) {
    if (n < 2) continue; // header and separator
    const cells = lines[i]
      .trim()
      .replace(/^\|/, "")
      .replace(/\|$/, "")
      .split("|")
      .map((c) => c.trim().replace(/^`+|`+$/g, ""));
    rows.push({ line: i + 1, cells });
  }
  if (rows.length === 0) throw new Error(`the table after ${marker} has no rows`);
  return rows;
}

/** @param {string} cell */
export function hex(cell) {
  return Uint8Array.from(cell.split(/\s+/).filter(Boolean), (b) => {
    if (!/^[0-9a-f]{2}$/i.test(b)) throw new Error(`bad hex ${b}`);
    return parseInt(b, 16);
  });
}

// Fields whose type is varint(u64): the codec gives them as bigints.
const U64_FIELDS = new Set(["id", "session_id", "server_epoch", "client_id"]);

/**
 * Parses the spec's readable form of a frame (`Name { field: value, ... }`, Rust `Debug`) into
 * the codec's frame object.
 * @param {string} text
 */
export function parseValue(text) {
  let pos = 0;
  const peek = () => text[pos];
  const ws = () => {
    while (text[pos] === " ") pos++;
  };
  const expect = (/** @type {string} */ s) => {
    ws();
    if (!text.startsWith(s, pos)) throw new Error(`expected ${s} at ${pos} in ${text}`);
    pos += s.length;
  };
  const ident = () => {
    ws();
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(pos));
    if (!m) throw new Error(`expected a name at ${pos} in ${text}`);
    pos += m[0].length;
    return m[0];
  };
  /** A quoted string's contents as bytes (escapes resolved). */
  const quoted = () => {
    expect('"');
    const out = [];
    const enc = new TextEncoder();
    while (text[pos] !== '"') {
      if (pos >= text.length) throw new Error(`unterminated string in ${text}`);
      if (text[pos] === "\\") {
        const e = text[pos + 1];
        pos += 2;
        if (e === "x") {
          out.push(parseInt(text.slice(pos, pos + 2), 16));
          pos += 2;
        } else if (e === "u") {
          const close = text.indexOf("}", pos);
          out.push(...enc.encode(String.fromCodePoint(parseInt(text.slice(pos + 1, close), 16))));
          pos = close + 1;
        } else {
          out.push(...enc.encode({ n: "\n", r: "\r", t: "\t", 0: "\0" }[e] ?? e));
        }
      } else {
        const ch = String.fromCodePoint(/** @type {number} */ (text.codePointAt(pos)));
        out.push(...enc.encode(ch));
        pos += ch.length;
      }
    }
    pos++;
    return Uint8Array.from(out);
  };
  /** A field's value: string, byte string, number, bool, or a name with an argument. */
  const value = () => {
    ws();
    if (peek() === '"') return new TextDecoder().decode(quoted());
    if (text.startsWith('b"', pos)) {
      pos++;
      return quoted();
    }
    const num = /^\d+/.exec(text.slice(pos));
    if (num) {
      pos += num[0].length;
      return BigInt(num[0]);
    }
    const name = ident();
    if (name === "true" || name === "false") return name === "true";
    if (peek() === "(") {
      pos++;
      const arg = value();
      expect(")");
      return { name, arg };
    }
    return { name };
  };
  const typeName = ident();
  /** @type {Record<string, any>} */
  const frame = { type: typeName };
  ws();
  if (peek() === "{") {
    pos++;
    for (;;) {
      const field = ident();
      expect(":");
      frame[field] = convert(field, value());
      ws();
      if (peek() === ",") pos++;
      else break;
    }
    expect("}");
  }
  ws();
  if (pos !== text.length) throw new Error(`trailing text at ${pos} in ${text}`);
  return frame;
}

/** A named code or reason (`Replaced`, `Other(1500)`) as its number. @param {any} v @param {Record<string, number>} names */
function named(v, names) {
  if (v.name === "Other") return Number(v.arg);
  if (!(v.name in names)) throw new Error(`unknown name ${v.name}`);
  return names[v.name];
}

/** @param {string} field @param {any} v */
function convert(field, v) {
  if (typeof v === "bigint") return U64_FIELDS.has(field) ? v : Number(v);
  if (field === "code" || field === "reason") return named(v, CloseCode);
  if (field === "status") {
    switch (v.name) {
      case "Delivered":
        return { kind: "Delivered", devices: Number(v.arg) };
      case "Refused":
        return { kind: "Refused", reason: named(v.arg, RefuseReason) };
      default:
        return { kind: v.name };
    }
  }
  return v;
}

/** Decode errors by the spec's names: `UnknownType → 2002`. @param {any} e */
export function errorName(e) {
  if (e?.name !== "DecodeError") throw e;
  return `${e.kind} → ${e.closeCode}`;
}
