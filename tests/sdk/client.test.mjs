// Unit tests of the SDK's own logic — backoff, resume, token refresh, dead-connection detection,
// the long-poll fallback — with Node's test runner: `node --test tests/sdk/`. The network is
// replaced by a scripted WebSocket and fetch; the browser tests (tests/browser) run the same
// module against a real server.

import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, connect, tokenExpiry, DEFAULTS } from "../../src/sdk/switchboard.js";
import { json, jwt, network, tick, tokenOf, until, welcome } from "./fakes.mjs";

test("backoff: full jitter under a ceiling that doubles per attempt up to the maximum", () => {
  const options = { backoffBaseMs: 500, backoffMaxMs: 30000 };
  assert.equal(backoffDelay(0, options, () => 0), 0);
  assert.equal(backoffDelay(0, options, () => 0.999999), 499);
  assert.equal(backoffDelay(3, options, () => 0.999999), 3999);
  assert.equal(backoffDelay(10, options, () => 0.999999), 29999);
  assert.equal(backoffDelay(1000, options, () => 0.5), 15000);
  for (let attempt = 0; attempt < 20; attempt++) {
    const d = backoffDelay(attempt, DEFAULTS);
    assert.ok(d >= 0 && d < DEFAULTS.backoffMaxMs);
  }
});

test("tokenExpiry reads exp, and null for what is not a JWT", () => {
  assert.equal(tokenExpiry(jwt({ exp: 1700000000 })), 1700000000000);
  assert.equal(tokenExpiry(jwt({ sub: "x" })), null);
  assert.equal(tokenExpiry("not a token"), null);
});

test("resume: reconnects from the last delivered seq; replayed events are not handed over twice", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t1", random: () => 0, ...net });
  const got = [];
  const statuses = [];
  client.on("tick", (data) => got.push(data.n));
  client.on("status", (s) => statuses.push(s));
  await until(() => net.sockets.length === 1, "the first socket");
  const first = net.sockets[0];
  assert.equal(first.url.pathname, "/ws");
  assert.equal(tokenOf(first), "t1");
  assert.equal(first.url.searchParams.get("since"), null);
  first.frame(welcome(5));
  first.frame({ type: "event", seq: 6, event: "tick", data: { n: 6 } });
  first.frame({ type: "event", seq: 7, event: "tick", data: { n: 7 } });
  first.drop();

  await until(() => net.sockets.length === 2, "a reconnect");
  const second = net.sockets[1];
  assert.equal(second.url.searchParams.get("since"), "7");
  second.frame(welcome(9, { resumed: true, since: 7 }));
  second.frame({ type: "event", seq: 7, event: "tick", data: { n: 7 } }); // a repeat
  second.frame({ type: "event", seq: 8, event: "tick", data: { n: 8 } });
  second.frame({ type: "event", seq: 9, event: "tick", data: { n: 9 } });
  assert.deepEqual(got, [6, 7, 8, 9]);
  assert.deepEqual(statuses, ["open", "reconnecting", "open"]);
  assert.equal(client.lastSeq, 9);
  client.close();
});

test("resume-failed tells the app, and live events carry on after its seq", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", since: 2, random: () => 0, ...net });
  const failures = [];
  client.on("resume-failed", (frame) => failures.push(frame));
  await until(() => net.sockets.length === 1, "a socket");
  assert.equal(net.sockets[0].url.searchParams.get("since"), "2");
  net.sockets[0].frame(welcome(1041, { resumed: false, since: 2 }));
  net.sockets[0].frame({ type: "resume-failed", since: 2, oldest_seq: 900, seq: 1041 });
  assert.equal(failures.length, 1);
  assert.equal(client.lastSeq, 1041);
  client.close();
});

