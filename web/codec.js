// The tether wire codec (docs/protocol.md, versions 1 and 2): frames to bytes and back.
//
// No I/O and no clock: `encode` turns a frame object into bytes, `decodeFrame` takes one frame
// off the front of a byte array, and `Decoder` reassembles a stream that arrives in pieces
// (WebSocket messages hold any number of frames, and a frame may span messages).
//
// A frame is a plain object: `{ type: "Ping", lease_ms: 25000 }`. Field names are the spec's.
// Integers: `varint(u64)` fields are `bigint` (ids, session ids, epochs: no precision is lost);
// every narrower field is a `number`. `rest` payloads are `Uint8Array`s. Close codes and refuse
// reasons are numbers (`closeCodeName`, `refuseReasonName` give their names). A status is
// `{ kind: "Delivered", devices }`, `{ kind: "Offline" }`, `{ kind: "Refused", reason }`,
// `{ kind: "Acked" }` or `{ kind: "Accepted" }`.

/** @typedef {{ kind: "Delivered", devices: number } | { kind: "Offline" } | { kind: "Refused", reason: number } | { kind: "Acked" } | { kind: "Accepted" }} Status */
/** @typedef {{ type: string, [field: string]: any }} Frame */

export const PROTOCOL_V1 = 1;
export const PROTOCOL_V2 = 2;
/** The largest body a receiver accepts unless configured otherwise. */
export const DEFAULT_MAX_FRAME = 65536;
/** The largest `Ping.lease_ms` / `Pong.deadline_ms`: 2^28 − 1. */
export const HEARTBEAT_MS_MAX = 268435455;

/** Login flags. */
export const LOGIN_PROBE = 1;
export const LOGIN_UPSTREAM = 2;
/** BackendPush flags. */
export const PUSH_WANT_ACK = 1;

/** Close codes by name (docs/protocol.md, "Close codes"). */
export const CloseCode = Object.freeze({
  Normal: 1000,
  ServerShutdown: 1001,
  IdleTimeout: 1002,
  SlowConsumer: 1003,
  WriteTimeout: 1004,
  Overloaded: 1005,
  InternalError: 1006,
  ProtocolError: 2000,
  FrameTooLarge: 2001,
  UnknownFrame: 2002,
  LoginTimeout: 2003,
  LoginRequired: 2004,
  AuthFailed: 2005,
  TokenExpired: 2006,
  UnsupportedVersion: 2007,
  Replaced: 2008,
  Kicked: 2009,
  NotAllowed: 2010,
});

/** Refuse reasons by name (docs/protocol.md, "Field types"). */
export const RefuseReason = Object.freeze({
  SlowConsumer: 1,
  TooLarge: 2,
  RateLimited: 3,
  Overloaded: 4,
  NotAllowed: 5,
  ShuttingDown: 6,
  BadTarget: 7,
  ClusterUnavailable: 8,
  TimedOut: 9,
  NoBackend: 10,
  Rejected: 11,
});

/** @type {Map<number, string>} */
const closeNames = new Map(Object.entries(CloseCode).map(([k, v]) => [v, k]));
/** @type {Map<number, string>} */
const reasonNames = new Map(Object.entries(RefuseReason).map(([k, v]) => [v, k]));

/** A close code's name, or `Other(n)` for a code without one. @param {number} code */
export function closeCodeName(code) {
  return closeNames.get(code) ?? `Other(${code})`;
}

/** A refuse reason's name, or `Other(n)`. @param {number} reason */
export function refuseReasonName(reason) {
  return reasonNames.get(reason) ?? `Other(${reason})`;
}

/** Whether a close code allows reconnecting (1000–1999, and codes outside both ranges). @param {number} code */
export function mayReconnect(code) {
  return !(code >= 2000 && code <= 2999);
}

/**
 * Why bytes are not a frame. `closeCode` is what the receiver closes the connection with.
 */
