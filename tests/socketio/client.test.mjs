// socket.io-client from the npm registry against a real Switchboard: the frontends of our field
// reports connect by changing only their URL. Run by `cargo test` (tests/socket_io.rs starts the
// server and passes its address, API key and JWT secret in the environment); by hand:
// `SWITCHBOARD_URL=… SWITCHBOARD_API_KEY=… SWITCHBOARD_JWT_SECRET=… node --test tests/socketio/`.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { io } from "socket.io-client";
import WebSocket from "ws";

const BASE = process.env.SWITCHBOARD_URL;
const API_KEY = process.env.SWITCHBOARD_API_KEY;
const SECRET = process.env.SWITCHBOARD_JWT_SECRET;
assert.ok(BASE && API_KEY && SECRET, "SWITCHBOARD_URL, SWITCHBOARD_API_KEY and SWITCHBOARD_JWT_SECRET");
const WAIT = 10000;

const open = [];
after(() => open.forEach((s) => s.close()));

function token(account, user, { ttl = 3600, secret = SECRET } = {}) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({
    sub: user,
    account_id: account,
    exp: Math.floor(Date.now() / 1000) + ttl,
  })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

const unique = (name) => `${name}-${randomUUID().slice(0, 8)}`;

async function publish(account, event, data, user) {
  const response = await fetch(`${BASE}/api/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ account_id: account, event, data, ...(user ? { user_id: user } : {}) }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, body);
  return JSON.parse(body).seq;
}

/** A socket.io-client socket that records every event it receives, with its arguments. */
function connect(options) {
  const socket = io(BASE, { reconnectionDelay: 100, reconnectionDelayMax: 500, ...options });
  socket.received = [];
  socket.onAny((name, ...args) => socket.received.push([name, ...args]));
  open.push(socket);
  return socket;
}

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT} ms`)), WAIT);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