test("an expired token: the failed upgrade is explained by the probe, and getToken is called again", async () => {
  let issued = 0;
  const net = network({
    probe: (url, init) =>
      init.headers.authorization === "Bearer old"
        ? json(401, { error: { code: "token-expired", message: "the token has expired" } })
        : json(200, { events: [], since: 0 }),
  });
  const client = connect("http://sb.test", {
    getToken: () => (issued++ === 0 ? "old" : "new"),
    random: () => 0,
    ...net,
  });
  const reasons = [];
  client.on("status", (status, reason) => reasons.push(`${status}:${reason?.code ?? ""}`));
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].drop(1006); // the upgrade was refused: no welcome
  await until(() => net.sockets.length === 2, "a retry");
  assert.equal(tokenOf(net.sockets[1]), "new");
  assert.equal(issued, 2);
  assert.deepEqual(reasons, ["reconnecting:token-expired"]);
  net.sockets[1].frame(welcome(0));
  assert.equal(client.status, "open");
  assert.equal(client.lastError, null);
  client.close();
});

test("token-expiring: a fresh token is fetched and sent in place, without reconnecting", async () => {
  const net = network();
  const tokens = ["first", "second", "third"];
  const client = connect("http://sb.test", { getToken: () => tokens.shift(), random: () => 0, ...net });
  await until(() => net.sockets.length === 1, "a socket");
  const ws = net.sockets[0];
  ws.frame(welcome(0));
  ws.frame({ type: "token-expiring", expires_at: 1700000000 });
  await until(() => ws.sent.some((f) => f.type === "auth"), "an auth frame");
  const auth = ws.sent.find((f) => f.type === "auth");
  assert.equal(auth.token, "second");
  ws.frame({ type: "authenticated", ref: auth.ref, expires_at: 1700003600 });
  assert.equal(net.sockets.length, 1);
  assert.equal(client.status, "open");

  // Closed for an expired token anyway (4002): the reconnect asks for another one.
  ws.drop(4002);
  await until(() => net.sockets.length === 2, "a reconnect");
  assert.equal(tokenOf(net.sockets[1]), "third");
  assert.equal(client.lastError.code, "token-expired");
  client.close();
});

test("a token whose exp has passed is refreshed before connecting", async () => {
  const net = network();
  const tokens = [jwt({ exp: Math.floor(Date.now() / 1000) - 60 }), "fresh"];
  const client = connect("http://sb.test", { getToken: () => tokens.shift(), random: () => 0, ...net });
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].frame(welcome(0));
  net.sockets[0].drop(1001);
  await until(() => net.sockets.length === 2, "a reconnect");
  assert.equal(tokenOf(net.sockets[1]), "fresh");
  client.close();
});

test("a dead connection (no answer to pings) is dropped and reconnected", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, ...net });
  const statuses = [];
  client.on("status", (s, reason) => statuses.push(`${s}:${reason?.code ?? ""}`));
  await until(() => net.sockets.length === 1, "a socket");
  const dead = net.sockets[0];
  dead.frame(welcome(0, { heartbeat_interval_ms: 200, client_timeout_ms: 300 }));
  await until(() => dead.sent.some((f) => f.type === "ping"), "a ping");
  // The server never answers.
  await until(() => net.sockets.length === 2, "a reconnect after the timeout");
  assert.equal(dead.closed, 4000);
  assert.deepEqual(statuses, ["open:", "reconnecting:heartbeat-timeout"]);
  client.close();
});

test("presence changes announced together reach the app one by one", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, ...net });
  const seen = [];
  client.on("user-online", ({ user_id }) => seen.push(`+${user_id}`));
  client.on("user-offline", ({ user_id }) => seen.push(`-${user_id}`));
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].frame(welcome(0));
  net.sockets[0].frame({ type: "event", event: "user-online", data: { user_id: "a" } });
  net.sockets[0].frame({ type: "event", event: "presence-changed", data: { online: ["b", "c"], offline: ["a"] } });
  assert.deepEqual(seen, ["+a", "+b", "+c", "-a"]);
  client.close();
});

