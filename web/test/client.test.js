// The client's logic against a fake server, on a virtual clock.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { TetherClient, encode, TetherError } from "../tether.js";
import { FakeServer, VirtualTimers, loginOk, tick, until } from "../test-support/fake.js";

/** Servers and clients made here, closed when the file's tests end (a failed test leaves none running). */
const servers = new Set();
const clients = new Set();
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
});

/** A fake server, closed at the end at the latest. */
async function fakeServer() {
  const s = await FakeServer.start();
  servers.add(s);
  return s;
}

/** A client of `server` on a virtual clock; `random` fixed at 0.5 unless given. */
function client(/** @type {FakeServer} */ server, over = {}) {
  const timers = new VirtualTimers();
  /** @type {Array<[string, any]>} */
  const states = [];
  /** @type {any[]} */
  const pushes = [];
  /** @type {any[]} */
  const errors = [];
  const c = new TetherClient({
    url: server.url,
    user: "alice",
    device: "web",
    token: "t0k",
    WebSocket,
    timers,
    random: () => 0.5,
    window: null,
    document: null,
    onState: (s, d) => states.push([s, d]),
    onPush: (p) => void pushes.push(p),
    onError: (e) => errors.push(e),
    ...over,
  });
  clients.add(c);
  return { c, timers, states, pushes, errors };
}

/** Starts `t.c` and answers its login on connection `n`; returns the connection. */
async function login(/** @type {FakeServer} */ server, /** @type {any} */ t, n = 0, ok = loginOk()) {
  if (t.c.state === "idle") t.c.start();
  const conn = await server.conn(n);
  const f = await conn.next("Login");
  assert.equal(f.type, "Login");
  conn.send(ok);
  await until(() => t.c.state === "online", "online");
  return { conn, login: f };
}

test("logs in with version 2 and the tether subprotocol, then pings within the server's lease bounds", async () => {
  const server = await fakeServer();
  const t = client(server, { heartbeatMs: 25_000 });
  const { conn, login: l } = await login(server, t);
  assert.equal(conn.protocol, "tether");
  assert.deepEqual(
    { ...l },
    { type: "Login", version: 2, flags: 0, user: "alice", device: "web", token: "t0k", heartbeat_ms: 25_000, network_key: "" },
  );
  assert.ok(!conn.req.url.includes("t0k"), "no token in the URL");
  // 25 s is below the server's min_lease_ms (30 s): raised to it.
  assert.equal(t.c.leaseMs, 30_000);
  t.timers.advance(29_999);
  await tick();
  assert.equal(conn.frames.length, 0, "nothing before the lease");
  t.timers.advance(1);
  assert.deepEqual(await conn.next("Ping"), { type: "Ping", lease_ms: 30_000 });
  conn.send({ type: "Pong", deadline_ms: 55_000 });
  await tick();
  // Hidden: a longer lease, told at once.
  t.c.setVisible(false);
  assert.deepEqual(await conn.next("Ping"), { type: "Ping", lease_ms: 120_000 });
  conn.send({ type: "Pong", deadline_ms: 190_000 });
  await tick();
  t.timers.advance(119_999);
  await tick();
  assert.equal(conn.frames.length, 0);
  t.timers.advance(1);
  assert.deepEqual(await conn.next("Ping"), { type: "Ping", lease_ms: 120_000 });
  t.c.close();
  assert.equal(t.c.state, "stopped");
  await server.close();
});

test("reassembles frames split byte by byte, and several frames in one message; acks pushes", async () => {
  const server = await fakeServer();
  const t = client(server);
  t.c.start();
  const conn = await server.conn(0);
  await conn.next("Login");
  // LoginOk and two pushes, one WebSocket message per byte.
  const bytes = Buffer.concat([encode(loginOk()), encode({ type: "Push", id: 5n, payload: "hello" }), encode({ type: "Push", id: 6n, payload: new Uint8Array([0, 255]) })]);
  conn.sendBytewise(bytes);
  await until(() => t.pushes.length === 2, "two pushes");
  assert.equal(t.pushes[0].text(), "hello");
  assert.equal(t.pushes[0].id, 5n);
  assert.deepEqual([...t.pushes[1].payload], [0, 255]);
  // Auto-acked once the handler returned, each once.
  t.pushes[0].ack();
  assert.deepEqual(await conn.next(), { type: "PushAck", id: 5n });
  assert.deepEqual(await conn.next(), { type: "PushAck", id: 6n });
  await tick();
  assert.equal(conn.frames.length, 0, "one ack per push");
  // Two frames in one message.
  conn.send({ type: "Push", id: 7n, payload: "a" }, { type: "Push", id: 8n, payload: "b" });
  await until(() => t.pushes.length === 4, "two more pushes");
  t.c.close();
  await server.close();
});