async function until(check, what) {
  const deadline = Date.now() + WAIT;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function connected(socket) {
  if (!socket.connected) await once(socket, "connect");
  return socket;
}

test("auth.token over the default transports (polling, then the upgrade), own account's events only", async () => {
  const [acme, globex] = [unique("acme"), unique("globex")];
  const agent = await connected(connect({ auth: { token: token(acme, "agent") } }));
  const outsider = await connected(connect({ auth: { token: token(globex, "agent") } }));
  assert.equal(agent.recovered, false);
  if (agent.io.engine.transport.name !== "websocket") await once(agent.io.engine, "upgrade");
  assert.equal(agent.io.engine.transport.name, "websocket");

  const seq = await publish(acme, "new-message", { text: "Do you ship to Hanoi?" });
  const theirs = await publish(globex, "order-paid", { total: 12 });
  await until(() => agent.received.length === 1 && outsider.received.length === 1, "both events");
  // The same name and payload as on /ws; the sequence number last, as a string.
  assert.deepEqual(agent.received, [["new-message", { text: "Do you ship to Hanoi?" }, String(seq)]]);
  assert.deepEqual(outsider.received, [["order-paid", { total: 12 }, String(theirs)]]);
});

test("websocket only, token in the Authorization header (extraHeaders)", async () => {
  const account = unique("acme");
  const socket = await connected(
    connect({ transports: ["websocket"], extraHeaders: { authorization: `Bearer ${token(account, "u1")}` } }),
  );
  assert.equal(socket.io.engine.transport.name, "websocket");
  const seq = await publish(account, "ticket-assigned", { id: "t-1" }, "u1");
  await until(() => socket.received.length === 1, "the event");
  assert.deepEqual(socket.received[0], ["ticket-assigned", { id: "t-1" }, String(seq)]);
});

test("long-polling only, token in ?token=", async () => {
  const account = unique("acme");
  const socket = await connected(connect({ transports: ["polling"], query: { token: token(account, "u1") } }));
  assert.equal(socket.io.engine.transport.name, "polling");
  const seqs = [];
  for (let i = 0; i < 5; i++) seqs.push(await publish(account, "tick", { i }));
  await until(() => socket.received.length === 5, "five events by polling");
  assert.deepEqual(
    socket.received,
    seqs.map((seq, i) => ["tick", { i }, String(seq)]),
  );
});

test("a bad or missing token is a connect_error with a message and a code", async () => {
  const cases = [
    [{ auth: { token: token("acme", "u1", { ttl: -3600 }) } }, "token-expired"],
    [{ auth: { token: token("acme", "u1", { secret: "someone-else's-secret-of-32-bytes!!" }) } }, "invalid-signature"],
    [{ auth: { token: "not-a-jwt" } }, "malformed-token"],
    [{}, "missing-token"],
    // An account id from the client is never identity.
    [{ auth: { account_id: "acme", user_id: "u1" } }, "missing-token"],
  ];
  for (const [options, code] of cases) {
    const socket = connect({ ...options, reconnection: false });
    const [error] = await once(socket, "connect_error");
    assert.equal(error.data?.code, code, `${JSON.stringify(options)}: ${error.message}`);
    assert.ok(error.message.length > 10, error.message);
    assert.equal(socket.connected, false);
    socket.close();
  }
});

test("after a connect_error, the socket connects with a fresh token (on a new connection)", async () => {
  const account = unique("acme");
  const socket = connect({ auth: { token: "not-a-jwt" }, reconnection: false });
  const errors = [];
  // The usual handler: get a fresh token and connect again, right away.
  socket.on("connect_error", (error) => {
    errors.push(error.data?.code);
    socket.auth = { token: token(account, "u1") };
    socket.connect();
  });
  await once(socket, "connect");
  assert.deepEqual(errors, ["malformed-token"]);
  const seq = await publish(account, "tick", { i: 1 });
  await until(() => socket.received.length === 1, "the event");
  assert.deepEqual(socket.received, [["tick", { i: 1 }, String(seq)]]);
});

test("only the default namespace is served", async () => {
  const socket = connect({ auth: { token: token("acme", "u1") }, reconnection: false });
  const admin = socket.io.socket("/admin", { auth: { token: token("acme", "u1") } });
  admin.connect();
  const [error] = await once(admin, "connect_error");
  assert.equal(error.data?.code, "unknown-namespace");
  admin.close();
});

test("emits with acknowledgements are the native commands, answered with the native ack or error", async () => {
  const account = unique("acme");
  const [alice, bob] = ["alice", "bob"];
  const response = await fetch(`${BASE}/api/v1/conversations`, {
    method: "POST",
    headers: { authorization: `Bearer ${token(account, alice)}`, "content-type": "application/json" },
    body: JSON.stringify({ participants: [bob] }),
  });
  assert.ok(response.ok, await response.clone().text());
  const conversation = (await response.json()).id;
  const a = await connected(connect({ auth: { token: token(account, alice) } }));
  const b = await connected(connect({ auth: { token: token(account, bob) } }));

  const ack = await a.timeout(WAIT).emitWithAck("send", { conversation_id: conversation, text: "hello", client_msg_id: "m-1" });
  assert.equal(ack.type, "ack");
  assert.equal(ack.conversation_id, conversation);
  assert.ok(ack.message_id && ack.seq > 0, JSON.stringify(ack));
  await until(() => b.received.some(([name]) => name === "new-message"), "bob's new-message");
  const [, message, seq] = b.received.find(([name]) => name === "new-message");
  assert.equal(message.text, "hello");
  assert.equal(message.id, ack.message_id);
  assert.equal(typeof seq, "string");

  // The same client_msg_id again: the first ack, nothing stored.
  const again = await a.timeout(WAIT).emitWithAck("send", { conversation_id: conversation, text: "hello", client_msg_id: "m-1" });
  assert.equal(again.duplicate, true);
  assert.equal(again.message_id, ack.message_id);

  const read = await b.timeout(WAIT).emitWithAck("read", { conversation_id: conversation });
  assert.deepEqual([read.type, read.conversation_id], ["ack", conversation]);
  // The names our field reports' frontends use.
  const marked = await b.timeout(WAIT).emitWithAck("mark_read", { conversation_id: conversation });
  assert.deepEqual([marked.type, marked.conversation_id], ["ack", conversation]);
  const sent = await a.timeout(WAIT).emitWithAck("send_message", { conversation_id: conversation, text: "again" });
  assert.equal(sent.type, "ack");

  const presence = await a.timeout(WAIT).emitWithAck("presence", {});
  assert.deepEqual(presence.users.sort(), [alice, bob]);

  // Typing is fire-and-forget on /ws; an acknowledgement says it was taken.
  assert.deepEqual(await b.timeout(WAIT).emitWithAck("typing", { conversation_id: conversation }), { type: "ack" });
  await until(() => a.received.some(([name]) => name === "typing"), "alice sees bob typing");
  assert.deepEqual(a.received.find(([name]) => name === "typing")[1], { conversation_id: conversation, user_id: bob });

  const errors = [
    // Rooms are the token's account: there is nothing to join.
    [["join_room", { room: "account:globex" }], "unknown-type"],
    [["send", { text: "no conversation" }], "invalid-frame"],
    [["send", { conversation_id: "conv_nope", text: "x" }], "not-a-participant"],
    [["send", "a string"], "invalid-frame"],
  ];
  for (const [[name, data], code] of errors) {
    const answer = await a.timeout(WAIT).emitWithAck(name, data);
    assert.deepEqual([answer.type, answer.code], ["error", code], JSON.stringify(answer));
    assert.ok(answer.message, JSON.stringify(answer));
  }
  // Without an acknowledgement, an error comes as an `error` event; the session carries on.
  a.emit("nonsense", {});
  await until(() => a.received.some(([name]) => name === "error"), "an error event");
  assert.equal(a.received.find(([name]) => name === "error")[1].code, "unknown-type");
  assert.equal((await a.timeout(WAIT).emitWithAck("ping", {})).type, "pong");
});

test("a reconnect within retention recovers the connection state: nothing lost, nothing twice", async () => {
  const account = unique("acme");
  const socket = await connected(connect({ auth: { token: token(account, "u1") } }));
  const expected = [];
  for (let i = 0; i < 5; i++) expected.push(["tick", { i }, String(await publish(account, "tick", { i }))]);
  await until(() => socket.received.length === 5, "the first five");

  // The connection drops (as a network does); events go on being published meanwhile.
  const disconnected = once(socket, "disconnect");
  socket.io.engine.close();
  await disconnected;
  for (let i = 5; i < 10; i++) expected.push(["tick", { i }, String(await publish(account, "tick", { i }))]);
  await once(socket, "connect");
  assert.equal(socket.recovered, true);
  for (let i = 10; i < 12; i++) expected.push(["tick", { i }, String(await publish(account, "tick", { i }))]);
  await until(() => socket.received.length >= 12, "all twelve");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(socket.received, expected);
});

test("a recovery offset from another account is not honoured", async () => {
  const [acme, globex] = [unique("acme"), unique("globex")];
  const first = await connected(connect({ auth: { token: token(acme, "u1") } }));
  await publish(acme, "tick", { i: 0 });
  await until(() => first.received.length === 1, "an event");
  const { _pid: pid, _lastOffset: offset } = first;
  assert.ok(pid && offset);
  // Another account's session handed acme's pid and offset: a fresh connection, not a recovery.
  const other = connect({ auth: { token: token(globex, "u1"), pid, offset } });
  await connected(other);
  assert.equal(other.recovered, false);
  assert.deepEqual(other.received, []);
});

test("a native /ws client and a Socket.IO client of one user get the same events in the same order", async () => {
  const account = unique("acme");
  const bearer = token(account, "u1");
  const native = new WebSocket(`${BASE.replace("http", "ws")}/ws`, ["switchboard.v1", `bearer.${bearer}`]);
  const nativeEvents = [];
  native.on("message", (text) => {
    const frame = JSON.parse(text);
    if (frame.type === "event") nativeEvents.push([frame.event, frame.data, String(frame.seq)]);
  });
  await new Promise((resolve, reject) => {
    native.once("message", resolve);
    native.once("error", reject);
  });
  open.push({ close: () => native.close() });
  const socket = await connected(connect({ auth: { token: bearer } }));

  // Concurrent publishes, some for u1 alone, some for another user (seen by neither).
  await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      publish(account, i % 3 ? "tick" : "private", { i }, i % 3 ? undefined : i % 2 ? "u1" : "u2"),
    ),
  );
  const expected = 30 - 5; // i % 3 == 0 and odd: for u1 (5); even: for u2 (5)
  await until(() => nativeEvents.length === expected && socket.received.length === expected, "both clients");
  assert.deepEqual(socket.received, nativeEvents);
  const seqs = socket.received.map(([, , seq]) => Number(seq));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
});
