// Fakes shared by the SDK's unit tests: a scripted network (every WebSocket the client opens, and
// answers for fetch), JWTs, and waiting for a condition in bounded time.

import assert from "node:assert/strict";

export const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

export async function until(check, what, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(2);
  }
}

/** A scripted network: every WebSocket the client opens, and answers for fetch. */
export function network({ probe = () => json(200, { events: [], since: 0 }), poll } = {}) {
  const sockets = [];
  const fetches = [];
  class FakeWebSocket {
    constructor(url, protocols = []) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000) {
      this.closed = code;
    }
    /** The server sends a frame. */
    frame(frame) {
      this.onmessage({ data: JSON.stringify(frame) });
    }
    /** The connection ends (or never opened, when no welcome came). */
    drop(code = 1006) {
      this.onclose({ code, reason: "" });
    }
  }
  const fetch = async (url, init = {}) => {
    url = new URL(url);
    fetches.push({ url, init });
    // A server without event streams, unless a test serves them (`eventStreams`).
    if (url.pathname === "/sse") return json(404, { error: { code: "not-found", message: "no such endpoint" } });
    const zeroWait = url.searchParams.get("timeout") === "0";
    return zeroWait || !poll ? probe(url, init) : poll(url, init);
  };
  return { sockets, fetches, WebSocket: FakeWebSocket, fetch };
}

export function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

export function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part(claims)}.sig`;
}

/** The token a socket was opened with (in its subprotocols, never in its URL). */
export function tokenOf(ws) {
  assert.equal(ws.url.searchParams.get("token"), null, "a token in the URL");
  assert.equal(ws.protocols[0], "switchboard.v1");
  return ws.protocols.find((p) => p.startsWith("bearer.")).slice("bearer.".length);
}

export const welcome = (seq, extra = {}) => ({
  type: "welcome",
  seq,
  heartbeat_interval_ms: 15000,
  client_timeout_ms: 45000,
  resumed: false,
  ...extra,
});

/**
 * One browser's Web Locks and BroadcastChannels, as its tabs share them. `tab()` gives what one
 * tab passes to `connect` (`locks`, `BroadcastChannel`, no `SharedWorker`) and `kill()`, which
 * ends the tab as closing it does: its locks are released and its channels shut, without its
 * code saying goodbye.
 */
export function browser() {
  const channels = new Set();
  const locks = new Map(); // name → { holder, queue }
  const lock = (name) => locks.get(name) ?? locks.set(name, { holder: null, queue: [] }).get(name);
  const grant = (name) => {
    const state = lock(name);
    if (state.holder || state.queue.length === 0) return;
    const entry = state.queue.shift();
    state.holder = entry;
    const done = () => {
      if (state.holder !== entry) return;
      state.holder = null;
      grant(name);
    };
    Promise.resolve()
      .then(() => entry.callback({ name }))
      .then(
        (value) => (done(), entry.resolve(value)),
        (error) => (done(), entry.reject(error)),
      );
  };
  const abortError = () => Object.assign(new Error("aborted"), { name: "AbortError" });

  function tab() {
    const mine = { channels: new Set(), entries: new Set(), dead: false };
    class BroadcastChannel {
      constructor(name) {
        this.name = name;
        this.closed = false;
        channels.add(this);
        mine.channels.add(this);
      }
      postMessage(data) {
        if (mine.dead) return;
        if (this.closed) throw Object.assign(new Error("closed"), { name: "InvalidStateError" });
        const copy = structuredClone(data);
        for (const other of channels) {
          if (other === this || other.name !== this.name) continue;
          // Delivered as a task, in order, to whoever is still listening then.
          setImmediate(() => !other.closed && other.onmessage?.({ data: structuredClone(copy) }));
        }
      }
      close() {
        this.closed = true;
        channels.delete(this);
      }
    }
    const lockManager = {
      request(name, options, callback) {
        return new Promise((resolve, reject) => {
          if (options.signal?.aborted) return reject(abortError());
          const entry = { name, callback, resolve, reject };
          options.signal?.addEventListener("abort", () => {
            const queue = lock(name).queue;
            if (!queue.includes(entry)) return;
            queue.splice(queue.indexOf(entry), 1);
            reject(abortError());
          });
          mine.entries.add(entry);
          lock(name).queue.push(entry);
          grant(name);
        });
      },
    };
    const kill = () => {
      mine.dead = true;
      for (const channel of mine.channels) channel.close();
      for (const entry of mine.entries) {
        const state = lock(entry.name);
        if (state.queue.includes(entry)) state.queue.splice(state.queue.indexOf(entry), 1);
        if (state.holder === entry) {
          state.holder = null;
          grant(entry.name);
        }
      }
    };
    return { runtime: { locks: lockManager, BroadcastChannel, SharedWorker: null }, kill };
  }
  return { tab };
}

/**
 * SharedWorkers run in this process: the first tab to name a worker starts it (`serve`, the SDK's
 * `serveSharedWorker`, with `runtime` for its network), and every tab gets a port to it.
 */
export function sharedWorkers(serve, runtime) {
  const scopes = new Map();
  const ports = [];
  class SharedWorker {
    constructor(url, { name }) {
      if (!scopes.has(name)) {
        const scope = { name };
        serve(scope, runtime);
        scopes.set(name, scope);
      }
      const { port1, port2 } = new MessageChannel();
      ports.push(port1, port2);
      this.port = port1;
      setImmediate(() => scopes.get(name).onconnect({ ports: [port2] }));
    }
  }
  /** Shuts every port, so that nothing keeps the test process alive. */
  const shut = () => ports.forEach((port) => port.close());
  return { SharedWorker, workers: scopes, shut };
}

/**
 * Event streams (`GET /sse`) the client opens, each a response the test writes to: `event(frame,
 * id)`, `comment()`, `end()`. `answer(url, init)` may return a response of its own instead (a
 * refusal), or undefined for a stream.
 */
export function eventStreams(answer = () => undefined) {
  const streams = [];
  const open = (url, init) => {
    const given = answer(url, init);
    if (given) return given;
    let controller;
    const body = new ReadableStream({ start: (c) => (controller = c) });
    const encoder = new TextEncoder();
    const write = (text) => controller.enqueue(encoder.encode(text));
    const stream = {
      url,
      init,
      event: (frame, id) => write(`${id === undefined ? "" : `id: ${id}\n`}data: ${JSON.stringify(frame)}\n\n`),
      comment: () => write(": ping\n\n"),
      end: () => controller.close(),
    };
    init.signal?.addEventListener("abort", () => {
      try {
        controller.error(Object.assign(new Error("aborted"), { name: "AbortError" }));
      } catch {
        // Already ended.
      }
    });
    streams.push(stream);
    write("retry: 2000\n\n");
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  return { streams, open };
}