test("close() stops everything: no timer left, no more pings, no reconnect", async () => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  const before = timers();
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, ...net });
  await until(() => net.sockets.length === 1, "a socket");
  const ws = net.sockets[0];
  ws.frame(welcome(0, { heartbeat_interval_ms: 100, client_timeout_ms: 10000 }));
  await until(() => ws.sent.some((f) => f.type === "ping"), "a ping");
  client.close();
  assert.equal(timers(), before, "a timer outlives the client");
  const sent = ws.sent.length;
  await tick(250);
  assert.equal(ws.sent.length, sent, "pinged after close");
  assert.equal(net.sockets.length, 1, "reconnected after close");
  assert.equal(client.status, "closed");
});

test("requests: send resolves with the ack and rejects with the server's error code", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, ...net });
  await until(() => net.sockets.length === 1, "a socket");
  const ws = net.sockets[0];
  ws.frame(welcome(0));
  const ok = client.send("conv_1", "hi", { clientMsgId: "c-1" });
  const refused = client.send("conv_2", "hi");
  const [a, b] = ws.sent.filter((f) => f.type === "send");
  assert.equal(a.client_msg_id, "c-1");
  ws.frame({ type: "ack", ref: a.ref, conversation_id: "conv_1", message_id: "msg_1", seq: 3 });
  ws.frame({ type: "error", ref: b.ref, code: "not-a-participant", message: "no" });
  assert.equal((await ok).message_id, "msg_1");
  await assert.rejects(refused, { code: "not-a-participant" });
  client.close();
});

test("repeated WebSocket failures switch to long-poll, and a working WebSocket switches back", async () => {
  let polls = 0;
  const net = network({
    poll: async (url) => {
      polls++;
      const since = Number(url.searchParams.get("since"));
      if (since < 3) return json(200, { events: [{ type: "event", seq: since + 1, event: "tick", data: { n: since + 1 } }], since: since + 1 });
      await tick(20);
      return json(200, { events: [], since });
    },
  });
  const client = connect("http://sb.test", {
    getToken: () => "t",
    random: () => 0,
    pollAfterFailures: 2,
    wsRetryWhilePollingMs: 100,
    ...net,
  });
  const got = [];
  client.on("tick", (d) => got.push(d.n));
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].drop();
  await until(() => net.sockets.length === 2, "a retry");
  net.sockets[1].drop();
  await until(() => client.status === "polling", "polling");
  assert.equal(client.lastError.code, "websocket-failed");
  await until(() => got.length === 3, "events by long-poll");
  assert.deepEqual(got, [1, 2, 3]);

  // The WebSocket is tried again while polling; once it works, polling stops.
  await until(() => net.sockets.length === 3, "a WebSocket retry");
  assert.equal(net.sockets[2].url.searchParams.get("since"), "3");
  net.sockets[2].frame(welcome(3, { resumed: true, since: 3 }));
  assert.equal(client.status, "open");
  const pollsAtSwitch = polls;
  await tick(100);
  assert.ok(polls <= pollsAtSwitch + 1, "polling stopped");
  net.sockets[2].frame({ type: "event", seq: 4, event: "tick", data: { n: 4 } });
  assert.deepEqual(got, [1, 2, 3, 4]);
  client.close();
});

test("long-polling from scratch starts from now, not from the account's history", async () => {
  const asked = [];
  let answerNow;
  const firstAnswer = new Promise((resolve) => (answerNow = resolve));
  const net = network({
    poll: async (url) => {
      asked.push(url.search);
      if (!url.searchParams.has("since")) {
        await firstAnswer;
        return json(200, { events: [], since: 41 });
      }
      await tick(20);
      return json(200, { events: [], since: Number(url.searchParams.get("since")) });
    },
  });
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, pollAfterFailures: 1, ...net });
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].drop();
  await until(() => asked.length === 1, "the first poll");
  // Not `polling` until the server has said where "now" is: what is published before that is
  // not this client's to receive, and the app must not think it is receiving yet.
  assert.notEqual(client.status, "polling");
  answerNow();
  await until(() => asked.length >= 2, "two polls");
  assert.equal(client.status, "polling");
  assert.equal(asked[0], "");
  assert.match(asked[1], /since=41/);
  assert.equal(client.lastSeq, 41);
  client.close();
});

