// What the browser tests share: the real server (the debug binary, SQLite in a temporary
// directory, development mode for the JWT secret so pages can get demo tokens:
// SWITCHBOARD_DEV_MODE=true, as the API key is configured) on a free loopback port, Debian's
// headless Chromium, and the server-side calls a test makes (publish, tokens, metrics).

import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BINARY = join(ROOT, "target", "debug", "switchboard");
export const API_KEY = "browser-test-api-key-0123456789";
/** How long a test waits for any one thing (a status, an event), ms. */
export const WAIT = 15000;

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** The server binary, built once per test file (a no-op when it is up to date). */
export function build() {
  execFileSync("cargo", ["build", "--quiet"], { cwd: ROOT, stdio: "inherit" });
}

/** The server on a free port; `stop` and `start` again keep its database and port. */
export class Server {
  static async create() {
    const server = new Server();
    server.dir = mkdtempSync(join(tmpdir(), "switchboard-browser-"));
    server.port = await freePort();
    server.base = `http://127.0.0.1:${server.port}`;
    await server.start();
    return server;
  }

  /** Starts the server, resolving once it answers. */
  async start() {
    this.process = spawn(
      BINARY,
      ["--bind", `127.0.0.1:${this.port}`, "--database-url", join(this.dir, "switchboard.db")],
      {
        env: { ...process.env, SWITCHBOARD_API_KEY: API_KEY, SWITCHBOARD_DEV_MODE: "true", RUST_LOG: "warn" },
        stdio: ["ignore", "ignore", "inherit"],
      },
    );
    const deadline = Date.now() + WAIT;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`${this.base}/sdk/switchboard.js`)).ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("the server did not start");
  }

  async stop() {
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGTERM");
    await exited;
  }

  /** Stops it if it runs, and removes its database. */
  async remove() {
    if (this.process && this.process.exitCode === null) await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  async publish(account, event, data, channel) {
    const response = await fetch(`${this.base}/api/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ account_id: account, event, data, ...(channel ? { channel } : {}) }),
    });
    const body = await response.text();
    assert.equal(response.status, 200, body);
    return JSON.parse(body).seq;
  }

  /** A demo token for a user, as the demo page gets one (from this machine, from no page). */
  async token(account, user) {
    const response = await fetch(`${this.base}/demo/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ account_id: account, user_id: user }),
    });
    assert.equal(response.status, 200);
    return (await response.json()).token;
  }

  /** Open WebSocket sessions on the server, from its `switchboard_connections` gauge. */
  connections() {
    return this.metric("switchboard_connections");
  }

  /** The sum of a metric's series in `/metrics` whose labels include `labels` (`outcome="resumed"`). */
  async metric(name, labels = "") {
    const text = await (await fetch(`${this.base}/metrics`)).text();
    const series = [...text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, "gm"))];
    assert.ok(series.length > 0 || labels, `no ${name} in /metrics`);
    return series.filter((m) => (m[1] ?? "").includes(labels)).reduce((sum, m) => sum + Number(m[2]), 0);
  }
}

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
