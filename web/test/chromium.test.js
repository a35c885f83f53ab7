// The demo page in a real headless Chromium against the live server: it logs in, a push sent
// through the HTTP API shows up on the page, and a screenshot is taken.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFile, writeFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { api, clientToken, server, skipLive, upstreamBackend } from "../test-support/live.js";
import { Chromium } from "../test-support/webdriver.js";

const WEB = fileURLToPath(new URL("..", import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png" };

/** Serves web/ (the demo and the module) on 127.0.0.1:`port`, so the page has an http:// origin. */
async function serveWeb(/** @type {number} */ port) {
  const srv = http.createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
    if (path.includes("..") || path.includes("node_modules")) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(WEB, path));
      res.writeHead(200, { "content-type": TYPES[/** @type {keyof TYPES} */ (extname(path))] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((res) => srv.listen(port, "127.0.0.1", () => res(undefined)));
  return srv;
}

test("the demo page shows a push in headless Chromium", { skip: skipLive }, async () => {
  const s = /** @type {NonNullable<typeof server>} */ (server);
  assert.ok(s.chromium && s.chromedriver, "TETHER_CHROMIUM and TETHER_CHROMEDRIVER name the browser and its driver");
  assert.ok(s.pagePort, "TETHER_PAGE_PORT is the port the server's allowed_origins names");
  const web = await serveWeb(s.pagePort);
  let seq = 41;
  const backend = await upstreamBackend("demo-chat", () => ({ accepted: true, reply: `seq=${++seq}` }));
  const browser = await Chromium.start({ chromium: s.chromium, chromedriver: s.chromedriver, width: 1000, height: 760 });
  try {
    const user = "web-demo-alice";
    const fragment = new URLSearchParams({ url: s.wsUrl, user, device: "chromium", token: clientToken(user, "chromium") });
    await browser.go(`http://127.0.0.1:${s.pagePort}/demo/index.html#${fragment}`);
    await browser.waitFor(`return document.getElementById("status").dataset.state === "online"`, "the page to log in");
    assert.equal(await browser.run(`return location.hash`), "", "the token left the address bar");
    for (const payload of ["Grüße from tether", "Your order #1042 has shipped"]) {
      const r = await api("/api/push", { user, payload, want_ack: true, ack_timeout_ms: 5_000 });
      assert.equal(r.body.results?.[0]?.outcome, "acked", JSON.stringify(r.body));
    }
    const shown = await browser.waitFor(
      `const b = [...document.querySelectorAll("#pushes li .body")].map((e) => e.textContent); return b.length >= 2 && b;`,
      "the pushes on the page",
    );
    assert.deepEqual(shown, ["Your order #1042 has shipped", "Grüße from tether"]);
    // A message typed into the page goes up to the backend; its result shows.
    await browser.run(`document.getElementById("message").value = "on my way"; document.querySelector("#send button").click();`);
    const result = await browser.waitFor(
      `const r = document.querySelector("#pushes li.result .body"); return r && r.textContent;`,
      "the upstream result on the page",
    );
    assert.equal(result, "on my way → accepted seq=42");
    assert.equal(backend.delivered.at(-1).user, user);
    // The browser going offline and back: the page's events drive the client, which logs in
    // again (a new session) as soon as the network is back.
    const meta = `return document.getElementById("meta").textContent`;
    const before = await browser.run(meta);
    await browser.setOffline(true);
    await browser.waitFor(`return document.getElementById("status").dataset.state === "offline"`, "the page to see it is offline");
    await browser.setOffline(false);
    await browser.waitFor(`return document.getElementById("status").dataset.state === "online"`, "the page to log in again");
    assert.notEqual(await browser.run(meta), before, "a new session");
    const png = await browser.screenshot();
    assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], "a PNG");
    if (s.screenshot) await writeFile(s.screenshot, png);
  } finally {
    await browser.quit();
    backend.close();
    web.close();
  }
});
