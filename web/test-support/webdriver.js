// Just enough WebDriver (W3C, over HTTP with fetch) to drive headless Chromium through
// chromedriver: a session, navigation, a script, a screenshot.

import { spawn } from "node:child_process";
import net from "node:net";

/** A free TCP port on 127.0.0.1 (the kernel's pick, released for the caller to take). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((res) => srv.listen(0, "127.0.0.1", () => res(undefined)));
  const port = /** @type {net.AddressInfo} */ (srv.address()).port;
  await new Promise((res) => srv.close(res));
  return port;
}

export class Chromium {
  /**
   * Starts chromedriver and a headless Chromium session.
   * @param {{ chromedriver: string, chromium: string, width?: number, height?: number }} opts
   */
  static async start(opts) {
    const port = await freePort();
    const driver = spawn(opts.chromedriver, [`--port=${port}`], { stdio: ["ignore", "pipe", "pipe"] });
    let log = "";
    driver.stdout.on("data", (d) => (log += d));
    driver.stderr.on("data", (d) => (log += d));
    const base = `http://127.0.0.1:${port}`;
    const until = Date.now() + 20_000;
    for (;;) {
      try {
        const r = await fetch(`${base}/status`);
        if ((await r.json()).value?.ready) break;
      } catch {
        // not listening yet
      }
      if (driver.exitCode !== null || Date.now() > until) {
        driver.kill();
        throw new Error(`chromedriver did not start: ${log}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const b = new Chromium(driver, base);
    const s = await b.call("POST", "/session", {
      capabilities: {
        alwaysMatch: {
          browserName: "chrome",
          "goog:chromeOptions": {
            binary: opts.chromium,
            args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", `--window-size=${opts.width ?? 1000},${opts.height ?? 720}`],
          },
        },
      },
    });
    b.session = s.sessionId;
    return b;
  }

  constructor(/** @type {import("node:child_process").ChildProcess} */ driver, /** @type {string} */ base) {
    this.driver = driver;
    this.base = base;
    this.session = "";
  }

  /** One WebDriver command; its `value`, or an error with the driver's message. */
  async call(/** @type {string} */ method, /** @type {string} */ path, /** @type {any} */ body) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`WebDriver ${method} ${path}: ${json.value?.error}: ${json.value?.message}`);
    return json.value;
  }

  async go(/** @type {string} */ url) {
    await this.call("POST", `/session/${this.session}/url`, { url });
  }

  /** Runs `script` (a function body) in the page; resolves with what it returns. */
  async run(/** @type {string} */ script, /** @type {any[]} */ args = []) {
    return this.call("POST", `/session/${this.session}/execute/sync`, { script, args });
  }

  /** Polls `script` until it returns something truthy. */
  async waitFor(/** @type {string} */ script, /** @type {string} */ what, ms = 15_000) {
    const until = Date.now() + ms;
    for (;;) {
      const v = await this.run(script);
      if (v) return v;
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Chromium's network emulation: offline (the page gets its `offline` event) or back. */
  async setOffline(/** @type {boolean} */ offline) {
    await this.call("POST", `/session/${this.session}/chromium/network_conditions`, {
      network_conditions: { offline, latency: 0, download_throughput: -1, upload_throughput: -1 },
    });
  }

  /** A PNG of the viewport. */
  async screenshot() {
    return Buffer.from(await this.call("GET", `/session/${this.session}/screenshot`), "base64");
  }

  async quit() {
    try {
      if (this.session) await this.call("DELETE", `/session/${this.session}`);
    } finally {
      this.driver.kill();
    }
  }
}
