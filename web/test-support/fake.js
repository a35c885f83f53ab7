// A small fake tether server over WebSocket (the `ws` package, a devDependency) and a virtual
// clock, for testing the client's logic without the real server.

import { WebSocketServer } from "ws";
import { Decoder, encode } from "../codec.js";

/** Timers on a virtual clock: nothing fires until `advance`. */
export class VirtualTimers {
  constructor() {
    this.t = 0;
    this.seq = 0;
    /** @type {Map<number, {at: number, fn: () => void}>} */
    this.pending = new Map();
  }

  now() {
    return this.t;
  }

  setTimeout(/** @type {() => void} */ fn, /** @type {number} */ ms) {
    const id = ++this.seq;
    this.pending.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(/** @type {number} */ id) {
    this.pending.delete(id);
  }

  /** Runs every timer due within `ms`, in order, moving the clock to each. */
  advance(/** @type {number} */ ms) {
    const until = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, e] of this.pending) {
        if (e.at <= until && (!next || e.at < next[1].at || (e.at === next[1].at && id < next[0]))) next = [id, e];
      }
      if (!next) break;
      this.pending.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = until;
  }

  /** Moves the clock to the next timer and runs it (and any due with it). */
  fireNext() {
    const at = this.nextAt();
    if (at === null) throw new Error("no timer is pending");
    this.advance(at - this.t);
  }

  /** When the next timer fires, or null. */
  nextAt() {
    let at = null;
    for (const e of this.pending.values()) if (at === null || e.at < at) at = e.at;
    return at;
  }
}

/** Resolves after real `ms` (for I/O to happen). */
export const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

/** Waits (in real time) until `cond()` holds. */
export async function until(/** @type {() => any} */ cond, what = "a condition", ms = 3000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await tick(5);
  }
}

/** One client connection to the fake server. */
export class FakeConn {
  constructor(/** @type {any} */ ws, /** @type {any} */ req) {
    this.ws = ws;
    this.req = req;
    this.protocol = ws.protocol;
    this.decoder = new Decoder({ version: 2 });
    /** @type {any[]} */
    this.frames = [];
    this.closed = false;
    this.closeCode = null;
    ws.on("message", (/** @type {Buffer} */ data, /** @type {boolean} */ binary) => {
      if (!binary) throw new Error("the client sent a text message");
      this.decoder.push(new Uint8Array(data));
      for (let f; (f = this.decoder.next()); ) this.frames.push(f);
    });
    ws.on("close", (/** @type {number} */ code) => {
      this.closed = true;
      this.closeCode = code;
    });
  }

  /** The next frame the client sent (waits for it). */
  async next(what = "a frame") {
    await until(() => this.frames.length > 0, what);
    return this.frames.shift();
  }

  /** Sends frames (objects) or raw bytes, all in one WebSocket message. */
  send(/** @type {any[]} */ ...frames) {
    const parts = frames.map((f) => (f instanceof Uint8Array ? f : encode(f)));
    this.ws.send(Buffer.concat(parts));
  }

  /** Sends bytes one WebSocket message per byte. */
  sendBytewise(/** @type {Uint8Array} */ bytes) {
    for (const b of bytes) this.ws.send(Buffer.of(b));
  }

  /** Sends a tether Close and closes the WebSocket with the matching code. */
  closeWith(/** @type {number} */ code, text = "") {
    this.send({ type: "Close", code, text });
    this.ws.close(code >= 2000 ? 4500 + (code - 2000) : 4000 + (code - 1000));
  }

  /** Drops the socket without a goodbye. */
  drop() {
    this.ws.terminate();
  }
}

/** A WebSocket server on 127.0.0.1 that records each connection. */
export class FakeServer {
  static async start() {
    const s = new FakeServer();
    await new Promise((r) => s.wss.once("listening", r));
    return s;
  }

  constructor() {
    this.wss = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      path: "/tether",
      handleProtocols: (/** @type {Set<string>} */ p) => (p.has("tether") ? "tether" : false),
    });
    /** @type {FakeConn[]} */
    this.conns = [];
    this.closed = false;
    this.wss.on("connection", (/** @type {any} */ ws, /** @type {any} */ req) => this.conns.push(new FakeConn(ws, req)));
  }

  get url() {
    return `ws://127.0.0.1:${/** @type {any} */ (this.wss.address()).port}/tether`;
  }

  /** The `n`-th connection (0-based), once it is there. */
  async conn(n) {
    return until(() => this.conns[n], `connection ${n}`);
  }

  async close() {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.wss.clients) c.terminate();
    await new Promise((r) => this.wss.close(r));
  }
}

/** A LoginOk with the spec's example values unless overridden. */
export function loginOk(over = {}) {
  return {
    type: "LoginOk",
    session_id: 42n,
    server_epoch: 7n,
    min_lease_ms: 30000,
    max_lease_ms: 1680000,
    lease_multiplier_pct: 150,
    grace_ms: 10000,
    prior_ms: 0,
    max_frame: 65536,
    ...over,
  };
}