export class DecodeError extends Error {
  /**
   * @param {"Oversized" | "UnknownType" | "BadUtf8" | "Malformed"} kind
   * @param {string} detail
   */
  constructor(kind, detail) {
    super(`${kind}: ${detail}`);
    this.name = "DecodeError";
    /** Which rule the bytes broke. */
    this.kind = kind;
    /** The close code this error leads to. */
    this.closeCode =
      kind === "Oversized" ? 2001 : kind === "UnknownType" ? 2002 : 2000;
  }
}

// Field types of the schema below. `str` carries its bounds.
const U8 = "u8";
const BOOL = "bool";
const U16 = "u16";
const U32 = "u32";
const U64 = "u64";
const LEASE = "lease"; // varint(u32) of at most HEARTBEAT_MS_MAX
const REST = "rest";
const STATUS = "status"; // SendResult / PushResult status
const UP_STATUS = "upstatus"; // UpstreamResult status
/** @param {number} min @param {number} max */
const str = (min, max) => ({ min, max });

/**
 * Every frame type: [code, name, first version, fields in wire order].
 * @type {Array<[number, string, number, Array<[string, any]>]>}
 */
const SCHEMA = [
  [0x01, "Login", 1, [["version", U8], ["flags", U8], ["user", str(1, 128)], ["device", str(0, 64)], ["token", str(0, 512)], ["heartbeat_ms", U32], ["network_key", str(0, 64)]]],
  [0x02, "LoginOk", 1, [["session_id", U64], ["server_epoch", U64], ["min_lease_ms", U32], ["max_lease_ms", U32], ["lease_multiplier_pct", U16], ["grace_ms", U32], ["prior_ms", U32], ["max_frame", U32]]],
  [0x03, "Ping", 1, [["lease_ms", LEASE]]],
  [0x04, "Pong", 1, [["deadline_ms", LEASE]]],
  [0x05, "Push", 1, [["id", U64], ["payload", REST]]],
  [0x06, "PushAck", 1, [["id", U64]]],
  [0x07, "Send", 1, [["to", str(1, 128)], ["client_id", U64], ["payload", REST]]],
  [0x08, "SendResult", 1, [["client_id", U64], ["status", STATUS]]],
  [0x09, "Kick", 1, [["reason", U16], ["may_reconnect", BOOL], ["jitter_ms", U32]]],
  [0x0a, "GoAway", 1, [["reason", U16], ["may_reconnect", BOOL], ["window_ms", U32]]],
  [0x0b, "Close", 1, [["code", U16], ["text", str(0, 256)]]],
  [0x0c, "Probe", 1, [["delay_ms", U32]]],
  [0x0d, "ProbeFire", 1, []],
  [0x0e, "NetReport", 1, [["learned_ms", U32]]],
  [0x10, "BackendPush", 1, [["id", U64], ["flags", U8], ["user", str(1, 128)], ["payload", REST]]],
  [0x11, "PushResult", 1, [["id", U64], ["status", STATUS]]],
  [0x12, "Upstream", 2, [["client_id", U64], ["flags", U8], ["payload", REST]]],
  [0x13, "UpstreamResult", 2, [["client_id", U64], ["status", UP_STATUS], ["reply", REST]]],
  [0x14, "UpstreamDeliver", 2, [["id", U64], ["user", str(1, 128)], ["device", str(0, 64)], ["session_id", U64], ["client_id", U64], ["payload", REST]]],
  [0x15, "UpstreamAnswer", 2, [["id", U64], ["accepted", BOOL], ["reply", REST]]],
  [0x16, "Message", 2, [["id", U64], ["from_user", str(1, 128)], ["from_device", str(0, 64)], ["payload", REST]]],
  [0x17, "TokenNotice", 2, [["expires_in_ms", U32]]],
  [0x18, "Refresh", 2, [["token", str(1, 512)]]],
  [0x19, "Refreshed", 2, []],
];

/** @type {Map<number, {code: number, name: string, since: number, fields: Array<[string, any]>}>} */
const BY_CODE = new Map();
/** @type {Map<string, {code: number, name: string, since: number, fields: Array<[string, any]>}>} */
const BY_NAME = new Map();
for (const [code, name, since, fields] of SCHEMA) {
  const def = { code, name, since, fields };
  BY_CODE.set(code, def);
  BY_NAME.set(name, def);
}

