// The client against the real server's WebSocket listener (tests/tests/web.rs starts it and
// sets the environment; without it these tests are skipped).

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { TetherClient, encode, Decoder } from "../tether.js";
import { until } from "../test-support/fake.js";
import { api, clientToken, server, skipLive, upstreamBackend } from "../test-support/live.js";

const s = /** @type {NonNullable<typeof server>} */ (server);

/** Every client made here, closed when the file's tests end (a failed test leaves none running). */
const clients = new Set();
after(() => {
  for (const c of clients) c.close();
});

/** A TetherClient for `user` on the live server, with a short heartbeat. */
function liveClient(/** @type {string} */ user, over = {}) {
  /** @type {any[]} */
  const pushes = [];
  /** @type {Array<[string, any]>} */
  const states = [];
  const c = new TetherClient({
    url: s.wsUrl,
    user,
    device: "browser",
    token: clientToken(user, "browser"),
    WebSocket,
    heartbeatMs: 300,
    pongTimeoutMs: 5_000,
    window: null,
    document: null,
    onPush: (p) => void pushes.push(p),
    onState: (st, d) => states.push([st, d]),
    ...over,
  });
  clients.add(c);
  return { c, pushes, states };
}

/** A raw WebSocket logged in as `user`; resolves with it and its frame reader. */
async function rawLogin(/** @type {string} */ user) {
  const ws = new WebSocket(s.wsUrl, ["tether"]);
  ws.binaryType = "arraybuffer";
  const decoder = new Decoder({ version: 2 });
  /** @type {any[]} */
  const frames = [];
  /** @type {{code: number | null}} */
  const closed = { code: null };
  ws.on("message", (/** @type {ArrayBuffer} */ d) => {
    decoder.push(new Uint8Array(d));
    for (let f; (f = decoder.next()); ) frames.push(f);
  });
  ws.on("close", (/** @type {number} */ code) => (closed.code = code));
  await new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("error", rej);
  });
  assert.equal(ws.protocol, "tether", "the server selects the subprotocol");
  ws.send(encode({ type: "Login", version: 2, flags: 0, user, device: "raw", token: clientToken(user, "raw"), heartbeat_ms: 30_000, network_key: "" }));
  await until(() => frames.find((f) => f.type === "LoginOk"), "LoginOk", 10_000);
  return { ws, frames, closed };
}

test("logs in over WebSocket, keeps the connection with its heartbeat", { skip: skipLive }, async () => {
  const { c } = liveClient("web-live-hb");
  c.start();
  await until(() => c.state === "online", "online", 10_000);
  assert.equal(c.loginOk.max_frame > 0, true);
  // The test server's min_lease_ms is 100: the 300 ms lease is kept, and every Ping gets a Pong.
  assert.equal(c.leaseMs, 300);
  await until(() => c.stats.pongs >= 5, "five pongs", 10_000);
  assert.ok(c.stats.lastPongDeadlineMs >= 300, `deadline ${c.stats.lastPongDeadlineMs}`);
  assert.equal(c.stats.logins, 1, "no reconnect");
  c.close();
});

test("a push sent through the HTTP API arrives and its ack reaches the API", { skip: skipLive }, async () => {
  const user = "web-live-push";
  const { c, pushes } = liveClient(user);
  c.start();
  await until(() => c.state === "online", "online", 10_000);
  const r = await api("/api/push", { user, payload: "hello browser", want_ack: true, ack_timeout_ms: 5_000 });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body.results[0], { user, outcome: "acked", devices: 1 });
  assert.equal(pushes.length, 1);
  assert.equal(pushes[0].text(), "hello browser");
  // A binary payload, and a large one that spans many WebSocket reads.
  await api("/api/push", { user, payload_b64: "AP8Q" });
  const big = "x".repeat(60_000);
  await api("/api/push", { user, payload: big });
  await until(() => pushes.length === 3, "three pushes", 10_000);
  assert.deepEqual([...pushes[1].payload], [0x00, 0xff, 0x10]);
  assert.equal(pushes[2].text(), big);
  c.close();
});

