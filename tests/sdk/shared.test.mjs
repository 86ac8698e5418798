// Unit tests of `shared: true`: the tabs of one browser that use one server as one user share a
// connection — elected by Web Locks with a BroadcastChannel, or in a SharedWorker. Tabs are
// clients with their own locks and channels over one fake browser (tests/sdk/fakes.mjs); the
// network is the scripted one. The browser tests run the same in Chromium against a real server.

import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, serveSharedWorker, tokenIdentity } from "../../src/sdk/switchboard.js";
import { browser, json, jwt, network, sharedWorkers, tick, tokenOf, until, welcome } from "./fakes.mjs";

const hourFromNow = () => Math.floor(Date.now() / 1000) + 3600;

/** Tokens as a backend issues them, numbered so a test can tell which was used, and counted per tab. */
function issuer(claims = { account_id: "acme", sub: "alice" }) {
  let issued = 0;
  const calls = new Map();
  return {
    calls,
    /** getToken for tab `tab`. */
    for: (tab) => () => {
      calls.set(tab, (calls.get(tab) ?? 0) + 1);
      return jwt({ ...claims, exp: hourFromNow(), n: ++issued });
    },
    get issued() {
      return issued;
    },
  };
}

const numberOf = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url")).n;
const tickEvent = (n) => ({ type: "event", seq: n, event: "tick", data: { n } });

/** A tab of browser `b` that connects with `shared: true`, and what it is handed. */
function openTab(b, net, getToken, options = {}) {
  const { runtime, kill } = b.tab();
  const client = connect("http://sb.test", { shared: true, getToken, random: () => 0, ...net, ...runtime, ...options });
  const tab = { client, got: [], statuses: [], failures: [], kill };
  client.on("tick", (data) => tab.got.push(data.n));
  client.on("status", (status, reason) => tab.statuses.push(`${status}:${reason?.code ?? ""}`));
  client.on("resume-failed", (frame) => tab.failures.push(frame));
  return tab;
}

/** `count` tabs of one browser; `runtimeOf(i)` replaces a tab's locks, channels and worker. */
function tabs(count, { net, tokens, runtimeOf }) {
  const b = browser();
  return Array.from({ length: count }, (_, i) => openTab(b, net, tokens.for(i), runtimeOf?.(i)));
}

const closeAll = (opened) => opened.forEach(({ client }) => client.close());

test("tokenIdentity reads account_id and sub, as strings", () => {
  assert.deepEqual(tokenIdentity(jwt({ account_id: "acme", sub: "alice" })), { account: "acme", user: "alice" });
  assert.deepEqual(tokenIdentity(jwt({ account_id: 7, sub: 42 })), { account: "7", user: "42" });
  assert.deepEqual(tokenIdentity(jwt({ account_id: "acme", sub: "zoë" })), { account: "acme", user: "zoë" });
  assert.equal(tokenIdentity(jwt({ sub: "alice" })), null);
  assert.equal(tokenIdentity("opaque"), null);
});

test("shared: three tabs, one connection; every tab gets every event once, in order, and its own answers", async (t) => {
  const net = network();
  const tokens = issuer();
  const opened = tabs(3, { net, tokens });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 1, "the shared socket");
  const ws = net.sockets[0];
  ws.frame(welcome(5));
  await until(() => opened.every(({ client }) => client.status === "open"), "every tab open");
  assert.deepEqual(opened.map(({ client }) => client.shared).sort(), ["follower", "follower", "leader"]);

  for (const n of [6, 7, 8]) ws.frame(tickEvent(n));
  ws.frame(tickEvent(7)); // a repeat
  ws.frame(tickEvent(9));
  await until(() => opened.every(({ got }) => got.length >= 4), "four events in every tab");
  await tick(10);
  for (const { got } of opened) assert.deepEqual(got, [6, 7, 8, 9]);
  for (const { client } of opened) assert.equal(client.lastSeq, 9);

  // Each tab's requests go over the one socket, and each gets its own answer.
  const sends = opened.map(({ client }, i) => client.send("conv_1", `from ${i}`, { clientMsgId: `c-${i}` }));
  const refused = opened[2].client.markRead("conv_2");
  const requests = () => ws.sent.filter((f) => f.type === "send" || f.type === "read");
  await until(() => requests().length === 4, "four requests on the socket");
  for (const f of ws.sent.filter((f) => f.type === "send")) {
    ws.frame({ type: "ack", ref: f.ref, conversation_id: "conv_1", message_id: `msg-${f.client_msg_id}` });
  }
  const read = ws.sent.find((f) => f.type === "read");
  ws.frame({ type: "error", ref: read.ref, code: "not-a-participant", message: "no" });
  assert.deepEqual((await Promise.all(sends)).map((ack) => ack.message_id), ["msg-c-0", "msg-c-1", "msg-c-2"]);
  await assert.rejects(refused, { name: "SwitchboardError", code: "not-a-participant" });
  const leader = opened.find(({ client }) => client.shared === "leader");
  const follower = opened.find(({ client }) => client.shared === "follower");
  follower.client.typing("conv_1");
  await until(() => ws.sent.some((f) => f.type === "typing"), "typing from a follower");

  // One token each, to learn whose it is; the connection used the leader's.
  assert.deepEqual([...tokens.calls.values()], [1, 1, 1]);
  assert.equal(numberOf(tokenOf(ws)), opened.indexOf(leader) + 1);
  assert.equal(net.sockets.length, 1);
});