/** The frame type names and codes, as `[name, code, first version]`. */
export const FRAME_TYPES = SCHEMA.map(([code, name, since]) => [name, code, since]);

/** Extension frame types (version 2): skipped when unknown. */
const isExtension = (/** @type {number} */ k) => k >= 0x40 && k <= 0x7f;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------- varints

const U32_MAX_LEN = 5;
const U64_MAX_LEN = 10;

/**
 * Reads a canonical varint at `pos`. Returns `[value, bytesUsed]`, or `null` when the bytes end
 * first. `value` is a bigint for 10-byte (u64) fields and a number otherwise.
 * @param {Uint8Array} buf @param {number} pos @param {number} maxLen
 * @returns {[number | bigint, number] | null}
 */
function readVarint(buf, pos, maxLen) {
  // Bits the last allowed byte may carry: 32 - 28 = 4 for u32, 64 - 63 = 1 for u64.
  const lastBits = maxLen === U32_MAX_LEN ? 4 : 1;
  let value = 0n;
  for (let i = 0; pos + i < buf.length; i++) {
    const byte = buf[pos + i];
    const group = byte & 0x7f;
    if (i + 1 === maxLen && ((byte & 0x80) !== 0 || group >> lastBits !== 0)) {
      throw new DecodeError("Malformed", "varint overflows its field");
    }
    value |= BigInt(group) << BigInt(7 * i);
    if ((byte & 0x80) === 0) {
      if (byte === 0 && i > 0) {
        throw new DecodeError("Malformed", "varint is not canonical");
      }
      return [maxLen === U64_MAX_LEN ? value : Number(value), i + 1];
    }
  }
  return null;
}

/** @param {number | bigint} v @param {number[]} out */
function putVarint(v, out) {
  let n = BigInt(v);
  do {
    let byte = Number(n & 0x7fn);
    n >>= 7n;
    if (n > 0n) byte |= 0x80;
    out.push(byte);
  } while (n > 0n);
}

// ---------------------------------------------------------------- encoding

/** Why a value cannot be encoded (a caller's mistake, not the peer's). */
export class EncodeError extends Error {
  /** @param {string} detail */
  constructor(detail) {
    super(detail);
    this.name = "EncodeError";
  }
}

/**
 * @param {unknown} v @param {bigint} max @param {string} what
 * @returns {bigint}
 */
function checkInt(v, max, what) {
  if (typeof v !== "bigint" && !(typeof v === "number" && Number.isSafeInteger(v))) {
    throw new EncodeError(`${what} must be an integer, got ${String(v)}`);
  }
  const n = BigInt(v);
  if (n < 0n || n > max) throw new EncodeError(`${what} is out of range: ${n}`);
  return n;
}

/** @param {Uint8Array | ArrayBuffer | string | undefined} p */
function bytesOf(p) {
  if (p === undefined) return new Uint8Array(0);
  if (typeof p === "string") return utf8.encode(p);
  if (p instanceof Uint8Array) return p;
  if (p instanceof ArrayBuffer) return new Uint8Array(p);
  throw new EncodeError("a payload is a Uint8Array or a string");
}

/**
 * @param {Status} s @param {number[]} out @param {string} type
 */
function putStatus(s, out, type) {
  switch (s?.kind) {
    case "Delivered":
      out.push(0);
      putVarint(checkInt(s.devices, 0xffffffffn, "devices"), out);
      if (s.devices === 0) throw new EncodeError("Delivered(0) is never sent");
      return;
    case "Offline":
      return void out.push(1);
    case "Refused":
      return void out.push(2, Number(checkInt(s.reason, 255n, "reason")));
    case "Acked":
      return void out.push(3);
    case "Accepted":
      if (type !== "SendResult") throw new EncodeError("Accepted answers a Send only");
      return void out.push(4);
    default:
      throw new EncodeError(`unknown status ${JSON.stringify(s)}`);
  }
}

/**
 * The bytes of one frame, framing included.
 * @param {Frame} frame
 * @returns {Uint8Array}
 */