test("an upstream message reaches a backend and its answer comes back as the one result", { skip: skipLive }, async () => {
  const user = "web-live-up";
  const backend = await upstreamBackend("chat", (d) => ({ accepted: true, reply: `seq=${d.client_id}` }));
  try {
    const { c } = liveClient(user);
    c.start();
    await until(() => c.state === "online", "online", 10_000);
    // The other shard hears of the backend at its next tick.
    for (let i = 0; ; i++) {
      const r = await c.upstream("hello backend", { clientId: 100 + i });
      if (r.accepted) {
        assert.equal(r.text(), `seq=${100 + i}`);
        break;
      }
      assert.equal(r.reasonName, "NoBackend");
      assert.ok(i < 50, "the backend never got a message");
      await new Promise((res) => setTimeout(res, 100));
    }
    const d = backend.delivered.at(-1);
    assert.equal(d.user, user);
    assert.equal(d.device, "browser");
    assert.equal(new TextDecoder().decode(d.payload), "hello backend");
    c.close();
  } finally {
    backend.close();
  }
});

test("a kick through the API stops the client: Kicked, WebSocket close 4509", { skip: skipLive }, async () => {
  const user = "web-live-kick";
  const { c, states } = liveClient(user);
  c.start();
  await until(() => c.state === "online", "online", 10_000);
  const raw = await rawLogin(user);
  const r = await api("/api/kick", { user });
  assert.equal(r.body.kicked, 2, JSON.stringify(r.body));
  await until(() => c.state === "stopped", "stopped", 10_000);
  assert.equal(states.at(-1)[1].code, 2009);
  await until(() => raw.closed.code !== null, "raw socket closed", 10_000);
  const kick = raw.frames.find((f) => f.type === "Kick");
  assert.deepEqual({ ...kick }, { type: "Kick", reason: 2009, may_reconnect: false, jitter_ms: 0 }, "the tether frame arrives before the close");
  assert.equal(raw.closed.code, 4509);
});

test("a newer login of the same device replaces the client, which does not fight back", { skip: skipLive }, async () => {
  const user = "web-live-replaced";
  const first = liveClient(user);
  first.c.start();
  await until(() => first.c.state === "online", "online", 10_000);
  const second = liveClient(user);
  second.c.start();
  await until(() => first.c.state === "stopped", "the first stopped", 10_000);
  assert.equal(first.states.at(-1)[1].code, 2008);
  await new Promise((res) => setTimeout(res, 500));
  assert.equal(second.c.state, "online");
  assert.equal(first.c.stats.connects, 1);
  second.c.close();
});

test("a text message is refused with WebSocket close 1003", { skip: skipLive }, async () => {
  const raw = await rawLogin("web-live-text");
  raw.ws.send("hello as text");
  await until(() => raw.closed.code !== null, "closed", 10_000);
  assert.equal(raw.closed.code, 1003);
});

test("a page of an origin not on the list is refused with 403", { skip: skipLive || !s.pagePort }, async () => {
  const ws = new WebSocket(s.wsUrl, ["tether"], { origin: "http://not-listed.example" });
  const status = await new Promise((res) => {
    ws.on("unexpected-response", (_req, resp) => res(resp.statusCode));
    ws.on("open", () => res("open"));
    ws.on("error", () => {});
  });
  assert.equal(status, 403);
  const ok = new WebSocket(s.wsUrl, ["tether"], { origin: `http://127.0.0.1:${s.pagePort}` });
  await new Promise((res, rej) => {
    ok.once("open", res);
    ok.once("error", rej);
  });
  ok.close();
});

test("a wrong path is answered 404", { skip: skipLive }, async () => {
  const ws = new WebSocket(s.wsUrl.replace(/\/tether$/, "/elsewhere"), ["tether"]);
  const status = await new Promise((res) => {
    ws.on("unexpected-response", (_req, resp) => res(resp.statusCode));
    ws.on("open", () => res("open"));
    ws.on("error", () => {});
  });
  assert.equal(status, 404);
});

