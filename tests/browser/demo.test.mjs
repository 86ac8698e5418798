// The demo page and the SDK in a real browser: Debian's headless Chromium, driven by
// playwright-core, against a real server (see harness.mjs). Run with
// `npm test --prefix tests/browser`; it builds the debug binary first.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { API_KEY, ROOT, WAIT, Server, build, launchChromium } from "./harness.mjs";

const RUN = Math.random().toString(36).slice(2, 8);

let server, base, browser;

const publish = (account, event, data) => server.publish(account, event, data);

/** A fresh browser context (its own storage, like another person's browser) on the demo page. */
async function openDemo(query) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${base}/demo?${new URLSearchParams(query)}`);
  // Every status the page goes through, from the first.
  await page.evaluate(() => {
    window.statuses = [window.switchboard.status];
    window.switchboard.on("status", (s) => window.statuses.push(s));
  });
  return page;
}

const waitStatus = (page, status) =>
  page.waitForSelector(`#status[data-status="${status}"]`, { timeout: WAIT });
const eventTexts = (page) => page.$$eval("#events li", (items) => items.map((i) => i.textContent));

before(async () => {
  build();
  server = await Server.create();
  base = server.base;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.remove();
});

test("an event published to one account shows in its page and never in another account's", async () => {
  const [a, b] = [`acme-${RUN}`, `globex-${RUN}`];
  const pageA = await openDemo({ account: a, user: "alice" });
  const pageB = await openDemo({ account: b, user: "carol" });
  await Promise.all([waitStatus(pageA, "open"), waitStatus(pageB, "open")]);

  await publish(a, "order-paid", { marker: `for-A-${RUN}` });
  await publish(b, "order-paid", { marker: `for-B-${RUN}` });
  await pageA.waitForSelector(`#events li:has-text("for-A-${RUN}")`, { timeout: WAIT });
  // B's own event arrived after A's was published: had A's reached B, it would be there by now.
  await pageB.waitForSelector(`#events li:has-text("for-B-${RUN}")`, { timeout: WAIT });
  assert.ok(!(await eventTexts(pageB)).some((t) => t.includes(`for-A-${RUN}`)), "B saw A's event");
  assert.ok(!(await eventTexts(pageA)).some((t) => t.includes(`for-B-${RUN}`)), "A saw B's event");
  await pageA.context().close();
  await pageB.context().close();
});