export function encode(frame) {
  const def = BY_NAME.get(frame?.type);
  if (!def) throw new EncodeError(`unknown frame type ${frame?.type}`);
  /** @type {number[]} */
  const body = [];
  /** @type {Uint8Array | null} */
  let rest = null;
  for (const [name, t] of def.fields) {
    const v = frame[name];
    if (typeof t === "object") {
      if (typeof v !== "string") throw new EncodeError(`${name} must be a string`);
      const b = utf8.encode(v);
      if (b.length < t.min || b.length > t.max) {
        throw new EncodeError(`${name} must be ${t.min}..=${t.max} bytes, is ${b.length}`);
      }
      putVarint(b.length, body);
      for (const x of b) body.push(x);
      continue;
    }
    switch (t) {
      case U8:
        body.push(Number(checkInt(v, 255n, name)));
        break;
      case BOOL:
        if (typeof v !== "boolean") throw new EncodeError(`${name} must be a boolean`);
        body.push(v ? 1 : 0);
        break;
      case U16:
        putVarint(checkInt(v, 0xffffn, name), body);
        break;
      case U32:
        putVarint(checkInt(v, 0xffffffffn, name), body);
        break;
      case LEASE:
        putVarint(checkInt(v, BigInt(HEARTBEAT_MS_MAX), name), body);
        break;
      case U64:
        putVarint(checkInt(v, 0xffffffffffffffffn, name), body);
        break;
      case STATUS:
        putStatus(v, body, def.name);
        break;
      case UP_STATUS:
        if (v?.kind === "Accepted") body.push(0);
        else if (v?.kind === "Refused") body.push(1, Number(checkInt(v.reason, 255n, "reason")));
        else throw new EncodeError("an upstream status is Accepted or Refused");
        break;
      case REST:
        rest = bytesOf(v);
        break;
    }
  }
  const bodyLen = body.length + (rest ? rest.length : 0);
  /** @type {number[]} */
  const head = [def.code];
  putVarint(bodyLen, head);
  const out = new Uint8Array(head.length + bodyLen);
  out.set(head, 0);
  out.set(body, head.length);
  if (rest) out.set(rest, head.length + body.length);
  return out;
}

// ---------------------------------------------------------------- decoding

/** Reads the fields of one body; running out of bytes is malformed (the length said it was whole). */
class Reader {
  /** @param {Uint8Array} buf @param {number} version */
  constructor(buf, version) {
    this.buf = buf;
    this.pos = 0;
    this.version = version;
  }

  u8() {
    if (this.pos >= this.buf.length) throw new DecodeError("Malformed", "body ends inside a field");
    return this.buf[this.pos++];
  }

  /** @param {number} maxLen */
  varint(maxLen) {
    const r = readVarint(this.buf, this.pos, maxLen);
    if (!r) throw new DecodeError("Malformed", "body ends inside a field");
    this.pos += r[1];
    return r[0];
  }

  u32() {
    return /** @type {number} */ (this.varint(U32_MAX_LEN));
  }

  /** @param {string} name @param {any} t @param {string} type */
  field(name, t, type) {
    if (typeof t === "object") {
      const len = this.u32();
      if (len < t.min || len > t.max) {
        throw new DecodeError("Malformed", `${name} must be ${t.min}..=${t.max} bytes`);
      }
      if (this.pos + len > this.buf.length) {
        throw new DecodeError("Malformed", "body ends inside a field");
      }
      let s;
      try {
        s = strictUtf8.decode(this.buf.subarray(this.pos, this.pos + len));
      } catch {
        throw new DecodeError("BadUtf8", `${name} is not UTF-8`);
      }
      this.pos += len;
      return s;
    }
    switch (t) {
      case U8:
        return this.u8();
      case BOOL: {
        const b = this.u8();
        if (b > 1) throw new DecodeError("Malformed", `${name} must be 0 or 1`);
        return b === 1;
      }
      case U16: {
        const v = this.u32();
        if (v > 0xffff) throw new DecodeError("Malformed", `${name} must fit u16`);
        return v;
      }
      case U32:
        return this.u32();
      case LEASE: {
        const v = this.u32();
        if (v > HEARTBEAT_MS_MAX) throw new DecodeError("Malformed", `${name} must be at most 2^28-1`);
        return v;
      }
      case U64:
        return this.varint(U64_MAX_LEN);
      case STATUS:
        switch (this.u8()) {
          case 0: {
            const devices = this.u32();
            if (devices === 0) throw new DecodeError("Malformed", "Delivered to 0 devices");
            return { kind: "Delivered", devices };
          }
          case 1:
            return { kind: "Offline" };
          case 2:
            return { kind: "Refused", reason: this.u8() };
          case 3:
            return { kind: "Acked" };
          case 4:
            if (this.version >= PROTOCOL_V2 && type === "SendResult") return { kind: "Accepted" };
          // falls through
          default:
            throw new DecodeError("Malformed", "unknown status tag");
        }
      case UP_STATUS:
        switch (this.u8()) {
          case 0:
            return { kind: "Accepted" };
          case 1:
            return { kind: "Refused", reason: this.u8() };
          default:
            throw new DecodeError("Malformed", "unknown upstream status tag");
        }
      case REST: {
        const p = this.buf.slice(this.pos);
        this.pos = this.buf.length;
        return p;
      }
    }
    throw new Error(`schema: unknown field type ${t}`);
  }