test("a manual ack is sent when the app calls it, and never on a later connection", async () => {
  const server = await fakeServer();
  /** @type {any[]} */
  const held = [];
  const t = client(server, { autoAck: false, onPush: (/** @type {any} */ p) => void held.push(p) });
  const { conn } = await login(server, t);
  conn.send({ type: "Push", id: 9n, payload: "x" }, { type: "Push", id: 10n, payload: "y" });
  await until(() => held.length === 2, "pushes");
  await tick();
  assert.equal(conn.frames.length, 0, "no ack before the app's");
  held[0].ack();
  assert.deepEqual(await conn.next(), { type: "PushAck", id: 9n });
  conn.drop();
  await until(() => t.c.state === "waiting", "waiting");
  t.timers.fireNext();
  const { conn: second } = await login(server, t, 1);
  held[1].ack();
  await tick(50);
  assert.equal(second.frames.length, 0, "an ack belongs to the connection the push came on");
  t.c.close();
  await server.close();
});

test("a missing Pong ends the connection and the client reconnects with jitter", async () => {
  const server = await fakeServer();
  const t = client(server, { pongTimeoutMs: 5_000, backoffBaseMs: 1_000 });
  const { conn } = await login(server, t);
  t.timers.advance(30_000);
  await conn.next("Ping");
  t.timers.advance(5_000);
  await until(() => t.c.state === "waiting", "waiting");
  await until(() => conn.closed, "closed");
  // random() = 0.5: a delay within base..3 × base.
  const delay = t.states.at(-1)[1].delayMs;
  assert.ok(delay >= 1_000 && delay < 3_000, `delay ${delay}`);
  t.timers.advance(delay - 1);
  await tick(50);
  assert.equal(server.conns.length, 1, "not before the delay");
  t.timers.advance(1);
  await login(server, t, 1);
  t.c.close();
  await server.close();
});

test("a 2xxx Close or a Kick without reconnect stops the client and fails what waits", async () => {
  for (const end of ["close", "kick"]) {
    const server = await fakeServer();
    const t = client(server);
    const { conn } = await login(server, t);
    // Upstream waiting for its result.
    const up = assert.rejects(t.c.upstream("hi"), (e) => e instanceof TetherError && e.code === "stopped" && e.closeCode === (end === "close" ? 2005 : 2008));
    await conn.next("Upstream");
    if (end === "close") conn.closeWith(2005, "bad token");
    else conn.send({ type: "Kick", reason: 2008, may_reconnect: false, jitter_ms: 0 });
    await until(() => t.c.state === "stopped", "stopped");
    await up;
    t.timers.advance(3_600_000);
    await tick(50);
    assert.equal(server.conns.length, 1, `no reconnect after a ${end}`);
    await assert.rejects(t.c.upstream("later"), (e) => e instanceof TetherError && e.code === "stopped");
    await server.close();
  }
});

test("a 1xxx Close reconnects; a Kick's jitter and a GoAway's window are waited out", async () => {
  const server = await fakeServer();
  const t = client(server, { backoffBaseMs: 100 });
  const { conn } = await login(server, t);
  // GoAway: reconnect at random() × window = 5 s, not before; the connection stays usable.
  conn.send({ type: "GoAway", reason: 1001, may_reconnect: true, window_ms: 10_000 });
  await tick(50);
  conn.send({ type: "Push", id: 1n, payload: "still here" });
  await until(() => t.pushes.length === 1, "a push during the drain");
  // The server ends the drain early: the client still waits for its moment.
  conn.closeWith(1001);
  await until(() => t.c.state === "waiting", "waiting");
  t.timers.advance(4_999);
  await tick(50);
  assert.equal(server.conns.length, 1, "not before the GoAway's moment");
  t.timers.advance(1);
  const { conn: second } = await login(server, t, 1);
  // Kick with may_reconnect: wait random() × jitter = 20 s.
  second.send({ type: "Kick", reason: 1005, may_reconnect: true, jitter_ms: 40_000 });
  await until(() => t.c.state === "waiting", "waiting");
  t.timers.advance(19_999);
  await tick(50);
  assert.equal(server.conns.length, 2, "not before the Kick's jitter");
  t.timers.advance(1);
  const { conn: third } = await login(server, t, 2);
  // A GoAway while logged in moves the client at its moment, before the server closes.
  third.send({ type: "GoAway", reason: 1001, may_reconnect: true, window_ms: 2_000 });
  await tick(50);
  t.timers.advance(1_000);
  const close = await third.next("Close");
  assert.equal(close.code, 1000);
  await login(server, t, 3);
  t.c.close();
  await server.close();
});