test("shared: a token is refreshed once for all tabs, by the leader's getToken", async (t) => {
  let refuse = null;
  const net = network({
    probe: (url, init) =>
      init.headers.authorization === `Bearer ${refuse}`
        ? json(401, { error: { code: "token-expired", message: "expired" } })
        : json(200, { users: ["alice"], events: [], since: 0 }),
  });
  const tokens = issuer();
  const opened = tabs(3, { net, tokens });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 1, "the shared socket");
  const ws = net.sockets[0];
  ws.frame(welcome(0));
  await until(() => opened.every(({ client }) => client.status === "open"), "every tab open");
  const leader = opened.findIndex(({ client }) => client.shared === "leader");

  ws.frame({ type: "token-expiring", expires_at: 1 });
  await until(() => ws.sent.some((f) => f.type === "auth"), "an auth frame");
  const auth = ws.sent.find((f) => f.type === "auth");
  ws.frame({ type: "authenticated", ref: auth.ref, expires_at: hourFromNow() });
  assert.equal(tokens.issued, 4);
  assert.equal(tokens.calls.get(leader), 2);
  assert.equal(numberOf(auth.token), 4);

  // Two followers' REST calls meet the refused token together: one new token serves both.
  refuse = auth.token;
  const followers = opened.filter(({ client }) => client.shared === "follower");
  const answers = await Promise.all(followers.map(({ client }) => client.rest("GET", "/api/v1/presence")));
  assert.deepEqual(answers.map((a) => a.users), [["alice"], ["alice"]]);
  assert.equal(tokens.issued, 5);
  assert.equal(tokens.calls.get(leader), 3);
  for (const { client } of followers) assert.equal(tokens.calls.get(opened.findIndex((o) => o.client === client)), 1);
  await tick(20);
  assert.equal(ws.sent.filter((f) => f.type === "auth").length, 1);
});

test("shared: a getToken that answers for another user is not used for the group", async (t) => {
  const net = network();
  let user = "alice";
  const getToken = () => jwt({ account_id: "acme", sub: user, exp: hourFromNow() });
  const { client } = openTab(browser(), net, getToken);
  t.after(() => client.close());
  await until(() => net.sockets.length === 1, "a socket");
  net.sockets[0].frame(welcome(0));
  await until(() => client.status === "open", "open");
  user = "bob"; // the app's session changed hands in another tab
  net.sockets[0].frame({ type: "token-expiring", expires_at: 1 });
  await tick(20);
  assert.equal(net.sockets[0].sent.filter((f) => f.type === "auth").length, 0, "bob's token sent on alice's session");
  await assert.rejects(client.rest("GET", "/api/v1/presence"), {
    code: "get-token-failed",
    message: /another account or user/,
  });
});

