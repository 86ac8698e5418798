// Server-Sent Events in Chromium's own `EventSource` (not the SDK): events arrive with their
// sequence numbers as ids, and when the server drops the stream — drained and stopped, then
// started again — the browser's automatic reconnect resumes by `Last-Event-ID` with nothing lost
// or repeated. Run with `npm test --prefix tests/browser`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { WAIT, Server, build, launchChromium } from "./harness.mjs";

const RUN = Math.random().toString(36).slice(2, 8);

let server, browser;

before(async () => {
  build();
  server = await Server.create();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.remove();
});

/** What the page's EventSource received: each message's `lastEventId` and frame. */
const received = (page) => page.evaluate(() => window.received);

async function waitFor(page, check, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const got = await received(page);
    if (check(got)) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(got)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const events = (got) => got.filter((m) => m.frame.type === "event" && m.frame.event === "tick");

test("an EventSource resumes by Last-Event-ID after the server drops the stream: nothing lost, nothing twice", async () => {
  const account = `sse-${RUN}`;
  const token = await server.token(account, "alice");
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  // A page of the server's own origin, so that the stream is same-origin.
  await page.goto(`${server.base}/healthz`);
  await page.evaluate((token) => {
    window.received = [];
    const source = new EventSource(`/sse?token=${encodeURIComponent(token)}`);
    source.onmessage = (m) => window.received.push({ id: m.lastEventId, frame: JSON.parse(m.data) });
  }, token);
  const [first] = await waitFor(page, (got) => got.length >= 1, "the welcome");
  assert.equal(first.frame.type, "welcome");
  assert.equal(first.id, String(first.frame.seq), "a fresh session's welcome carries its position");

  const published = [];
  for (let i = 0; i < 3; i++) published.push(await server.publish(account, "tick", { i }));
  let got = await waitFor(page, (got) => events(got).length === 3, "three events");
  assert.deepEqual(events(got).map((m) => m.id), published.map(String));

  // The server drops the stream: drained (the last message says why), stopped, started again —
  // and events are published before the browser is back.
  await server.stop();
  got = await waitFor(page, (got) => got.at(-1).frame.type === "close", "the close message");
  assert.deepEqual(got.at(-1).frame, {
    type: "close",
    code: 1001,
    name: "server-shutdown",
    reason: "server shutting down; reconnect",
    reconnect: true,
  });
  await server.start();
  for (let i = 3; i < 6; i++) published.push(await server.publish(account, "tick", { i }));

  got = await waitFor(page, (got) => events(got).length === 6, "the events published while away");
  const again = got.filter((m) => m.frame.type === "welcome")[1];
  assert.equal(again.frame.resumed, true, JSON.stringify(again));
  assert.equal(again.frame.since, published[2], "resumed from the last id received");
  published.push(await server.publish(account, "tick", { i: 6 }));
  got = await waitFor(page, (got) => events(got).length === 7, "a live event");
  assert.deepEqual(events(got).map((m) => m.frame.seq), published);
  assert.deepEqual(events(got).map((m) => m.id), published.map(String));
});