  /** Version 1 refuses bytes after the last field; version 2 ignores them (a later revision's fields). */
  finish() {
    if (this.pos !== this.buf.length && this.version < PROTOCOL_V2) {
      throw new DecodeError("Malformed", "trailing bytes after the last field");
    }
  }
}

/**
 * How a type byte reads in `version`: a frame definition, "skip" (an unknown extension type in
 * version 2), or undefined (not a frame type).
 * @param {number} k @param {number} version
 */
function kindIn(k, version) {
  const def = BY_CODE.get(k);
  if (def && def.since <= version) return def;
  if (version >= PROTOCOL_V2 && isExtension(k)) return "skip";
  return undefined;
}

/**
 * The header of the frame at `buf[0]`, or null until the type byte and the whole length prefix
 * are there. Refuses an unknown type from its first byte and an oversized length from its prefix.
 * @param {Uint8Array} buf @param {number} max @param {number} version
 */
export function peekHeader(buf, max = DEFAULT_MAX_FRAME, version = PROTOCOL_V2) {
  if (buf.length === 0) return null;
  const def = kindIn(buf[0], version);
  if (def === undefined) {
    throw new DecodeError("UnknownType", `frame type 0x${buf[0].toString(16).padStart(2, "0")}`);
  }
  const r = readVarint(buf, 1, U32_MAX_LEN);
  if (!r) return null;
  const len = /** @type {number} */ (r[0]);
  if (len > max) throw new DecodeError("Oversized", `body of ${len} bytes, maximum ${max}`);
  return { kind: buf[0], def, headerLen: 1 + r[1], bodyLen: len };
}

/**
 * Decodes the frame at the front of `buf`: `{ frame, used }`, or null when `buf` holds only part
 * of a frame (nothing is consumed). Throws `DecodeError` for bytes that are not a frame under
 * the rules of `version`. A `Login` is read by the rules of the version it carries. An unknown
 * extension frame (version 2) decodes as `{ type: "Ignored", kind }`.
 * @param {Uint8Array} buf @param {{ max?: number, version?: number }} [opts]
 * @returns {{ frame: Frame, used: number } | null}
 */
export function decodeFrame(buf, opts = {}) {
  const max = opts.max ?? DEFAULT_MAX_FRAME;
  const version = opts.version ?? PROTOCOL_V2;
  const h = peekHeader(buf, max, version);
  if (!h) return null;
  const end = h.headerLen + h.bodyLen;
  if (buf.length < end) return null;
  if (h.def === "skip") return { frame: { type: "Ignored", kind: h.kind }, used: end };
  const def = /** @type {{name: string, fields: Array<[string, any]>}} */ (h.def);
  const r = new Reader(buf.subarray(h.headerLen, end), version);
  /** @type {Frame} */
  const frame = { type: def.name };
  for (const [name, t] of def.fields) {
    frame[name] = r.field(name, t, def.name);
    if (def.name === "Login" && name === "version") r.version = frame.version;
  }
  r.finish();
  return { frame, used: end };
}