test("a wrong token: the Close frame, then WebSocket close 4505, and the client stops", { skip: skipLive }, async () => {
  const { c, states } = liveClient("web-live-badtoken", { token: clientToken("someone-else", "browser") });
  c.start();
  await until(() => c.state === "stopped", "stopped", 10_000);
  assert.equal(states.at(-1)[1].code, 2005);
  assert.equal(c.stats.connects, 1, "no second attempt with the same token");

  const ws = new WebSocket(s.wsUrl, ["tether"]);
  ws.binaryType = "arraybuffer";
  const decoder = new Decoder({ version: 2 });
  /** @type {any[]} */
  const frames = [];
  ws.on("message", (/** @type {ArrayBuffer} */ d) => {
    decoder.push(new Uint8Array(d));
    for (let f; (f = decoder.next()); ) frames.push(f);
  });
  await new Promise((res) => ws.once("open", res));
  ws.send(encode({ type: "Login", version: 2, flags: 0, user: "web-live-badtoken", device: "raw", token: "c1.nonsense", heartbeat_ms: 30_000, network_key: "" }));
  const code = await new Promise((res) => ws.once("close", res));
  assert.equal(code, 4505);
  assert.deepEqual(frames.map((f) => [f.type, f.code]), [["Close", 2005]]);
});

test("silence past the lease: Close IdleTimeout, then WebSocket close 4002", { skip: skipLive }, async () => {
  const ws = new WebSocket(s.wsUrl, ["tether"]);
  ws.binaryType = "arraybuffer";
  const decoder = new Decoder({ version: 2 });
  /** @type {any[]} */
  const frames = [];
  ws.on("message", (/** @type {ArrayBuffer} */ d) => {
    decoder.push(new Uint8Array(d));
    for (let f; (f = decoder.next()); ) frames.push(f);
  });
  await new Promise((res) => ws.once("open", res));
  const user = "web-live-idle";
  // A 100 ms lease: the server's idle deadline is lease × 1.5 + grace.
  ws.send(encode({ type: "Login", version: 2, flags: 0, user, device: "raw", token: clientToken(user, "raw"), heartbeat_ms: 100, network_key: "" }));
  const code = await new Promise((res) => ws.once("close", res));
  assert.equal(code, 4002);
  assert.deepEqual(frames.map((f) => f.type), ["LoginOk", "Close"]);
  assert.equal(frames[1].code, 1002);
});

test("a client that offers no subprotocol is served too", { skip: skipLive }, async () => {
  const user = "web-live-noproto";
  const ws = new WebSocket(s.wsUrl);
  ws.binaryType = "arraybuffer";
  const got = new Promise((res) => ws.once("message", (/** @type {ArrayBuffer} */ d) => res(new Uint8Array(d))));
  await new Promise((res) => ws.once("open", res));
  assert.equal(ws.protocol, "");
  ws.send(encode({ type: "Login", version: 2, flags: 0, user, device: "raw", token: clientToken(user, "raw"), heartbeat_ms: 30_000, network_key: "" }));
  const first = /** @type {Uint8Array} */ (await got);
  assert.equal(first[0], 0x02, "LoginOk");
  ws.close(1000);
});

// RFC 6455 §5.5.1: an endpoint that receives a Close answers with one. Without the answer a
// page's close event says 1006 (wasClean false) for a close the page itself asked for; the
// client does not depend on it (it has moved on by then).
test(
  "the server answers a page's WebSocket Close with its own",
  { skip: skipLive },
  async () => {
    const raw = await rawLogin("web-live-close-echo");
    raw.ws.close(1000);
    await until(() => raw.closed.code !== null, "closed", 10_000);
    assert.equal(raw.closed.code, 1000, "1006 means no Close came back");
  },
);

test("a drain: GoAway, the client moves at its moment in the window, not before", { skip: skipLive || !s.drainWsUrl }, async () => {
  /** @type {Array<[string, any, number]>} */
  const events = [];
  const { c } = liveClient("web-live-drain", {
    url: s.drainWsUrl,
    heartbeatMs: 30_000,
    random: () => 0.5,
    onState: (/** @type {string} */ st, /** @type {any} */ d) => events.push([st, d, Date.now()]),
  });
  c.start();
  await until(() => c.state === "online", "online", 10_000);
  const r = await api("/api/drain", {}, s.drainApi);
  assert.deepEqual(r.body, { draining: true });
  const goAway = await until(() => events.find(([st]) => st === "go_away"), "GoAway", 10_000);
  assert.deepEqual(goAway[1], { reason: 1001, windowMs: 3_000 });
  // random() = 0.5: the client leaves 1.5 s into the 3 s window.
  const moved = await until(() => c.stats.connects >= 2 && events.find(([st, d]) => st === "waiting" && d.why === "go_away"), "the move", 10_000);
  const after = moved[2] - goAway[2];
  assert.ok(after >= 1_400 && after < 3_000, `moved ${after} ms after the GoAway`);
  c.close();
});
