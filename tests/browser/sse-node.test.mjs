// Server-Sent Events read by Node's `eventsource` package (the WHATWG EventSource for Node), the
// token in an `Authorization` header rather than the URL: events arrive with their sequence
// numbers as ids, and when the server drops the stream — drained and stopped, then started
// again — the client's automatic reconnect resumes by `Last-Event-ID`, nothing lost or repeated.
// Run with `npm test --prefix tests/browser` (it needs no browser, only the harness's server).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import { WAIT, Server, build } from "./harness.mjs";

const RUN = Math.random().toString(36).slice(2, 8);

let server;

before(async () => {
  build();
  server = await Server.create();
});

after(async () => {
  await server?.remove();
});

async function waitFor(received, check, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (check(received)) return received;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(received)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ticks = (received) => received.filter((m) => m.frame.type === "event" && m.frame.event === "tick");

test("Node's EventSource, the token in a header, resumes by Last-Event-ID after the server drops the stream", async () => {
  const account = `sse-node-${RUN}`;
  const token = await server.token(account, "alice");
  const received = [];
  const source = new EventSource(`${server.base}/sse`, {
    fetch: (input, init) =>
      fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
  });
  source.onmessage = (m) => received.push({ id: m.lastEventId, frame: JSON.parse(m.data) });
  try {
    await waitFor(received, (got) => got.length >= 1, "the welcome");
    assert.equal(received[0].frame.type, "welcome");
    assert.equal(received[0].id, String(received[0].frame.seq));

    const published = [];
    for (let i = 0; i < 3; i++) published.push(await server.publish(account, "tick", { i }));
    await waitFor(received, (got) => ticks(got).length === 3, "three events");
    assert.deepEqual(ticks(received).map((m) => m.id), published.map(String));

    await server.stop();
    await waitFor(received, (got) => got.at(-1).frame.type === "close", "the close message");
    assert.equal(received.at(-1).frame.code, 1001);
    assert.equal(received.at(-1).frame.reconnect, true);
    await server.start();
    for (let i = 3; i < 6; i++) published.push(await server.publish(account, "tick", { i }));

    await waitFor(received, (got) => ticks(got).length === 6, "the events published while away");
    const again = received.filter((m) => m.frame.type === "welcome")[1];
    assert.equal(again.frame.resumed, true, JSON.stringify(again));
    assert.equal(again.frame.since, published[2], "resumed from the last id received");
    published.push(await server.publish(account, "tick", { i: 6 }));
    await waitFor(received, (got) => ticks(got).length === 7, "a live event");
    assert.deepEqual(ticks(received).map((m) => m.frame.seq), published);
    assert.deepEqual(ticks(received).map((m) => m.id), published.map(String));
  } finally {
    source.close();
  }
});