test("an unreachable server is reported as such, and never triggers the long-poll fallback", async () => {
  const net = network({
    probe: () => {
      throw new TypeError("fetch failed");
    },
  });
  const client = connect("http://sb.test", { getToken: () => "t", random: () => 0, pollAfterFailures: 1, ...net });
  for (let i = 1; i <= 3; i++) {
    await until(() => net.sockets.length === i, `attempt ${i}`);
    net.sockets[i - 1].drop();
  }
  await until(() => client.lastError?.code === "server-unreachable", "the reason");
  assert.equal(client.status, "reconnecting");
  client.close();
  assert.equal(client.status, "closed");
});

for (const code of ["since-in-future", "invalid-since"]) {
  test(`a resume point the server refuses (${code}) is dropped: resume-failed with the code, then a fresh connect`, async (t) => {
    // The server's history is not the one the client knew (a restored database): every question
    // with the old resume point is refused.
    const net = network({
      probe: (url) =>
        url.searchParams.get("since") === "5000"
          ? json(400, { error: { code, message: "refused" } })
          : json(200, { events: [], since: 41 }),
    });
    const client = connect("http://sb.test", { getToken: () => "t", since: 5000, random: () => 0, ...net });
    t.after(() => client.close());
    const failures = [];
    const statuses = [];
    client.on("resume-failed", (frame) => failures.push(frame));
    client.on("status", (s, reason) => statuses.push(`${s}:${reason?.code ?? ""}`));
    await until(() => net.sockets.length === 1, "a socket");
    assert.equal(net.sockets[0].url.searchParams.get("since"), "5000");
    net.sockets[0].drop(1006); // the upgrade was refused: no welcome

    await until(() => net.sockets.length === 2, "a fresh connect");
    assert.equal(net.sockets[1].url.searchParams.get("since"), null, "connected afresh");
    assert.deepEqual(failures, [{ type: "resume-failed", code, message: "refused", since: 5000 }]);
    assert.equal(client.lastSeq, null);
    net.sockets[1].frame(welcome(41));
    assert.equal(client.status, "open");
    assert.equal(client.lastSeq, 41);
    assert.deepEqual(statuses, [`reconnecting:${code}`, "open:"]);
    // Asked once: no loop on the refused point.
    assert.equal(net.fetches.length, 1);
    await tick(50);
    assert.equal(net.sockets.length, 2);
    client.close();
  });
}

test("a resume point the long-poll refuses is dropped: resume-failed with the code, then polling from now", async (t) => {
  const asked = [];
  const net = network({
    poll: async (url) => {
      asked.push(url.search);
      const since = url.searchParams.get("since");
      if (since === null) return json(200, { events: [], since: 41 });
      if (since === "5000") return json(400, { error: { code: "since-in-future", message: "ahead" } });
      await tick(20);
      return json(200, { events: [], since: Number(since) });
    },
  });
  const client = connect("http://sb.test", {
    getToken: () => "t",
    since: 5000,
    random: () => 0,
    pollAfterFailures: 1,
    ...net,
  });
  t.after(() => client.close());
  const failures = [];
  client.on("resume-failed", (frame) => failures.push(frame));
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].drop(); // the WebSocket is blocked; the probe does not say why
  await until(() => client.status === "polling", "polling");
  await until(() => asked.length >= 3, "three polls");
  assert.deepEqual(asked.slice(0, 3), ["?since=5000&timeout=25", "", "?since=41&timeout=25"]);
  assert.deepEqual(failures, [{ type: "resume-failed", code: "since-in-future", message: "ahead", since: 5000 }]);
  assert.equal(client.lastSeq, 41);
  client.close();
});