test("shared: when the leader tab goes, another leads, resumes from the last event relayed, and nothing is lost or repeated", async (t) => {
  const net = network();
  const tokens = issuer();
  const opened = tabs(3, { net, tokens });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 1, "the shared socket");
  const first = net.sockets[0];
  first.frame(welcome(0));
  await until(() => opened.every(({ client }) => client.status === "open"), "every tab open");
  for (let n = 1; n <= 5; n++) first.frame(tickEvent(n));
  await until(() => opened.every(({ got }) => got.length === 5), "five events everywhere");

  // The leader's tab is closed: its lock goes with it, and it says nothing more.
  const old = opened.find(({ client }) => client.shared === "leader");
  old.kill();
  old.client.close();
  const rest = opened.filter((o) => o !== old);
  await until(() => net.sockets.length === 2, "the new leader's socket");
  const second = net.sockets[1];
  assert.equal(second.url.searchParams.get("since"), "5");
  assert.equal(rest.filter(({ client }) => client.shared === "leader").length, 1);
  // Published while no tab was connected, replayed; the replay repeats what a follower has.
  second.frame(welcome(8, { resumed: true, since: 5 }));
  for (const n of [5, 6, 7, 8]) second.frame(tickEvent(n));
  second.frame(tickEvent(9));
  await until(() => rest.every(({ got }) => got.length >= 9), "every event in the tabs left");
  await tick(10);
  for (const { got, statuses } of rest) {
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(statuses.at(-1), "open:");
  }
  assert.equal(net.sockets.length, 2);
  // The new leader began with the token it had: no one asked for another.
  assert.equal(tokens.issued, 3);
});

test("shared: a leader that closes its client hands over; a request waiting on it fails as disconnected", async (t) => {
  const net = network();
  const opened = tabs(2, { net, tokens: issuer() });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 1, "the shared socket");
  net.sockets[0].frame(welcome(3));
  await until(() => opened.every(({ client }) => client.status === "open"), "both open");
  const leader = opened.find(({ client }) => client.shared === "leader");
  const follower = opened.find(({ client }) => client.shared === "follower");
  const waiting = follower.client.presence();
  await until(() => net.sockets[0].sent.some((f) => f.type === "presence"), "the follower's request on the socket");
  leader.client.close();
  await assert.rejects(waiting, { code: "disconnected" });
  await until(() => net.sockets.length === 2, "the follower's own socket");
  assert.equal(follower.client.shared, "leader");
  assert.equal(net.sockets[1].url.searchParams.get("since"), "3");
  net.sockets[1].frame(welcome(3, { resumed: true, since: 3 }));
  await until(() => follower.client.status === "open", "open again");
  assert.deepEqual(follower.statuses, ["open:", "reconnecting:connection-lost", "open:"]);
});

test("shared: a tab whose token names another user does not join the group", async (t) => {
  const net = network();
  const alice = issuer({ account_id: "acme", sub: "alice" });
  const bob = issuer({ account_id: "acme", sub: "bob" });
  const opened = tabs(3, { net, tokens: { for: (i) => (i === 1 ? bob.for(i) : alice.for(i)) } });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 2, "two sockets");
  await tick(20);
  assert.equal(net.sockets.length, 2);
  const users = net.sockets.map((ws) => tokenIdentity(tokenOf(ws)).user).sort();
  assert.deepEqual(users, ["alice", "bob"]);
  const alices = net.sockets.find((ws) => tokenIdentity(tokenOf(ws)).user === "alice");
  alices.frame(welcome(0));
  alices.frame(tickEvent(1));
  await until(() => opened[0].got.length === 1 && opened[2].got.length === 1, "alice's tabs");
  await tick(10);
  assert.deepEqual(opened[1].got, []);
});

test("shared: a tab that joins behind the group fetches what it missed, then takes live events in order", async (t) => {
  let answerCatchUp;
  const catchUpAnswered = new Promise((resolve) => (answerCatchUp = resolve));
  const asked = [];
  const net = network({
    probe: async (url, init) => {
      asked.push({ since: url.searchParams.get("since"), token: init.headers.authorization });
      if (url.searchParams.get("since") === "17") {
        await catchUpAnswered;
        // Read up to the head: 21 too, which also came live.
        return json(200, { events: [18, 19, 20, 21].map(tickEvent), since: 21 });
      }
      return json(200, { events: [], since: Number(url.searchParams.get("since")) });
    },
  });
  const tokens = issuer();
  const b = browser();
  const a = openTab(b, net, tokens.for(0));
  t.after(() => a.client.close());
  await until(() => net.sockets.length === 1, "the shared socket");
  const ws = net.sockets[0];
  ws.frame(welcome(20));
  await until(() => a.client.status === "open", "the leader open");

  const late = openTab(b, net, tokens.for(1), { since: 17 }); // reopened with the point it kept
  t.after(() => late.client.close());
  await until(() => asked.length === 1, "the catch-up");
  ws.frame(tickEvent(21)); // live while the late tab catches up
  await until(() => a.got.length === 1, "the leader's live event");
  await tick(10);
  assert.deepEqual(late.got, [], "a live event before what was missed");
  answerCatchUp();
  await until(() => late.got.length === 4, "what was missed, then live");
  assert.deepEqual(late.got, [18, 19, 20, 21]);
  assert.deepEqual(a.got, [21]);
  await tick(10);
  assert.deepEqual(late.got, [18, 19, 20, 21]);
  assert.deepEqual(asked.map((q) => q.since), ["17", "21"]);
  // With the group's token: the late tab asked its backend once, for its first.
  assert.equal(asked[0].token, `Bearer ${tokenOf(ws)}`);
  assert.equal(tokens.calls.get(1), 1);
  assert.equal(net.sockets.length, 1);
});

