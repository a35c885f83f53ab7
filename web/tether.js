// tether for browsers (and Node ≥ 20): a client of the gateway over WebSocket.
//
// The WebSocket carries exactly the tether byte stream of docs/protocol.md in binary messages;
// `codec.js` turns it into frames. `TetherClient` keeps one connection alive: it logs in
// (protocol version 2), sends a Ping per lease, reconnects with decorrelated jitter when the
// connection ends in the reconnect range, obeys GoAway and Kick windows, stops for good on a
// 2xxx code, hands pushes and messages to the app with their ack, carries upstream messages with
// one Promise each, and refreshes its token when the server gives notice.
//
// Inputs are the socket's events, the timers, and the page's: `setOnline(bool)` (the `online` /
// `offline` events) and `setVisible(bool)` (`visibilitychange`); the client listens for those
// itself when it runs in a page. Time and randomness come from options, so tests run it on a
// virtual clock.

import {
  CloseCode,
  Decoder,
  DecodeError,
  DEFAULT_MAX_FRAME,
  HEARTBEAT_MS_MAX,
  PROTOCOL_V1,
  PROTOCOL_V2,
  closeCodeName,
  encode,
  mayReconnect,
  refuseReasonName,
} from "./codec.js";

export * from "./codec.js";

/** The WebSocket subprotocol name a tether server selects. */
export const SUBPROTOCOL = "tether";

/**
 * The tether close code a WebSocket close code stands for: 4000–4499 carry 1000–1499 and
 * 4500–4999 carry 2000–2499; other codes have no tether meaning (null).
 * @param {number} wsCode
 */
export function tetherCodeOfWsClose(wsCode) {
  if (wsCode >= 4000 && wsCode <= 4499) return 1000 + (wsCode - 4000);
  if (wsCode >= 4500 && wsCode <= 4999) return 2000 + (wsCode - 4500);
  return null;
}

/** A failure the client reports: `code` says which, `closeCode` the tether code when there is one. */
export class TetherError extends Error {
  /**
   * @param {string} code one of "stopped", "queue_full", "too_large", "unsupported",
   *   "bad_argument", "connection_lost"
   * @param {string} message
   * @param {number} [closeCode]
   */
  constructor(code, message, closeCode) {
    super(message);
    this.name = "TetherError";
    this.code = code;
    this.closeCode = closeCode;
  }
}

/**
 * @typedef {object} Timers
 * @property {() => number} now milliseconds, monotonic
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(handle: any) => void} clearTimeout
 */

/** @type {Timers} */
const realTimers = {
  now: () => (globalThis.performance ? performance.now() : Date.now()),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h),
};

/**
 * @typedef {object} Push
 * @property {bigint} id the server's id of this push
 * @property {Uint8Array} payload the application's bytes
 * @property {() => string} text the payload as UTF-8
 * @property {() => void} ack acknowledges it (once; a no-op after the connection it came on ended)
 * @property {string} [from_user] a client message's sender (`Message` frames only)
 * @property {string} [from_device] its device
 */

/**
 * @typedef {object} UpstreamResult
 * @property {bigint} clientId the message's `client_id`
 * @property {boolean} accepted the backend took it
 * @property {number | null} reason the refuse reason when not accepted
 * @property {string | null} reasonName its name (`Rejected`, `NoBackend`, `TimedOut`, ...)
 * @property {Uint8Array} reply the backend's reply
 * @property {() => string} text the reply as UTF-8
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} url the server's WebSocket URL, e.g. `wss://push.example.com/tether`
 * @property {string} user the user id (the token names it too)
 * @property {string} [device] which of the user's devices ("" by default)
 * @property {string} token the client token (never put it in the URL)
 * @property {() => (string | Promise<string>)} [getToken] a new token: called on a TokenNotice,
 *   and once after an AuthFailed/TokenExpired close (a new token is the change a reconnect needs)
 * @property {any} [WebSocket] the WebSocket constructor (default `globalThis.WebSocket`)
 * @property {number} [heartbeatMs] lease while the page is visible (25 s), clamped to the server's bounds
 * @property {number} [hiddenHeartbeatMs] lease while hidden (120 s): background tabs' timers are throttled
 * @property {number} [pongTimeoutMs] a Ping unanswered this long means the path is dead (10 s)
 * @property {number} [connectTimeoutMs] from opening the socket to LoginOk (15 s)
 * @property {number} [backoffBaseMs] smallest reconnect delay (1 s)
 * @property {number} [backoffCapMs] largest reconnect delay (60 s)
 * @property {number} [maxQueued] upstream messages held while not connected (100)
 * @property {number} [maxInFlight] upstream messages sent and awaiting results (32; the server allows 64)
 * @property {boolean} [autoAck] ack each push once its handler returns (or its promise resolves) (true)
 * @property {(push: Push) => (void | Promise<void>)} [onPush] a backend's push
 * @property {(msg: Push) => (void | Promise<void>)} [onMessage] another client's message (version 2)
 * @property {(state: string, detail: object) => void} [onState] every state change
 * @property {(err: Error) => void} [onError] problems that are not any call's result
 * @property {Timers} [timers] the clock (tests pass a virtual one)
 * @property {() => number} [random] uniform in [0, 1)
 * @property {any} [window] where `online`/`offline` come from (`globalThis.window`; null: none)
 * @property {any} [document] where `visibilitychange` comes from (`globalThis.document`; null: none)
 */