/**
 * Reassembles a byte stream that arrives in pieces into frames.
 *
 * Call `push(bytes)` for each piece as it arrives, then `next()` until it returns null. A
 * `DecodeError` from `next()` ends the stream: close the connection with its `closeCode`.
 */
export class Decoder {
  /** @param {{ max?: number, version?: number }} [opts] */
  constructor(opts = {}) {
    /** Largest body accepted. */
    this.max = opts.max ?? DEFAULT_MAX_FRAME;
    /** Whose rules apply (the login's version). */
    this.version = opts.version ?? PROTOCOL_V2;
    /** Received bytes; `start..end` are not decoded yet. */
    this.buf = new Uint8Array(256);
    this.start = 0;
    this.end = 0;
  }

  /** Appends received bytes. @param {Uint8Array} bytes */
  push(bytes) {
    if (this.end + bytes.length > this.buf.length) {
      const live = this.end - this.start;
      const need = live + bytes.length;
      if (need > this.buf.length) {
        const next = new Uint8Array(Math.max(need, this.buf.length * 2));
        next.set(this.buf.subarray(this.start, this.end), 0);
        this.buf = next;
      } else {
        this.buf.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = live;
    }
    this.buf.set(bytes, this.end);
    this.end += bytes.length;
  }

  /** Bytes received and not yet decoded. */
  get pending() {
    return this.end - this.start;
  }

  /** The next whole frame, or null until more bytes arrive. @returns {Frame | null} */
  next() {
    const r = decodeFrame(this.buf.subarray(this.start, this.end), { max: this.max, version: this.version });
    if (!r) return null;
    this.start += r.used;
    if (this.start === this.end) this.start = this.end = 0;
    return r.frame;
  }
}

// ---------------------------------------------------------------- the spec's readable form

/** Rust's `Debug` of a string: double quotes, escapes for quotes, backslashes and controls. @param {string} s */
function debugStr(s) {
  let out = '"';
  for (const ch of s) {
    const c = /** @type {number} */ (ch.codePointAt(0));
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\0") out += "\\0";
    else if (c < 0x20 || c === 0x7f) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return out + '"';
}

/** A byte string as `b"..."`: printable ASCII as itself, other bytes as `\xNN`. @param {Uint8Array} b */
function debugBytes(b) {
  let out = 'b"';
  for (const x of b) {
    if (x === 0x22) out += '\\"';
    else if (x === 0x5c) out += "\\\\";
    else if (x === 0x0a) out += "\\n";
    else if (x === 0x0d) out += "\\r";
    else if (x === 0x09) out += "\\t";
    else if (x === 0) out += "\\0";
    else if (x >= 0x20 && x < 0x7f) out += String.fromCharCode(x);
    else out += `\\x${x.toString(16).padStart(2, "0")}`;
  }
  return out + '"';
}

/** @param {Status} s */
function describeStatus(s) {
  switch (s.kind) {
    case "Delivered":
      return `Delivered(${s.devices})`;
    case "Refused":
      return `Refused(${refuseReasonName(s.reason)})`;
    default:
      return s.kind;
  }
}

/**
 * A frame in the spec's readable form (the "value" column of the golden vectors), e.g.
 * `Ping { lease_ms: 240000 }`.
 * @param {Frame} frame
 */
export function describe(frame) {
  if (frame.type === "Ignored") return `Ignored { kind: ${frame.kind} }`;
  const def = BY_NAME.get(frame.type);
  if (!def) throw new EncodeError(`unknown frame type ${frame.type}`);
  if (def.fields.length === 0) return def.name;
  const parts = def.fields.map(([name, t]) => {
    const v = frame[name];
    /** @type {string} */
    let shown;
    if (typeof t === "object") shown = debugStr(v);
    else if (t === REST) shown = debugBytes(bytesOf(v));
    else if (t === STATUS || t === UP_STATUS) shown = describeStatus(v);
    else if (name === "code" || name === "reason") shown = closeCodeName(v);
    else shown = String(v);
    return `${name}: ${shown}`;
  });
  return `${def.name} { ${parts.join(", ")} }`;
}
