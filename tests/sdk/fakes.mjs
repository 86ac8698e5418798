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