test("upstream messages: one result each; lost results are resent with the same client_id; the queue is bounded", async () => {
  const server = await fakeServer();
  const t = client(server, { maxQueued: 2 });
  // Queued before the connection exists.
  const a = t.c.upstream("first", { clientId: 1 });
  const b = t.c.upstream("second", { clientId: 2 });
  await assert.rejects(t.c.upstream("third"), (e) => e instanceof TetherError && e.code === "queue_full");
  const { conn } = await login(server, t);
  assert.deepEqual(await conn.next(), { type: "Upstream", client_id: 1n, flags: 0, payload: new TextEncoder().encode("first") });
  assert.equal((await conn.next()).client_id, 2n);
  conn.send({ type: "UpstreamResult", client_id: 1n, status: { kind: "Accepted" }, reply: "seq=1" });
  const ra = await a;
  assert.equal(ra.accepted, true);
  assert.equal(ra.text(), "seq=1");
  // The second's result is lost with the connection: it goes again, same client_id.
  conn.drop();
  await until(() => t.c.state === "waiting", "waiting");
  t.timers.fireNext();
  const { conn: second } = await login(server, t, 1);
  assert.equal((await second.next()).client_id, 2n);
  second.send({ type: "UpstreamResult", client_id: 2n, status: { kind: "Refused", reason: 11 }, reply: "blocked" });
  const rb = await b;
  assert.deepEqual([rb.accepted, rb.reason, rb.reasonName, rb.text()], [false, 11, "Rejected", "blocked"]);
  await assert.rejects(t.c.upstream(new Uint8Array(70_000)), (e) => e instanceof TetherError && e.code === "too_large");
  t.c.close();
  await server.close();
});

test("a TokenNotice gets a Refresh with the app's new token, which later logins use", async () => {
  const server = await fakeServer();
  let n = 0;
  const t = client(server, { getToken: async () => `token-${++n}` });
  const { conn } = await login(server, t);
  conn.send({ type: "TokenNotice", expires_in_ms: 300_000 });
  assert.deepEqual(await conn.next("Refresh"), { type: "Refresh", token: "token-1" });
  conn.send({ type: "Refreshed" });
  await until(() => t.states.some(([s]) => s === "token_refreshed"), "refreshed");
  conn.drop();
  await until(() => t.c.state === "waiting", "waiting");
  t.timers.fireNext();
  const { login: l } = await login(server, t, 1);
  assert.equal(l.token, "token-1");
  t.c.close();
  await server.close();
});

test("an expired token is replaced once through getToken, then the client stops", async () => {
  const server = await fakeServer();
  const t = client(server, { getToken: () => "fresh" });
  t.c.start();
  const first = await server.conn(0);
  await first.next("Login");
  first.closeWith(2006, "expired");
  const second = await server.conn(1);
  assert.equal((await second.next("Login")).token, "fresh");
  second.closeWith(2006, "expired");
  await until(() => t.c.state === "stopped", "stopped");
  await tick(50);
  assert.equal(server.conns.length, 2);
  await server.close();
});

test("offline closes and waits; online reconnects at once", async () => {
  const server = await fakeServer();
  const t = client(server);
  const { conn } = await login(server, t);
  t.c.setOnline(false);
  assert.equal(t.c.state, "offline");
  assert.equal((await conn.next("Close")).code, 1000);
  await until(() => conn.closed, "closed");
  t.timers.advance(3_600_000);
  await tick(50);
  assert.equal(server.conns.length, 1, "nothing while offline");
  const queued = t.c.upstream("while offline", { clientId: 3 });
  t.c.setOnline(true);
  const { conn: second } = await login(server, t, 1);
  assert.equal((await second.next()).client_id, 3n);
  second.send({ type: "UpstreamResult", client_id: 3n, status: { kind: "Accepted" }, reply: "" });
  assert.equal((await queued).accepted, true);
  t.c.close();
  await server.close();
});