test("shared: a tab that cannot fetch what it missed says resume-failed and goes on live", async (t) => {
  const net = network({
    probe: (url) =>
      url.searchParams.get("since") === "2"
        ? json(503, { error: { code: "overloaded", message: "busy" } })
        : json(200, { events: [], since: 0 }),
  });
  const tokens = issuer();
  const b = browser();
  const leader = openTab(b, net, tokens.for(0)).client;
  t.after(() => leader.close());
  await until(() => net.sockets.length === 1, "the shared socket");
  net.sockets[0].frame(welcome(10));
  await until(() => leader.status === "open", "open");
  const { client: late, failures, got } = openTab(b, net, tokens.for(1), { since: 2, backoffBaseMs: 1 });
  t.after(() => late.close());
  await until(() => failures.length === 1, "resume-failed");
  assert.equal(failures[0].code, "resume-failed");
  assert.match(failures[0].message, /overloaded/);
  assert.equal(net.fetches.filter((f) => f.url.searchParams.get("since") === "2").length, 5);
  assert.equal(late.lastSeq, 10, "carries on from the group's point");
  net.sockets[0].frame(tickEvent(11));
  await until(() => got.length === 1, "live events after it");
  assert.deepEqual(got, [11]);
});

test("shared: a tab that falls too far behind while it catches up gives up what it held, says resume-failed, and goes on live", async (t) => {
  const net = network({
    // The catch-up never gets an answer.
    probe: (url) => (url.searchParams.get("since") === "1" ? new Promise(() => {}) : json(200, { events: [], since: 0 })),
  });
  const tokens = issuer();
  const b = browser();
  const leader = openTab(b, net, tokens.for(0)).client;
  t.after(() => leader.close());
  await until(() => net.sockets.length === 1, "the shared socket");
  const ws = net.sockets[0];
  ws.frame(welcome(5));
  await until(() => leader.status === "open", "open");
  const { client: late, failures, got } = openTab(b, net, tokens.for(1), { since: 1 });
  t.after(() => late.close());
  await until(() => net.fetches.some((f) => f.url.searchParams.get("since") === "1"), "the catch-up");
  const last = 5 + 10001; // one more than a tab holds
  for (let n = 6; n <= last; n++) ws.frame(tickEvent(n));
  await until(() => failures.length === 1, "resume-failed", 5000);
  assert.match(failures[0].message, /fell behind/);
  assert.deepEqual(got, []);
  assert.equal(late.lastSeq, last);
  ws.frame(tickEvent(last + 1));
  await until(() => got.length === 1, "live events after it");
  assert.deepEqual(got, [last + 1]);
});

test("shared: without locks, channels or SharedWorker each tab connects alone", async (t) => {
  const net = network();
  const tokens = issuer();
  const opened = tabs(2, {
    net,
    tokens,
    runtimeOf: () => ({ locks: undefined, BroadcastChannel: undefined, SharedWorker: undefined }),
  });
  t.after(() => closeAll(opened));
  await until(() => net.sockets.length === 2, "two sockets");
  assert.deepEqual(opened.map(({ client }) => client.shared), [null, null]);
  // The first token, asked to learn whose it is, is the one the connection uses.
  assert.equal(tokens.issued, 2);
});