test("a direct message shows for both users and the unread badge follows it", async () => {
  const account = `dm-${RUN}`;
  const alice = await openDemo({ account, user: "alice" });
  const bob = await openDemo({ account, user: "bob" });
  await Promise.all([waitStatus(alice, "open"), waitStatus(bob, "open")]);
  // Each sees the other online.
  await alice.waitForSelector('#online li:has-text("bob")', { timeout: WAIT });

  await alice.fill('#dm input[name="to"]', "bob");
  await alice.fill('#dm input[name="text"]', "lunch at noon?");
  await alice.click("#dm button");
  await alice.waitForSelector('#messages li.me:has-text("lunch at noon?")', { timeout: WAIT });

  // Bob has not opened it: one unread.
  const bobsBadge = '#conversations li:has-text("alice") .badge';
  await bob.waitForSelector(`${bobsBadge}[data-count="1"]`, { state: "attached", timeout: WAIT });
  await alice.fill('#dm input[name="text"]', "or 1pm");
  await alice.click("#dm button");
  await bob.waitForSelector(`${bobsBadge}[data-count="2"]`, { state: "attached", timeout: WAIT });

  // Opening it shows both messages and clears the badge.
  await bob.click('#conversations li:has-text("alice")');
  await bob.waitForSelector('#messages li:has-text("lunch at noon?")', { timeout: WAIT });
  await bob.waitForSelector('#messages li:has-text("or 1pm")', { timeout: WAIT });
  await bob.waitForSelector(`${bobsBadge}[data-count="0"]`, { state: "attached", timeout: WAIT });

  // Bob answers; alice has the conversation open, so it shows there at once.
  await bob.fill('#dm input[name="to"]', "alice");
  await bob.fill('#dm input[name="text"]', "noon works");
  await bob.click("#dm button");
  await alice.waitForSelector('#messages li:has-text("noon works")', { timeout: WAIT });

  // A notification from the app's backend raises alice's badge, not bob's.
  const created = await fetch(`${base}/api/v1/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ account_id: account, user_id: "alice", type: "invoice.paid", title: "Invoice #12 paid" }),
  });
  assert.equal(created.status, 201, await created.text());
  await alice.waitForSelector('#notification-badge[data-count="1"]', { timeout: WAIT });
  await alice.waitForSelector('#notifications li:has-text("Invoice #12 paid")', { timeout: WAIT });

  await publish(account, "order-paid", { order: 1042, total: "€40" });
  await alice.waitForSelector('#events li:has-text("order-paid")', { timeout: WAIT });
  await bob.waitForSelector('#events li:has-text("order-paid")', { timeout: WAIT });
  assert.equal(await bob.getAttribute("#notification-badge", "data-count"), "0");
  const shots = join(ROOT, "target", "browser");
  mkdirSync(shots, { recursive: true });
  await alice.screenshot({ path: join(shots, "demo.png") });
  await alice.context().close();
  await bob.context().close();
});

test("a server restart while events are published: reconnecting, then every event once, in order", async () => {
  const account = `restart-${RUN}`;
  const page = await openDemo({ account, user: "alice", backoffMs: "200" });
  await waitStatus(page, "open");

  const total = 30;
  const sent = [];
  const publishing = (async () => {
    for (let i = 0; i < total; i++) {
      // While the server is down, retry until it is back: the publisher's own retry loop.
      for (;;) {
        try {
          await publish(account, "tick", { n: i, run: RUN });
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      sent.push(i);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await page.waitForSelector('#events li:has-text("\\"n\\":5,")', { timeout: WAIT });
  await server.stop();
  await waitStatus(page, "reconnecting");
  await server.start();
  await publishing;

  await page.waitForSelector(`#events li:has-text("\\"n\\":${total - 1},")`, { timeout: WAIT });
  const ticks = (await eventTexts(page))
    .filter((t) => t.includes(" tick "))
    .map((t) => JSON.parse(t.slice(t.indexOf("{"))).n)
    .reverse(); // the page shows the newest first
  assert.deepEqual(ticks, [...Array(total).keys()], "every event once, in order");
  const statuses = await page.evaluate(() => window.statuses);
  assert.ok(statuses.includes("reconnecting"), `statuses: ${statuses}`);
  assert.equal(statuses.at(-1), "open");
  await page.context().close();
});

for (const [fallback, query] of [
  ["an event stream", {}],
  ["long-poll, where event streams are blocked too", { sse: "/sse-blocked" }],
]) {
  const status = query.sse ? "polling" : "streaming";
  test(`a WebSocket route that refuses the upgrade: the page falls back to ${fallback} and still gets events`, async () => {
    const account = `blocked-${status}-${RUN}`;
    const page = await openDemo({ account, user: "alice", ws: "/ws-blocked", pollAfter: "2", backoffMs: "50", ...query });
    await waitStatus(page, status);
    const reason = await page.textContent("#reason");
    assert.match(reason, /websocket-failed/);

    await publish(account, "order-paid", { marker: `${status}-${RUN}` });
    await page.waitForSelector(`#events li:has-text("${status}-${RUN}")`, { timeout: WAIT });
    // The REST parts of the page work too.
    await page.fill('#dm input[name="to"]', "bob");
    await page.fill('#dm input[name="text"]', `sent while ${status}`);
    await page.click("#dm button");
    await page.waitForSelector(`#messages li:has-text("sent while ${status}")`, { timeout: WAIT });
    assert.equal(await page.evaluate(() => window.switchboard.status), status);
    await page.context().close();
  });
}

test("a resume point ahead of the server is dropped: resume-failed with its code, then a fresh connection", async () => {
  const account = `ahead-${RUN}`;
  const page = await openDemo({ account, user: "alice" });
  await waitStatus(page, "open");
  // A client that kept a resume point from another history (a restored database, say): on the
  // WebSocket it gets a welcome; with the WebSocket blocked, an event stream, or it long-polls.
  // Each way once.
  const ways = [
    ["/ws", true, "open"],
    ["/ws-blocked", true, "streaming"],
    ["/ws-blocked", false, "polling"],
  ];
  for (const [wsPath, sse, settled] of ways) {
    const seen = await page.evaluate(
      async ({ account, wsPath, sse, settled, wait }) => {
        const { connect } = await import("/sdk/switchboard.js");
        const getToken = async () => {
          const response = await fetch("/demo/token", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ account_id: account, user_id: "alice" }),
          });
          return (await response.json()).token;
        };
        const client = connect(location.origin, { getToken, since: 1000000, wsPath, sse, pollAfterFailures: 1, backoffBaseMs: 50 });
        const failures = [];
        client.on("resume-failed", (frame) => failures.push(`${frame.code} since ${frame.since}`));
        try {
          await new Promise((resolve, reject) => {
            client.on("status", (status) => status === settled && resolve());
            setTimeout(() => reject(new Error(`${client.status}: ${JSON.stringify(client.lastError)}`)), wait);
          });
          return { failures, lastSeq: client.lastSeq };
        } finally {
          client.close();
        }
      },
      { account, wsPath, sse, settled, wait: WAIT },
    );
    assert.deepEqual(seen.failures, ["since-in-future since 1000000"], settled);
    assert.ok(seen.lastSeq < 1000000, `${settled}: resumed from ${seen.lastSeq}`);
  }
  await page.context().close();
});

