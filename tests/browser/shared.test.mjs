// `shared: true` in Chromium: three tabs of one browser, one user, one server session — through a
// SharedWorker when the page loaded the SDK from its own origin, through a leader tab (Web Locks
// and a BroadcastChannel) when it loaded it from the Switchboard server's. Against the real
// server (see harness.mjs): `npm test --prefix tests/browser`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
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

/**
 * The app's own site, on an origin of its own: a blank page at `/app`, and `/token`, the app's
 * backend handing out Switchboard tokens (asked as the demo page asks `/demo/token`).
 */
async function appSite() {
  const site = createServer(async (request, response) => {
    if (request.url === "/app") {
      response.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>app</title>");
    } else if (request.url === "/token" && request.method === "POST") {
      let body = "";
      for await (const chunk of request) body += chunk;
      const { account_id, user_id } = JSON.parse(body);
      const token = await server.token(account_id, user_id);
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token }));
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  return site;
}

/**
 * A tab at `url` that connects with `shared: true`, with tokens from `tokenPath` on its own
 * origin, and keeps every `tick` it is handed.
 */
async function openTab(context, url, tokenPath, account, user) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(url);
  await page.evaluate(
    async ({ base, tokenPath, account, user }) => {
      const { connect } = await import(`${base}/sdk/switchboard.js`);
      window.ticks = [];
      window.tokenCalls = 0;
      const getToken = async () => {
        window.tokenCalls++;
        const response = await fetch(tokenPath, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ account_id: account, user_id: user }),
        });
        return (await response.json()).token;
      };
      window.sb = connect(base, { shared: true, getToken, backoffBaseMs: 100 });
      window.sb.on("tick", (data) => window.ticks.push(data.n));
    },
    { base: server.base, tokenPath, account, user },
  );
  return page;
}

const waitOpen = (page) => page.waitForFunction(() => window.sb?.status === "open", null, { timeout: WAIT });
const role = (page) => page.evaluate(() => window.sb.shared);
const ticks = (page) => page.evaluate(() => window.ticks);
const waitTicks = (page, count) =>
  page.waitForFunction((count) => window.ticks.length >= count, count, { timeout: WAIT });
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

/** Waits (bounded) until the server has `count` WebSocket sessions open. */
async function waitConnections(count) {
  const deadline = Date.now() + WAIT;
  let now;
  while ((now = await server.connections()) !== count) {
    if (Date.now() > deadline) throw new Error(`${now} sessions open, not ${count}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Publishes `tick` n for n in [from, to), one after another. */
async function publishTicks(account, from, to, pauseMs = 0) {
  for (const n of range(from, to)) {
    await server.publish(account, "tick", { n, run: RUN });
    if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
  }
}

/** Every tab sends a message into one conversation, over the shared socket: each gets its own ack. */
async function sendFromEach(pages) {
  const conversation = await pages[0].evaluate(() => window.sb.rest("POST", "/api/v1/conversations", { participants: ["bob"] }));
  const acks = await Promise.all(
    pages.map((page, i) =>
      page.evaluate(({ id, i }) => window.sb.send(id, `from tab ${i}`), { id: conversation.id, i }),
    ),
  );
  const { messages } = await pages[0].evaluate(
    (id) => window.sb.rest("GET", `/api/v1/conversations/${id}/messages`),
    conversation.id,
  );
  const textOf = new Map(messages.map((m) => [m.id, m.text]));
  acks.forEach((ack, i) => {
    assert.equal(ack.type, "ack", "answered on the socket");
    assert.equal(textOf.get(ack.message_id), `from tab ${i}`);
  });
}

test("three tabs that load the SDK from their own origin share one session through a SharedWorker", async (t) => {
  const account = `worker-${RUN}`;
  await waitConnections(0);
  const context = await browser.newContext();
  t.after(() => context.close());
  const pages = [];
  // The demo's page, without an account, is a page of the server's origin that connects nothing.
  for (let i = 0; i < 3; i++) pages.push(await openTab(context, `${server.base}/demo`, "/demo/token", account, "alice"));
  await Promise.all(pages.map(waitOpen));
  assert.equal(await server.connections(), 1, "one session for three tabs");
  assert.deepEqual(await Promise.all(pages.map(role)), ["worker", "worker", "worker"]);
  assert.deepEqual(await pages[2].evaluate(() => window.sb.presence()), ["alice"]);

  await publishTicks(account, 0, 10);
  for (const page of pages) {
    await waitTicks(page, 10);
    assert.deepEqual(await ticks(page), range(0, 10), "every event once, in order");
  }
  await sendFromEach(pages);

  // The tab that started the worker goes while events are published: the others miss nothing.
  const publishing = publishTicks(account, 10, 30, 10);
  await waitTicks(pages[1], 12);
  await pages[0].close();
  await publishing;
  for (const page of pages.slice(1)) {
    await waitTicks(page, 30);
    assert.deepEqual(await ticks(page), range(0, 30), "every event once, in order");
  }
  assert.equal(await server.connections(), 1);
  // One token each, to learn whose it is; none asked since.
  assert.deepEqual(await Promise.all(pages.slice(1).map((p) => p.evaluate(() => window.tokenCalls))), [1, 1]);
});

test("three tabs that load the SDK from the Switchboard server share one session through a leader tab; when it closes, another takes over and nothing is lost or repeated", async (t) => {
  const account = `leader-${RUN}`;
  // The app's own site, on another origin: the SDK comes from elsewhere.
  const site = await appSite();
  t.after(() => site.close());
  const app = `http://localhost:${site.address().port}`;
  await waitConnections(0);
  const context = await browser.newContext();
  t.after(() => context.close());
  const pages = [];
  for (let i = 0; i < 3; i++) pages.push(await openTab(context, `${app}/app`, "/token", account, "alice"));
  await Promise.all(pages.map(waitOpen));
  assert.equal(await server.connections(), 1, "one session for three tabs");
  const roles = await Promise.all(pages.map(role));
  assert.deepEqual([...roles].sort(), ["follower", "follower", "leader"]);
  assert.deepEqual(await pages[1].evaluate(() => window.sb.presence()), ["alice"]);

  await publishTicks(account, 0, 10);
  for (const page of pages) {
    await waitTicks(page, 10);
    assert.deepEqual(await ticks(page), range(0, 10), "every event once, in order");
  }
  await sendFromEach(pages);

  // The leader's tab closes while events are published, some while no tab is connected.
  const leader = pages[roles.indexOf("leader")];
  const others = pages.filter((page) => page !== leader);
  const resumed = () => server.metric("switchboard_resumes_total", 'outcome="resumed"');
  const resumedBefore = await resumed();
  const publishing = publishTicks(account, 10, 40, 10);
  await waitTicks(others[0], 13);
  await leader.close();
  await publishing;
  for (const page of others) {
    await waitTicks(page, 40);
    assert.deepEqual(await ticks(page), range(0, 40), "every event once, in order");
  }
  assert.deepEqual([...(await Promise.all(others.map(role)))].sort(), ["follower", "leader"]);
  await Promise.all(others.map(waitOpen));
  await waitConnections(1);
  assert.ok((await resumed()) > resumedBefore, "the new leader resumed with ?since=");
  assert.deepEqual(await others[0].evaluate(() => window.sb.presence()), ["alice"]);
  await sendFromEach(others);
});