test("shared worker: one connection for three tabs; a token is asked of one tab, and of a present one", async (t) => {
  const net = network();
  const tokens = issuer();
  const workers = sharedWorkers(serveSharedWorker, { WebSocket: net.WebSocket, fetch: net.fetch, random: () => 0 });
  const opened = tabs(3, {
    net,
    tokens,
    runtimeOf: () => ({ SharedWorker: workers.SharedWorker, locks: undefined, BroadcastChannel: undefined }),
  });
  t.after(() => {
    closeAll(opened);
    workers.shut();
  });
  await until(() => net.sockets.length === 1, "the worker's socket");
  assert.equal(workers.workers.size, 1);
  const ws = net.sockets[0];
  ws.frame(welcome(0));
  await until(() => opened.every(({ client }) => client.status === "open"), "every tab open");
  assert.deepEqual(opened.map(({ client }) => client.shared), ["worker", "worker", "worker"]);
  for (let n = 1; n <= 4; n++) ws.frame(tickEvent(n));
  await until(() => opened.every(({ got }) => got.length === 4), "every event everywhere");
  for (const { got } of opened) assert.deepEqual(got, [1, 2, 3, 4]);
  const acks = opened.map(({ client }, i) => client.send("conv_1", "hi", { clientMsgId: `w-${i}` }));
  await until(() => ws.sent.filter((f) => f.type === "send").length === 3, "three sends");
  for (const f of ws.sent.filter((f) => f.type === "send")) {
    ws.frame({ type: "ack", ref: f.ref, conversation_id: "conv_1", message_id: f.client_msg_id });
  }
  assert.deepEqual((await Promise.all(acks)).map((a) => a.message_id), ["w-0", "w-1", "w-2"]);

  // The worker asks the first tab still there, once for all.
  ws.frame({ type: "token-expiring", expires_at: 1 });
  await until(() => ws.sent.some((f) => f.type === "auth"), "an auth frame");
  assert.deepEqual([0, 1, 2].map((i) => tokens.calls.get(i)), [2, 1, 1]);
  opened[0].client.close();
  await tick(10);
  ws.frame({ type: "token-expiring", expires_at: 1 });
  await until(() => ws.sent.filter((f) => f.type === "auth").length === 2, "a second auth frame");
  assert.deepEqual([0, 1, 2].map((i) => tokens.calls.get(i)), [2, 2, 1]);
  ws.frame(tickEvent(5));
  await until(() => opened[1].got.length === 5 && opened[2].got.length === 5, "the tabs left");
  assert.deepEqual(opened[0].got, [1, 2, 3, 4]);
  assert.equal(net.sockets.length, 1);

  // The last tab to leave closes the connection.
  opened[1].client.close();
  await tick(10);
  assert.equal(ws.closed, undefined);
  opened[2].client.close();
  await until(() => ws.closed === 1000, "the worker's socket closed");
});

test("shared worker: a worker that cannot start (throws, or fails before a word) leaves the tabs to elect a leader", async (t) => {
  class Refused {
    constructor() {
      throw new Error("SecurityError");
    }
  }
  class FailsToLoad {
    constructor() {
      this.port = { postMessage() {}, close() {} };
      setImmediate(() => this.onerror?.({ message: "module workers unsupported" }));
    }
  }
  for (const SharedWorker of [Refused, FailsToLoad]) {
    const net = network();
    const opened = tabs(2, { net, tokens: issuer(), runtimeOf: () => ({ SharedWorker }) });
    t.after(() => closeAll(opened));
    await until(() => net.sockets.length === 1, `${SharedWorker.name}: the leader's socket`);
    net.sockets[0].frame(welcome(0));
    await until(() => opened.every(({ client }) => client.status === "open"), `${SharedWorker.name}: both open`);
    assert.deepEqual(opened.map(({ client }) => client.shared).sort(), ["follower", "leader"], SharedWorker.name);
    closeAll(opened);
  }
});

test("shared: close() in every tab leaves no timer behind and closes the socket", async () => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  const before = timers();
  const net = network({ probe: () => new Promise(() => {}) });
  const opened = tabs(3, { net, tokens: issuer() });
  await until(() => net.sockets.length === 1, "the shared socket");
  net.sockets[0].frame(welcome(0, { heartbeat_interval_ms: 100 }));
  await until(() => opened.every(({ client }) => client.status === "open"), "every tab open");
  // A REST call waiting for the group's token, and one waiting on the server, in a follower.
  const follower = opened.find(({ client }) => client.shared === "follower").client;
  follower.rest("GET", "/api/v1/presence").catch(() => {});
  closeAll(opened);
  await tick(10);
  assert.equal(timers(), before, "a timer outlives the clients");
  assert.equal(net.sockets[0].closed, 1000);
  assert.deepEqual(opened.map(({ client }) => client.status), ["closed", "closed", "closed"]);
});