test("a ws parameter that names another origin is ignored: the token goes to this server alone", async () => {
  const reached = [];
  const elsewhere = createServer((socket) => {
    reached.push(socket.remoteAddress);
    socket.destroy();
  });
  await new Promise((resolve) => elsewhere.listen(0, "127.0.0.1", resolve));
  const other = `127.0.0.1:${elsewhere.address().port}`;
  try {
    for (const ws of [`//${other}/x`, `ws://${other}/x`, `http://${other}/x`]) {
      const page = await openDemo({ account: `ws-param-${RUN}`, user: "alice", ws });
      await waitStatus(page, "open");
      await page.context().close();
    }
    assert.deepEqual(reached, [], "the page connected to another origin");
  } finally {
    elsewhere.close();
  }
});

test("the order panel shows the followed order's events, and no other order's", async () => {
  const account = `orders-${RUN}`;
  const [alice, bob] = [await openDemo({ account, user: "alice" }), await openDemo({ account, user: "bob" })];
  await Promise.all([waitStatus(alice, "open"), waitStatus(bob, "open")]);
  await alice.fill("#order input[name=id]", "1042");
  await alice.click("#order button");
  await alice.waitForFunction(() => window.switchboard.link.followed?.has("order:1042"), null, { timeout: WAIT });

  await server.publish(account, "order-shipped", { marker: `other-${RUN}` }, "order:7");
  await server.publish(account, "order-paid", { marker: `mine-${RUN}` }, "order:1042");
  await alice.waitForSelector(`#order-events li:has-text("mine-${RUN}")`, { timeout: WAIT });
  const panel = await alice.$$eval("#order-events li", (items) => items.map((i) => i.textContent));
  assert.ok(!panel.some((t) => t.includes(`other-${RUN}`)), "another order's event in the panel");
  // Bob follows no order: the next account event is the first he sees.
  await server.publish(account, "hello", { marker: `all-${RUN}` });
  await bob.waitForSelector(`#events li:has-text("all-${RUN}")`, { timeout: WAIT });
  assert.ok(!(await eventTexts(bob)).some((t) => t.includes(`mine-${RUN}`)), "bob got the order's event");
  await Promise.all([alice.context().close(), bob.context().close()]);
});
