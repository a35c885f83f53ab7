// What the live tests need of the real server: its addresses and secrets from the environment
// (tests/tests/web.rs starts the server and sets them), tokens, the HTTP API, and a backend
// connection over plain TCP.

import net from "node:net";
import { Decoder, encode, LOGIN_UPSTREAM } from "../codec.js";
import { mintBackend, mintClient } from "./mint.js";

/** The server under test, or null when none was given. */
export const server = (() => {
  const env = process.env;
  const names = ["TETHER_WS_URL", "TETHER_API", "TETHER_TCP", "TETHER_SECRET", "TETHER_BACKEND_SECRET"];
  const missing = names.filter((n) => !env[n]);
  if (missing.length === names.length && env.TETHER_LIVE !== "1") return null;
  if (missing.length > 0) {
    throw new Error(`live tests need ${missing.join(", ")} (tests/tests/web.rs sets them)`);
  }
  return {
    wsUrl: /** @type {string} */ (env.TETHER_WS_URL),
    api: /** @type {string} */ (env.TETHER_API),
    tcp: /** @type {string} */ (env.TETHER_TCP),
    secret: /** @type {string} */ (env.TETHER_SECRET),
    backendSecret: /** @type {string} */ (env.TETHER_BACKEND_SECRET),
    pagePort: env.TETHER_PAGE_PORT ? Number(env.TETHER_PAGE_PORT) : 0,
    drainWsUrl: env.TETHER_DRAIN_WS_URL || "",
    drainApi: env.TETHER_DRAIN_API || "",
    chromium: env.TETHER_CHROMIUM || "",
    chromedriver: env.TETHER_CHROMEDRIVER || "",
    screenshot: env.TETHER_SCREENSHOT || "",
  };
})();

/** Why a live test is skipped, or false. */
export const skipLive = server ? false : "no live server (tests/tests/web.rs runs these)";

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

/** A client token for `user` on `device`. */
export function clientToken(/** @type {string} */ user, /** @type {string} */ device) {
  return mintClient(/** @type {any} */ (server).secret, user, device, inAnHour());
}

/** POSTs JSON to the HTTP API (of `base`, the main server's by default); resolves with `{ status, body }`. */
export async function api(/** @type {string} */ path, /** @type {any} */ body, base = /** @type {any} */ (server).api) {
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

/**
 * A backend connection over TCP that logs in with UPSTREAM and answers each delivery with
 * `answer(deliver)` → `{ accepted, reply }`. Resolves once logged in.
 */
export async function upstreamBackend(/** @type {string} */ service, /** @type {(d: any) => {accepted: boolean, reply: string}} */ answer) {
  const [host, port] = /** @type {any} */ (server).tcp.split(/:(?=\d+$)/);
  const sock = net.connect(Number(port), host);
  const decoder = new Decoder({ version: 2 });
  /** @type {any[]} */
  const delivered = [];
  let resolveLogin, rejectLogin;
  const loggedIn = new Promise((res, rej) => ((resolveLogin = res), (rejectLogin = rej)));
  sock.on("connect", () => {
    sock.write(
      encode({
        type: "Login",
        version: 2,
        flags: LOGIN_UPSTREAM,
        user: service,
        device: "",
        token: mintBackend(/** @type {any} */ (server).backendSecret, service, inAnHour()),
        heartbeat_ms: 60_000,
        network_key: "",
      }),
    );
  });
  sock.on("data", (data) => {
    decoder.push(new Uint8Array(data));
    for (let f; (f = decoder.next()); ) {
      if (f.type === "LoginOk") resolveLogin?.(f);
      else if (f.type === "UpstreamDeliver") {
        delivered.push(f);
        const a = answer(f);
        sock.write(encode({ type: "UpstreamAnswer", id: f.id, accepted: a.accepted, reply: a.reply }));
      } else if (f.type === "Close") rejectLogin?.(new Error(`backend closed: ${f.code} ${f.text}`));
    }
  });
  sock.on("error", (e) => rejectLogin?.(e));
  await loggedIn;
  return { delivered, close: () => sock.destroy() };
}