/**
 * One tether connection, kept alive.
 *
 * States: `idle` (not started), `connecting` (socket opening, Login sent), `online` (LoginOk
 * received), `waiting` (a reconnect is scheduled), `offline` (the page is offline: nothing is
 * tried until it is back), `stopped` (by `close()` or a code that forbids reconnecting).
 */
export class TetherClient {
  /** @param {ClientOptions} opts */
  constructor(opts) {
    if (!opts || typeof opts.url !== "string") throw new TetherError("bad_argument", "url is required");
    if (typeof opts.user !== "string" || opts.user === "") throw new TetherError("bad_argument", "user is required");
    if (typeof opts.token !== "string") throw new TetherError("bad_argument", "token is required");
    /** The options, with defaults. */
    this.opts = {
      device: "",
      heartbeatMs: 25_000,
      hiddenHeartbeatMs: 120_000,
      pongTimeoutMs: 10_000,
      connectTimeoutMs: 15_000,
      backoffBaseMs: 1_000,
      backoffCapMs: 60_000,
      maxQueued: 100,
      maxInFlight: 32,
      autoAck: true,
      ...opts,
    };
    /** The WebSocket constructor. */
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WS !== "function") {
      throw new TetherError("bad_argument", "no WebSocket: pass one as the WebSocket option");
    }
    /** @type {Timers} */
    this.timers = opts.timers ?? realTimers;
    this.random = opts.random ?? Math.random;
    /** The token the next login uses (a Refresh replaces it). */
    this.token = opts.token;
    /** The protocol version to log in with; falls back to 1 once on UnsupportedVersion. */
    this.version = PROTOCOL_V2;
    /** Whether a login with `version` ever succeeded (then no fallback). */
    this.versionConfirmed = false;
    /** @type {string} */
    this.state = "idle";
    /** Whether the page is online and visible, as last told. */
    this.online = true;
    this.visible = true;
    /** The current connection, or null. */
    this.conn = null;
    /** Connection attempts so far (an older connection is told apart by identity: `this.conn === c`). */
    this.gen = 0;
    /** The last LoginOk. */
    this.loginOk = null;
    /** Previous reconnect delay (decorrelated jitter). */
    this.prevDelay = this.opts.backoffBaseMs;
    /** Earliest moment to reconnect, from a GoAway or Kick window (timers.now() units). */
    this.notBefore = 0;
    /** The scheduled reconnect. */
    this.retryTimer = null;
    /** Upstream messages not yet sent: `{ clientId, payload, resolve, reject }`. */
    this.queue = [];
    /** Upstream messages sent on the current connection, by client_id (as a string). */
    this.inFlight = new Map();
    /** Counters for the app's status display and for tests. */
    this.stats = { connects: 0, logins: 0, pings: 0, pongs: 0, pushes: 0, lastPongDeadlineMs: 0 };
    /** Whether getToken was tried since the last successful login. */
    this.triedNewToken = false;
    this.detach = this.attachPage(opts);
  }

  // ------------------------------------------------------------------ the app's calls

  /** Starts connecting (no-op when already started). */
  start() {
    if (this.state !== "idle") return;
    if (!this.online) this.setState("offline", {});
    else this.connect();
  }

  /**
   * Stops for good: closes the connection (with a tether `Close { Normal }`), rejects what
   * waits, removes the page listeners.
   */
  close() {
    this.stop(new TetherError("stopped", "the client was closed"), { code: CloseCode.Normal, reason: "closed by the app" });
  }

  /**
   * Sends an upstream message to the app's backend (protocol version 2); resolves with its one
   * result. While not connected it waits in a bounded queue; a message whose result was lost with
   * its connection is sent again, with the same `client_id`, on the next one.
   * @param {Uint8Array | string} payload
   * @param {{ clientId?: bigint | number }} [opts]
   * @returns {Promise<UpstreamResult>}
   */
  upstream(payload, opts = {}) {
    try {
      if (this.state === "stopped") throw new TetherError("stopped", "the client is stopped");
      if (this.versionConfirmed && this.version < PROTOCOL_V2) {
        throw new TetherError("unsupported", "the server speaks protocol version 1: no upstream messages");
      }
      const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
      if (!(bytes instanceof Uint8Array)) throw new TetherError("bad_argument", "payload is a Uint8Array or a string");
      const max = this.loginOk?.max_frame ?? DEFAULT_MAX_FRAME;
      // client_id (at most 10 bytes) and flags leave the rest of the body for the payload.
      if (bytes.length + 11 > max) throw new TetherError("too_large", `payload of ${bytes.length} bytes exceeds the frame limit ${max}`);
      if (this.queue.length >= this.opts.maxQueued) {
        throw new TetherError("queue_full", `${this.queue.length} upstream messages already wait`);
      }
      const clientId = opts.clientId !== undefined ? BigInt(opts.clientId) : randomU64(this.random);
      return new Promise((resolve, reject) => {
        this.queue.push({ clientId, payload: bytes, resolve, reject });
        this.flushUpstream();
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The page went online (true) or offline (false). Offline: close and wait; online: connect now. */
  setOnline(online) {
    if (online === this.online) return;
    this.online = online;
    if (this.state === "stopped" || this.state === "idle") return;
    if (!online) {
      this.dropConnection({ code: CloseCode.Normal, reason: "offline" });
      this.cancelRetry();
      this.setState("offline", {});
    } else {
      this.prevDelay = this.opts.backoffBaseMs;
      this.scheduleConnect(0, "online");
    }
  }

  /** The page became visible (true) or hidden (false). Hidden keeps the connection with a longer lease. */
  setVisible(visible) {
    if (visible === this.visible) return;
    this.visible = visible;
    const c = this.conn;
    if (c && c.loggedIn) {
      // Tell the server the new lease at once; the next Ping follows it.
      this.sendPing(c);
    }
  }

  /** The lease the client uses now, within the server's bounds once logged in. */
  get leaseMs() {
    const want = this.visible ? this.opts.heartbeatMs : this.opts.hiddenHeartbeatMs;
    const ok = this.loginOk;
    const lo = ok ? ok.min_lease_ms : 1;
    const hi = ok ? Math.min(ok.max_lease_ms, HEARTBEAT_MS_MAX) : HEARTBEAT_MS_MAX;
    return Math.max(lo, Math.min(hi, want));
  }

  // ------------------------------------------------------------------ the connection

  connect() {
    this.cancelRetry();
    const gen = ++this.gen;
    this.stats.connects++;
    let ws;
    try {
      ws = new this.WS(this.opts.url, [SUBPROTOCOL]);
    } catch (e) {
      // A bad URL is the app's mistake: no retry makes it right.
      this.stop(new TetherError("bad_argument", `cannot open ${this.opts.url}: ${/** @type {Error} */ (e).message}`), null);
      return;
    }
    ws.binaryType = "arraybuffer";
    const c = {
      gen,
      ws,
      decoder: new Decoder({ version: this.version }),
      loggedIn: false,
      /** The tether code the connection ended with, once a Close/Kick arrived or we sent one. */
      ended: /** @type {null | {code: number, mayReconnect: boolean, jitterMs: number, text: string}} */ (null),
      pingTimer: null,
      pongTimer: null,
      awaitingPong: false,
      connectTimer: null,
      goAwayTimer: null,
      /** Whether a GoAway said not to reconnect. */
      noReconnect: false,
    };
    this.conn = c;
    this.setState("connecting", { attempt: gen });
    c.connectTimer = this.timers.setTimeout(() => {
      if (this.conn === c && !c.loggedIn) this.lose(c, "no LoginOk in time");
    }, this.opts.connectTimeoutMs);
    ws.onopen = () => {
      if (this.conn !== c) return;
      this.write(c, {
        type: "Login",
        version: this.version,
        flags: 0,
        user: this.opts.user,
        device: this.opts.device,
        token: this.token,
        heartbeat_ms: this.leaseMs,
        network_key: "",
      });
    };
    ws.onmessage = (/** @type {{data: any}} */ ev) => {
      if (this.conn !== c) return;
      if (typeof ev.data === "string") {
        // The server sends binary messages only.
        this.fail(c, CloseCode.ProtocolError, "text message from the server");
        return;
      }
      c.decoder.push(new Uint8Array(ev.data));
      try {
        for (let f; this.conn === c && (f = c.decoder.next()); ) this.handleFrame(c, f);
      } catch (e) {
        if (e instanceof DecodeError) {
          this.fail(c, e.closeCode, e.message);
        } else {
          // A fault of this client: told, and the connection starts over rather than limp on.
          this.report(e);
          this.lose(c, `internal error: ${/** @type {Error} */ (e).message}`);
        }
      }
    };
    ws.onerror = () => {
      // The close event follows with what is known.
    };
    ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => {
      if (this.conn !== c) return;
      this.closed(c, ev.code, ev.reason);
    };
  }

  /** @param {any} c @param {import("./codec.js").Frame} frame */
  write(c, frame) {
    if (c.ws.readyState !== 1) return false;
    c.ws.send(encode(frame));
    return true;
  }

  /** @param {any} c @param {import("./codec.js").Frame} f */
  handleFrame(c, f) {
    if (!c.loggedIn) {
      // Before LoginOk the server sends only a back-off GoAway or the Close of a failed login.
      if (f.type === "LoginOk") return this.loggedIn(c, f);
      if (f.type !== "GoAway" && f.type !== "Close") {
        return this.fail(c, CloseCode.ProtocolError, `${f.type} before LoginOk`);
      }
    }
    switch (f.type) {
      case "Pong":
        this.stats.pongs++;
        this.stats.lastPongDeadlineMs = f.deadline_ms;
        c.awaitingPong = false;
        if (c.pongTimer) this.timers.clearTimeout(c.pongTimer);
        c.pongTimer = null;
        return;
      case "Push":
      case "Message":
        return this.deliver(c, f);
      case "UpstreamResult": {
        const key = String(f.client_id);
        const m = this.inFlight.get(key);
        if (!m) return; // a result we no longer wait for (answered on an earlier connection)
        this.inFlight.delete(key);
        const accepted = f.status.kind === "Accepted";
        const reason = accepted ? null : f.status.reason;
        m.resolve({
          clientId: f.client_id,
          accepted,
          reason,
          reasonName: reason === null ? null : refuseReasonName(reason),
          reply: f.reply,
          text: () => new TextDecoder().decode(f.reply),
        });
        this.flushUpstream();
        return;
      }
      case "TokenNotice":
        return void this.refreshToken(c, f.expires_in_ms);
      case "Refreshed":
        if (c.pendingToken) this.token = c.pendingToken;
        c.pendingToken = null;
        this.emit("token_refreshed", {});
        return;
      case "GoAway":
        return this.goAway(c, f);
      case "Kick":
        c.ended = { code: f.reason, mayReconnect: f.may_reconnect, jitterMs: f.jitter_ms, text: "" };
        return this.finish(c);
      case "Close":
        c.ended = { code: f.code, mayReconnect: mayReconnect(f.code), jitterMs: 0, text: f.text };
        return this.finish(c);
      case "Ignored":
        return;
      default:
        // LoginOk again, SendResult without a Send, or a backend's frame: not for a client.
        return this.fail(c, CloseCode.ProtocolError, `unexpected ${f.type}`);
    }
  }

  /** @param {any} c @param {any} ok */
  loggedIn(c, ok) {
    c.loggedIn = true;
    this.stats.logins++;
    this.loginOk = ok;
    this.versionConfirmed = true;
    this.triedNewToken = false;
    this.prevDelay = this.opts.backoffBaseMs;
    this.timers.clearTimeout(c.connectTimer);
    c.decoder.max = Math.max(ok.max_frame, 1);
    this.setState("online", { sessionId: ok.session_id, serverEpoch: ok.server_epoch, version: this.version });
    this.schedulePing(c);
    // Messages whose results were lost with the previous connection go first, same client_id.
    this.flushUpstream();
  }

  /** @param {any} c */
  schedulePing(c) {
    if (c.pingTimer) this.timers.clearTimeout(c.pingTimer);
    c.pingTimer = this.timers.setTimeout(() => {
      c.pingTimer = null;
      if (this.conn === c) this.sendPing(c);
    }, this.leaseMs);
  }

  /** @param {any} c */
  sendPing(c) {
    if (this.write(c, { type: "Ping", lease_ms: this.leaseMs })) this.stats.pings++;
    if (!c.awaitingPong) {
      c.awaitingPong = true;
      c.pongTimer = this.timers.setTimeout(() => {
        c.pongTimer = null;
        if (this.conn === c && c.awaitingPong) this.lose(c, "no Pong: the path is dead");
      }, this.opts.pongTimeoutMs);
    }
    this.schedulePing(c);
  }

  /** @param {any} c @param {any} f */
  deliver(c, f) {
    this.stats.pushes++;
    let acked = false;
    const ack = () => {
      // An ack is valid only on the connection the push came on.
      if (acked || this.conn !== c || !c.loggedIn) return;
      acked = true;
      this.write(c, { type: "PushAck", id: f.id });
    };
    /** @type {Push} */
    const push = { id: f.id, payload: f.payload, text: () => new TextDecoder().decode(f.payload), ack };
    if (f.type === "Message") {
      push.from_user = f.from_user;
      push.from_device = f.from_device;
    }
    const handler = f.type === "Push" ? this.opts.onPush : this.opts.onMessage;
    if (!handler) {
      if (this.opts.autoAck) ack();
      return;
    }
    let r;
    try {
      r = handler(push);
    } catch (e) {
      this.report(e);
      return;
    }
    if (r && typeof r.then === "function") {
      r.then(
        () => this.opts.autoAck && ack(),
        (/** @type {any} */ e) => this.report(e),
      );
    } else if (this.opts.autoAck) {
      ack();
    }
  }

  /** @param {any} c @param {number} expiresInMs */
  async refreshToken(c, expiresInMs) {
    this.emit("token_notice", { expiresInMs });
    if (!this.opts.getToken) return;
    try {
      const token = await this.opts.getToken();
      if (this.conn !== c) return;
      c.pendingToken = token;
      this.write(c, { type: "Refresh", token });
    } catch (e) {
      this.report(new Error(`getToken failed: ${/** @type {Error} */ (e).message}`));
    }
  }

  /** @param {any} c @param {any} f */
  goAway(c, f) {
    if (!f.may_reconnect) {
      c.noReconnect = true;
      return;
    }
    // Reconnect at a uniformly random moment within the window, not before; the connection
    // stays usable until then (or until the server closes it).
    const delay = Math.floor(this.random() * f.window_ms);
    this.notBefore = Math.max(this.notBefore, this.timers.now() + delay);
    this.emit("go_away", { reason: f.reason, windowMs: f.window_ms });
    if (c.loggedIn) {
      c.goAwayTimer = this.timers.setTimeout(() => {
        if (this.conn !== c) return;
        this.dropConnection({ code: CloseCode.Normal, reason: "moving before the drain ends" });
        this.scheduleConnect(0, "go_away");
      }, delay);
    }
  }

  /** A Close or Kick arrived: nothing follows it. @param {any} c */
  finish(c) {
    try {
      c.ws.close(1000);
    } catch {
      // already closing
    }
    this.after(c);
  }

  /** We end the connection with a tether code (a decode error, a frame out of place). @param {any} c @param {number} code @param {string} text */
  fail(c, code, text) {
    this.write(c, { type: "Close", code, text: text.slice(0, 200) });
    // Our own protocol complaint: the server (or a proxy) is broken, not this client's
    // credentials; retry with backoff rather than stopping.
    c.ended = { code, mayReconnect: true, jitterMs: 0, text };
    this.report(new TetherError("connection_lost", `closed the connection: ${closeCodeName(code)}: ${text}`, code));
    this.finish(c);
  }

  /** The connection is gone without a tether code (timeouts). @param {any} c @param {string} why */
  lose(c, why) {
    this.emit("lost", { why });
    try {
      c.ws.close(1000);
    } catch {
      // already closing
    }
    this.after(c);
  }

  /** The WebSocket closed. @param {any} c @param {number} wsCode @param {string} reason */
  closed(c, wsCode, reason) {
    if (!c.ended) {
      const code = tetherCodeOfWsClose(wsCode);
      if (code !== null) {
        c.ended = { code, mayReconnect: mayReconnect(code), jitterMs: 0, text: reason };
      } else if (wsCode === 1002 || wsCode === 1003 || wsCode === 1007 || wsCode === 1009) {
        // The server refused what it got (a text message, a broken frame): this client is wrong.
        c.ended = { code: CloseCode.ProtocolError, mayReconnect: false, jitterMs: 0, text: `WebSocket close ${wsCode} ${reason}` };
      }
    }
    this.after(c);
  }

  /** Tears the connection down and decides what comes next. @param {any} c */
  after(c) {
    if (this.conn !== c) return;
    this.conn = null;
    for (const t of [c.pingTimer, c.pongTimer, c.connectTimer, c.goAwayTimer]) {
      if (t) this.timers.clearTimeout(t);
    }
    c.ws.onmessage = c.ws.onopen = c.ws.onclose = null;
    c.ws.onerror = () => {};
    // Messages sent on it whose results did not come go back to the front of the queue.
    const lost = [...this.inFlight.values()];
    this.inFlight.clear();
    this.queue.unshift(...lost);
    if (this.state === "stopped" || this.state === "offline") return;
    const end = c.ended;
    const detail = end ? { code: end.code, name: closeCodeName(end.code), text: end.text } : {};
    if (end && end.code === CloseCode.UnsupportedVersion && !this.versionConfirmed && this.version > PROTOCOL_V1) {
      // An older server: log in once more with version 1 (no upstream messages there).
      this.version = PROTOCOL_V1;
      for (const m of this.queue.splice(0)) m.reject(new TetherError("unsupported", "the server speaks protocol version 1: no upstream messages"));
      this.scheduleConnect(0, "version_fallback");
      return;
    }
    if (end && (end.code === CloseCode.AuthFailed || end.code === CloseCode.TokenExpired) && this.opts.getToken && !this.triedNewToken) {
      // A new token is the change that makes reconnecting worth it.
      this.triedNewToken = true;
      this.setState("waiting", { ...detail, delayMs: 0, why: "new_token" });
      Promise.resolve()
        .then(() => /** @type {() => any} */ (this.opts.getToken)())
        .then(
          (token) => {
            if (this.state !== "waiting" || this.conn) return;
            if (typeof token === "string" && token !== this.token) {
              this.token = token;
              this.scheduleConnect(0, "new_token");
            } else {
              this.stop(new TetherError("stopped", `stopped by the server: ${closeCodeName(end.code)}`, end.code), null);
            }
          },
          (e) => this.stop(new TetherError("stopped", `stopped by the server: ${closeCodeName(end.code)} (getToken failed: ${e?.message})`, end.code), null),
        );
      return;
    }
    if ((end && !end.mayReconnect) || c.noReconnect) {
      const code = end ? end.code : CloseCode.Normal;
      this.stop(new TetherError("stopped", `stopped by the server: ${closeCodeName(code)}${end?.text ? `: ${end.text}` : ""}`, code), null, detail);
      return;
    }
    // Reconnect range: decorrelated jitter, and never before a GoAway/Kick window allows.
    const base = this.opts.backoffBaseMs;
    const hi = Math.max(this.prevDelay * 3, base + 1);
    let delay = Math.min(base + Math.floor(this.random() * (hi - base)), this.opts.backoffCapMs);
    this.prevDelay = delay;
    if (end && end.jitterMs > 0) {
      this.notBefore = Math.max(this.notBefore, this.timers.now() + Math.floor(this.random() * end.jitterMs));
    }
    this.scheduleConnect(delay, "reconnect", detail);
  }

  /** Connects after `delayMs`, and not before `notBefore`. */
  scheduleConnect(/** @type {number} */ delayMs, /** @type {string} */ why, detail = {}) {
    this.cancelRetry();
    if (!this.online) {
      this.setState("offline", detail);
      return;
    }
    const wait = Math.max(delayMs, this.notBefore - this.timers.now(), 0);
    this.setState("waiting", { ...detail, delayMs: wait, why });
    if (wait === 0) {
      this.connect();
      return;
    }
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = null;
      if (this.state === "waiting" && this.online) this.connect();
    }, wait);
  }

  cancelRetry() {
    if (this.retryTimer) this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** Closes the current connection (with a tether Close when logged in), without deciding what next. */
  dropConnection(/** @type {{code: number, reason: string} | null} */ close) {
    const c = this.conn;
    if (!c) return;
    if (close && c.loggedIn) this.write(c, { type: "Close", code: close.code, text: close.reason });
    c.ended = { code: CloseCode.Normal, mayReconnect: true, jitterMs: 0, text: close?.reason ?? "" };
    const prev = this.state;
    // `after` must not schedule anything: the caller decides.
    this.state = "offline";
    try {
      c.ws.close(1000);
    } catch {
      // already closing
    }
    this.after(c);
    this.state = prev;
  }

  /** Stops for good. @param {TetherError} err @param {{code: number, reason: string} | null} close */
  stop(err, close, detail = {}) {
    if (this.state === "stopped") return;
    this.cancelRetry();
    this.dropConnection(close);
    this.setState("stopped", { ...detail, error: err });
    for (const m of this.queue.splice(0)) m.reject(err);
    for (const m of this.inFlight.values()) m.reject(err);
    this.inFlight.clear();
    this.detach();
  }

  /** Sends queued upstream messages while the connection has room. */
  flushUpstream() {
    const c = this.conn;
    if (!c || !c.loggedIn) return;
    if (this.version < PROTOCOL_V2) {
      for (const m of this.queue.splice(0)) m.reject(new TetherError("unsupported", "the server speaks protocol version 1: no upstream messages"));
      return;
    }
    while (this.queue.length > 0 && this.inFlight.size < this.opts.maxInFlight) {
      const m = /** @type {any} */ (this.queue.shift());
      if (m.payload.length + 11 > (this.loginOk?.max_frame ?? DEFAULT_MAX_FRAME)) {
        m.reject(new TetherError("too_large", `payload of ${m.payload.length} bytes exceeds the frame limit`));
        continue;
      }
      this.inFlight.set(String(m.clientId), m);
      this.write(c, { type: "Upstream", client_id: m.clientId, flags: 0, payload: m.payload });
    }
  }

  // ------------------------------------------------------------------ events

  /** @param {string} state @param {object} detail */
  setState(state, detail) {
    this.state = state;
    this.emit(state, detail);
  }

  /** @param {string} what @param {object} detail */
  emit(what, detail) {
    try {
      this.opts.onState?.(what, detail);
    } catch (e) {
      this.report(e);
    }
  }

  /** @param {any} e */
  report(e) {
    if (this.opts.onError) {
      try {
        this.opts.onError(e);
      } catch {
        // an error handler that throws has nobody left to tell
      }
    }
  }

  /** Listens to the page's online/offline and visibility events; returns the undo. @param {ClientOptions} opts */
  attachPage(opts) {
    const win = opts.window === undefined ? globalThis.window : opts.window;
    const doc = opts.document === undefined ? globalThis.document : opts.document;
    const undo = [];
    if (win && typeof win.addEventListener === "function") {
      const on = () => this.setOnline(true);
      const off = () => this.setOnline(false);
      win.addEventListener("online", on);
      win.addEventListener("offline", off);
      undo.push(() => {
        win.removeEventListener("online", on);
        win.removeEventListener("offline", off);
      });
      if (win.navigator && win.navigator.onLine === false) this.online = false;
    }
    if (doc && typeof doc.addEventListener === "function") {
      const vis = () => this.setVisible(doc.visibilityState !== "hidden");
      doc.addEventListener("visibilitychange", vis);
      undo.push(() => doc.removeEventListener("visibilitychange", vis));
      if (doc.visibilityState === "hidden") this.visible = false;
    }
    return () => {
      for (const u of undo.splice(0)) u();
    };
  }
}

/** A random u64 client_id: crypto's when there is one. @param {() => number} random */
function randomU64(random) {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    const w = c.getRandomValues(new Uint32Array(2));
    return (BigInt(w[0]) << 32n) | BigInt(w[1]);
  }
  return (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32));
}