test("bytes that are not a frame end the connection with the decode error's code", async () => {
  const server = await fakeServer();
  const t = client(server);
  const { conn } = await login(server, t);
  conn.send(Uint8Array.of(0x0f, 0x00));
  const close = await conn.next("Close");
  assert.equal(close.code, 2002);
  assert.ok(t.errors.some((e) => e.closeCode === 2002));
  await until(() => t.c.state === "waiting", "waiting: the server is at fault, not this client");
  t.c.close();
  await server.close();
});

test("the WebSocket close code stands for the tether code when no frame came", async () => {
  const server = await fakeServer();
  const t = client(server);
  const { conn } = await login(server, t);
  conn.ws.close(4505);
  await until(() => t.c.state === "stopped", "stopped");
  assert.equal(t.states.at(-1)[1].code, 2005);
  await server.close();
});

test("the page's online, offline and visibilitychange events drive the client", async () => {
  const server = await fakeServer();
  const win = Object.assign(new EventTarget(), { navigator: { onLine: true } });
  const doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
  const t = client(server, { window: win, document: doc });
  const { conn } = await login(server, t);
  doc.visibilityState = "hidden";
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.deepEqual(await conn.next("Ping"), { type: "Ping", lease_ms: 120_000 });
  win.dispatchEvent(new Event("offline"));
  assert.equal(t.c.state, "offline");
  assert.equal((await conn.next("Close")).code, 1000);
  win.dispatchEvent(new Event("online"));
  const { login: l } = await login(server, t, 1);
  assert.equal(l.heartbeat_ms, 120_000, "still hidden: the login asks for the longer lease");
  t.c.close();
  // Closed: the listeners are gone.
  win.dispatchEvent(new Event("online"));
  await tick(50);
  assert.equal(t.c.state, "stopped");
  assert.equal(server.conns.length, 2);
  await server.close();
});

test("a page that starts offline waits for the online event", async () => {
  const server = await fakeServer();
  const win = Object.assign(new EventTarget(), { navigator: { onLine: false } });
  const t = client(server, { window: win });
  t.c.start();
  assert.equal(t.c.state, "offline");
  await tick(50);
  assert.equal(server.conns.length, 0);
  win.dispatchEvent(new Event("online"));
  await login(server, t, 0);
  t.c.close();
  await server.close();
});

test("an older server's UnsupportedVersion gets one login with version 1, without upstream messages", async () => {
  const server = await fakeServer();
  const t = client(server);
  const pending = assert.rejects(t.c.upstream("queued"), (e) => e instanceof TetherError && e.code === "unsupported");
  t.c.start();
  const first = await server.conn(0);
  assert.equal((await first.next("Login")).version, 2);
  first.closeWith(2007, "version 2 unsupported");
  const second = await server.conn(1);
  assert.equal((await second.next("Login")).version, 1);
  second.send(loginOk());
  await until(() => t.c.state === "online", "online");
  await pending;
  await assert.rejects(t.c.upstream("later"), (e) => e instanceof TetherError && e.code === "unsupported");
  t.c.close();
  await server.close();
});

test("a back-off GoAway before login is waited out before the next attempt", async () => {
  const server = await fakeServer();
  const t = client(server, { backoffBaseMs: 100 });
  t.c.start();
  const first = await server.conn(0);
  await first.next("Login");
  // The server's refusal: GoAway { Overloaded, may_reconnect, 30 s }, then EOF.
  first.send({ type: "GoAway", reason: 1005, may_reconnect: true, window_ms: 30_000 });
  await tick(20);
  first.ws.close();
  await until(() => t.c.state === "waiting", "waiting");
  assert.equal(t.states.at(-1)[1].delayMs, 15_000, "random() × window");
  t.timers.advance(14_999);
  await tick(50);
  assert.equal(server.conns.length, 1);
  t.timers.advance(1);
  await login(server, t, 1);
  t.c.close();
  await server.close();
});