test("resume-failed for history that is gone carries its code too", async (t) => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t", since: 2, random: () => 0, ...net });
  t.after(() => client.close());
  const failures = [];
  client.on("resume-failed", (frame) => failures.push(frame));
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].frame(welcome(1041, { resumed: false, since: 2 }));
  net.sockets[0].frame({ type: "resume-failed", since: 2, oldest_seq: 900, seq: 1041 });
  assert.equal(failures[0].code, "resume-failed");
  client.close();
});

test("channels: subscribe follows on every connection, hands the channel's events to its handlers, and a reconnect resumes them without loss or repeat", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t1", random: () => 0, ...net });
  const got = [];
  const stop = client.subscribe("order:7", (data, frame) => got.push([frame.seq, data.n]));
  await until(() => net.sockets.length === 1, "the first socket");
  const first = net.sockets[0];
  assert.equal(first.url.searchParams.get("channels"), null);
  first.frame(welcome(5));
  await until(() => first.sent.some((f) => f.type === "subscribe"), "a subscribe");
  const subscribe = first.sent.find((f) => f.type === "subscribe");
  assert.equal(subscribe.channel, "order:7");
  first.frame({ type: "subscribed", ref: subscribe.ref, channel: "order:7", seq: 5 });
  first.frame({ type: "event", seq: 6, channel: "order:7", event: "paid", data: { n: 6 } });
  first.frame({ type: "event", seq: 7, event: "other", data: { n: 7 } });
  first.drop();

  // The reconnect names the channel, so the replay after `since` covers it.
  await until(() => net.sockets.length === 2, "a reconnect");
  const second = net.sockets[1];
  assert.equal(second.url.searchParams.get("since"), "7");
  assert.equal(second.url.searchParams.get("channels"), "order:7");
  second.frame(welcome(9, { resumed: true, since: 7, channels: ["order:7"] }));
  second.frame({ type: "event", seq: 6, channel: "order:7", event: "paid", data: { n: 6 } }); // a repeat
  second.frame({ type: "event", seq: 8, channel: "order:7", event: "paid", data: { n: 8 } });
  assert.deepEqual(got, [[6, 6], [8, 8]]);

  // Stopped: the channel is left, and its events no longer reach the handler.
  stop();
  const unsubscribe = second.sent.find((f) => f.type === "unsubscribe");
  assert.equal(unsubscribe?.channel, "order:7");
  second.frame({ type: "event", seq: 10, channel: "order:7", event: "paid", data: { n: 10 } });
  assert.deepEqual(got, [[6, 6], [8, 8]]);
  client.close();
});

test("channels: one the server refuses, or stops allowing, is dropped and the app told", async () => {
  const net = network();
  const client = connect("http://sb.test", { getToken: () => "t1", random: () => 0, ...net });
  const failed = [];
  client.on("subscribe-failed", (f) => failed.push([f.channel, f.code]));
  client.subscribe("doc:1", () => {});
  client.subscribe("order:1", () => {});
  await until(() => net.sockets.length === 1, "the first socket");
  const socket = net.sockets[0];
  socket.frame(welcome(1));
  await until(() => socket.sent.filter((f) => f.type === "subscribe").length === 2, "two subscribes");
  const [doc, order] = socket.sent.filter((f) => f.type === "subscribe");
  socket.frame({ type: "error", ref: doc.ref, code: "channel-forbidden", message: "no" });
  socket.frame({ type: "subscribed", ref: order.ref, channel: "order:1", seq: 1 });
  await until(() => failed.length === 1, "doc:1 refused");
  socket.frame({ type: "unsubscribed", channel: "order:1", reason: "channel-forbidden" });
  assert.deepEqual(failed, [["doc:1", "channel-forbidden"], ["order:1", "channel-forbidden"]]);
  assert.deepEqual([...client.channels.keys()], []);
  client.close();
});
