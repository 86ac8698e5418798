// Switchboard's browser client: one dependency-free ES module, served by the server at
// /sdk/switchboard.js (types beside it in switchboard.d.ts).
//
// It carries the server's guarantees to the page: it connects with a token from the app's own
// backend, resumes from the last event it delivered after any interruption (so nothing is lost
// or repeated), asks for a new token when the server says the old one expired, notices a dead
// connection when pongs stop, backs off with full jitter, and falls back to long-polling when
// WebSockets keep failing — telling the app at every step through `status`.
//
// With `shared: true`, the tabs of one browser that talk to the same server as the same account
// and user share one connection: it lives in a SharedWorker (this very module, when the page
// loaded it from its own origin), or else in one tab elected with the Web Locks API, which hands
// what it receives to the others over a BroadcastChannel. See "Sharing one connection" below.
//
//   import { connect } from "/sdk/switchboard.js";
//   const sb = connect("https://rt.example.com", { getToken: () => fetch("/rt-token").then(r => r.text()) });
//   sb.on("new-message", (data) => …);
//   sb.on("status", (status, reason) => …);

/** Documented defaults; every one can be overridden in `connect`'s options. */
export const DEFAULTS = Object.freeze({
  /** First reconnect delay ceiling, ms; doubled per failed attempt up to `backoffMaxMs`. */
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  /** Consecutive WebSocket failures before switching to long-poll. */
  pollAfterFailures: 3,
  /** While polling, how often the WebSocket is tried again, ms. */
  wsRetryWhilePollingMs: 30000,
  /** How long a long-poll request waits on the server, s. */
  pollTimeoutS: 25,
  /** Used until the server's welcome says otherwise, ms. */
  heartbeatIntervalMs: 15000,
  clientTimeoutMs: 45000,
});

/**
 * The delay before reconnect attempt `attempt` (0-based): uniformly random in
 * [0, min(max, base * 2^attempt)] ("full jitter"), so that clients dropped together do not
 * come back together.
 */
export function backoffDelay(attempt, { backoffBaseMs, backoffMaxMs }, random = Math.random) {
  const ceiling = Math.min(backoffMaxMs, backoffBaseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The claims of a JWT, unverified (the server verifies), or null when it is not one. */
function tokenClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** The `exp` claim of a JWT, in ms since the epoch, or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  const exp = tokenClaims(token)?.exp;
  return typeof exp === "number" ? exp * 1000 : null;
}

/** Whom a JWT names — `{ account, user }` from `account_id` and `sub` — or null. */
export function tokenIdentity(token) {
  const claims = tokenClaims(token);
  const id = (value) => (typeof value === "string" || typeof value === "number" ? String(value) : null);
  const account = id(claims?.account_id);
  const user = id(claims?.sub);
  return account === null || user === null ? null : { account, user };
}

/** An error from the server (or the SDK), with the server's `code`. */
export class SwitchboardError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "SwitchboardError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** Codes that a new token can cure. */
const TOKEN_CODES = new Set(["token-expired", "token-refused", "invalid-token", "missing-token"]);

/** Codes that refuse the resume point itself: asking again with it would be refused again. */
const SINCE_CODES = new Set(["since-in-future", "invalid-since"]);
/** Codes that refuse a channel: following it again would be refused again. */
const CHANNEL_CODES = new Set(["channel-forbidden", "invalid-channel", "too-many-channels"]);

/** Opens a client; see docs/sdk.md. */
export function connect(url, options) {
  return new Client(url, options);
}

/**
 * What the app holds: handlers, requests, and the state of the connection as this tab sees it.
 * The connection itself is `link`: a `Connection` of its own, or this tab's `Member` of a group
 * that shares one.
 */
export class Client {
  constructor(url, options = {}) {
    if (typeof options.getToken !== "function") {
      throw new TypeError("connect(url, { getToken }) needs getToken: an async function returning a JWT");
    }
    this.options = { ...DEFAULTS, ...options };
    this.base = new URL(url, globalThis.location?.href);
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.handlers = new Map();
    /** The channels this client follows: name → its handlers. */
    this.channels = new Map();
    this.status = "connecting";
    this.statusReason = null;
    /** The last failure: `{ code, message }`, or null. */
    this.lastError = null;
    /** The sequence number of the last event handed to the app (null before the first welcome). */
    this.lastSeq = options.since ?? null;
    /** How the connection is shared: null (this client's own), "worker", "leader" or "follower". */
    this.shared = null;
    /** The connection, or this tab's end of a shared one; null while a shared client learns whose it is. */
    this.link = null;
    this.closed = false;
    if (options.shared) this.share();
    else this.link = this.alone(null);
  }

  // --- the app's side ---------------------------------------------------------------------

  /** `event` is a server event name (`new-message`, …), `status`, `resume-failed`, or `*`. */
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return this;
  }

  off(event, handler) {
    this.handlers.get(event)?.delete(handler);
    return this;
  }

  /** Sends a message; resolves with the server's ack, rejects with a SwitchboardError. */
  send(conversationId, text, { clientMsgId, attachments } = {}) {
    const frame = {
      type: "send",
      conversation_id: conversationId,
      text,
      client_msg_id: clientMsgId ?? randomId(),
    };
    if (attachments) frame.attachments = attachments;
    if (this.isOpen()) return this.link.request(frame);
    // Not on the socket: the same operation over REST (client_msg_id keeps it idempotent).
    return this.rest("POST", `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages`, {
      text,
      client_msg_id: frame.client_msg_id,
      ...(attachments ? { attachments } : {}),
    });
  }

  /** Marks a conversation read up to a message (the latest when `upTo` is omitted). */
  markRead(conversationId, upTo) {
    const body = upTo ? { up_to: upTo } : {};
    if (this.isOpen()) return this.link.request({ type: "read", conversation_id: conversationId, ...body });
    return this.rest("POST", `/api/v1/conversations/${encodeURIComponent(conversationId)}/read`, body);
  }

  /**
   * Follows a channel the token's `channels` claim allows: `handler(data, frame)` gets each of
   * its events, from now on and across reconnects (which resume it with the rest). Answers a
   * function that stops it. A channel the server refuses is dropped and `subscribe-failed` says
   * why (`{channel, code, message}`).
   */
  subscribe(name, handler) {
    const first = !this.channels.has(name);
    if (first) this.channels.set(name, new Set());
    this.channels.get(name).add(handler);
    if (first && this.isOpen()) this.follow(name);
    return () => this.unsubscribe(name, handler);
  }

  /** Stops `handler` (every handler, without one); the last one gone, the channel is left. */
  unsubscribe(name, handler) {
    const handlers = this.channels.get(name);
    if (!handlers) return;
    if (handler) handlers.delete(handler);
    else handlers.clear();
    if (handlers.size > 0) return;
    this.channels.delete(name);
    // A shared connection follows for every tab sharing it: another may still want it.
    if (this.isOpen() && !this.shared) {
      this.link.request({ type: "unsubscribe", channel: name }).catch(() => {});
    }
  }

  /** Asks the connection to follow a channel; a refusal drops it and tells the app. */
  follow(name) {
    this.link.request({ type: "subscribe", channel: name }).catch((e) => {
      if (!CHANNEL_CODES.has(e?.code) || !this.channels.has(name)) return;
      this.channels.delete(name);
      this.emit("subscribe-failed", { channel: name, code: e.code, message: e.message });
    });
  }

  /** Tells the other participants this user is typing (live only: dropped when not connected). */
  typing(conversationId) {
    if (this.isOpen()) this.link.post({ type: "typing", conversation_id: conversationId });
  }

  /** The online users of this account. */
  async presence() {
    if (this.isOpen()) return (await this.link.request({ type: "presence" })).users;
    return (await this.rest("GET", "/api/v1/presence")).users;
  }

  /** Calls the server's REST API with this client's token (refreshed once if it expired). */
  async rest(method, path, body) {
    const call = (token) =>
      this.fetch(new URL(path, this.base), {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body ? { "content-type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
      });
    let token = await this.currentToken();
    let response = await call(token);
    if (response.status === 401) {
      const error = await errorOf(response);
      if (!TOKEN_CODES.has(error.code)) throw error;
      token = await this.currentToken(token);
      response = await call(token);
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  /** Closes for good. */
  close() {
    this.closed = true;
    clearTimeout(this.retry?.timer);
    this.retry?.wake();
    this.link?.close();
    this.report({ status: "closed", reason: null, lastError: this.lastError }, false);
  }

  // --- what the connection tells this client ------------------------------------------------

  isOpen() {
    return this.link?.isOpen() ?? false;
  }

  /** A token for a REST call: the connection's (a shared one's, for all tabs); `stale` was refused. */
  currentToken(stale) {
    if (this.link) return this.link.currentToken(stale);
    return Promise.resolve().then(() => this.options.getToken());
  }

  /**
   * What the connection hands over, in order: an `event` frame, the `start` point of a
   * connection that had none, or a `resume-failed` with where this client carries on from.
   */
  receive(message) {
    switch (message.kind) {
      case "event":
        if (message.frame !== null && typeof message.frame === "object") this.deliver(message.frame);
        return;
      case "start":
        if (this.lastSeq === null) this.lastSeq = message.seq;
        return;
      case "resume-failed":
        this.lastSeq = message.seq;
        return this.emit("resume-failed", message.frame);
      case "unsubscribed":
        // The server ended it (a fresh token no longer allows it).
        if (!this.channels.delete(message.frame.channel)) return;
        return this.emit("subscribe-failed", {
          channel: message.frame.channel,
          code: message.frame.reason,
          message: "the token no longer allows this channel",
        });
      default:
        return;
    }
  }

  /** The connection's state; `changed` says the connection reports it as news. */
  report({ status, reason, lastError }, changed) {
    const news = changed || status !== this.status;
    if (status === "open" && this.status !== "open") {
      // Followed again on every connection: the server answers one it follows already at once
      // (a reconnect names those it followed, so its replay covers them).
      for (const name of this.channels.keys()) this.follow(name);
    }
    this.status = status;
    this.statusReason = reason;
    this.lastError = lastError;
    if (news) this.emit("status", status, reason);
  }

  /** Hands an event to the app, once: anything at or before the last delivered seq is a repeat. */
  deliver(frame) {
    if (typeof frame.seq === "number") {
      if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
    }
    if (frame.event === "presence-changed") {
      // Several changes announced together: the app sees them one by one, as when they come
      // singly.
      for (const user_id of frame.data.online) this.emit("user-online", { user_id }, frame);
      for (const user_id of frame.data.offline) this.emit("user-offline", { user_id }, frame);
    }
    this.emit(frame.event, frame.data, frame);
    this.emit("*", frame.data, frame);
    if (typeof frame.channel === "string") {
      for (const handler of this.channels.get(frame.channel) ?? []) this.call(handler, frame.data, frame);
    }
  }

  // --- sharing ---------------------------------------------------------------------------

  /** A connection of this client's own, starting with `token` when one is already known. */
  alone(token) {
    this.shared = null;
    return new Connection(this.base, this.options, {
      since: this.lastSeq,
      token,
      getToken: () => this.options.getToken(),
      sink: this,
    });
  }

  /**
   * Joins the group of tabs that share a connection: the token says whose it is, so the first
   * token is this tab's own; every later one is the group's.
   */
  async share() {
    const token = await this.firstToken();
    if (this.closed) return;
    const identity = tokenIdentity(token);
    const given = (name, otherwise) => (name in this.options ? this.options[name] : otherwise);
    const runtime = {
      SharedWorker: given("SharedWorker", sameOriginSharedWorker()),
      locks: given("locks", globalThis.navigator?.locks),
      BroadcastChannel: given("BroadcastChannel", globalThis.BroadcastChannel),
    };
    const canLead = Boolean(runtime.locks && runtime.BroadcastChannel);
    if (identity === null || (!runtime.SharedWorker && !canLead)) {
      this.link = this.alone(token);
      return;
    }
    const member = new Member(this, groupName(this.base, this.options.wsPath, identity), token);
    this.link = member;
    const byLock = () => (canLead ? joinByLock(member, runtime) : this.leaveGroupAlone(member));
    if (runtime.SharedWorker) joinWorker(member, runtime.SharedWorker, byLock);
    else byLock();
  }

  /** A worker that failed to start, where no tab can lead: this client connects on its own. */
  leaveGroupAlone(member) {
    member.close();
    if (!this.closed) this.link = this.alone(member.lastToken);
  }

  /** The first token, asked for until it comes (with backoff), or null once closed. */
  async firstToken() {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        return await this.options.getToken();
      } catch (e) {
        const reason = { code: "get-token-failed", message: String(e?.message ?? e) };
        this.report({ status: "reconnecting", reason, lastError: reason }, true);
        const delay = backoffDelay(attempt, this.options, this.options.random ?? Math.random);
        await new Promise((wake) => (this.retry = { wake, timer: setTimeout(wake, delay) }));
      }
    }
    return null;
  }

  // --- plumbing --------------------------------------------------------------------------

  emit(event, ...args) {
    for (const handler of this.handlers.get(event) ?? []) this.call(handler, ...args);
  }

  call(handler, ...args) {
    try {
      handler(...args);
    } catch (e) {
      // One broken handler must not stop the others, nor the client.
      setTimeout(() => {
        throw e;
      });
    }
  }
}

/**
 * One connection to the server, with everything that keeps it going: reconnects, resume, token
 * refresh, heartbeat and the long-poll fallback. What it receives goes to `sink.receive` in
 * order, its state to `sink.report`; tokens come from `getToken`, one question at a time.
 */
class Connection {
  constructor(base, options, init) {
    const { since = null, token = null, getToken, sink, status = "connecting", reason = null } = init;
    this.options = options;
    this.base = base;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.random = options.random ?? Math.random;
    this.getToken = getToken;
    this.sink = sink;
    this.status = status;
    this.statusReason = reason;
    this.lastError = reason;
    /** The last event handed to the sink: where a reconnect resumes from. */
    this.lastSeq = since;
    /** Channels the server confirmed it follows: a reconnect names them, so its replay covers them. */
    this.followed = new Set();
    this.token = token;
    /** The getToken call under way, which every caller meanwhile waits for. */
    this.asking = null;
    this.ws = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.nextRef = 1;
    this.pending = new Map();
    this.timers = new Set();
    this.polling = null;
    this.closed = false;
    this.open();
  }

  state() {
    return { status: this.status, reason: this.statusReason, lastError: this.lastError };
  }

  isOpen() {
    return this.ws !== null && this.welcomed;
  }

  /** Sends a frame that has no answer (typing). */
  post(frame) {
    if (this.isOpen()) this.ws.send(JSON.stringify(frame));
  }

  /** The token to use, or a fresh one when `stale` (the one held) was refused. */
  currentToken(stale) {
    if (stale !== undefined && stale === this.token) this.token = null;
    const expiry = this.token && tokenExpiry(this.token);
    // Refresh a little early so that a token is not refused in flight.
    if (this.token && (expiry === null || expiry - 5000 >= Date.now())) return Promise.resolve(this.token);
    this.asking ??= (async () => {
      try {
        this.token = await this.getToken();
        return this.token;
      } finally {
        this.asking = null;
      }
    })();
    return this.asking;
  }

  /** Closes for good. */
  close() {
    this.closed = true;
    this.clearTimers();
    this.stopHeartbeat();
    this.polling?.abort();
    this.polling = null;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
    this.failPending(new SwitchboardError("closed", "the client was closed"));
    this.setStatus("closed", null);
  }

  // --- connection ------------------------------------------------------------------------

  async open() {
    if (this.closed) return;
    let token;
    try {
      token = await this.currentToken();
    } catch (e) {
      return this.failed({ code: "get-token-failed", message: String(e?.message ?? e) }, false);
    }
    if (this.closed) return;
    const ws = new URL(this.options.wsPath ?? "/ws", this.base);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    if (this.lastSeq !== null) ws.searchParams.set("since", String(this.lastSeq));
    if (this.followed.size > 0) ws.searchParams.set("channels", [...this.followed].join(","));
    let socket;
    try {
      // The token travels in the subprotocol header, never in the URL (which proxies log).
      socket = new this.WebSocket(ws.toString(), ["switchboard.v1", `bearer.${token}`]);
    } catch (e) {
      return this.failed({ code: "websocket-failed", message: String(e?.message ?? e) }, true);
    }
    this.ws = socket;
    this.welcomed = false;
    socket.onmessage = (message) => this.receive(socket, message.data);
    socket.onclose = (event) => this.socketClosed(socket, event);
    socket.onerror = () => {}; // onclose follows, with what there is to know
  }

  /** The socket closed (or never opened): find out why, then reconnect or fall back. */
  async socketClosed(socket, event) {
    if (socket !== this.ws) return;
    this.ws = null;
    this.stopHeartbeat();
    const wasOpen = this.welcomed;
    this.welcomed = false;
    this.failPending(new SwitchboardError("disconnected", "the connection closed before an answer"));
    if (this.closed) return;
    if (wasOpen) {
      const reason = closeReason(event);
      if (TOKEN_CODES.has(reason.code)) this.token = null;
      return this.failed(reason, false);
    }
    // A refused upgrade is invisible to a browser (no status, no body): ask the same question
    // over HTTP to learn whether the token — or the resume point — is the problem.
    const reason = await this.probe();
    if (CHANNEL_CODES.has(reason.code)) {
      // A fresh token no longer allows one: connect without them; the client follows each again
      // and hears which is refused.
      this.followed.clear();
      return this.failed(reason, false);
    }
    if (SINCE_CODES.has(reason.code)) {
      this.resumeRefused(reason);
      return this.failed(reason, false);
    }
    this.failed(reason, !TOKEN_CODES.has(reason.code) && reason.code !== "server-unreachable");
  }

  /** Why a connection cannot be made: the answer of a zero-wait long-poll. */
  async probe() {
    try {
      const since = this.lastSeq ?? 0;
      const response = await this.fetch(
        new URL(`/api/v1/events?since=${since}&timeout=0${this.channelsQuery()}`, this.base),
        { headers: { authorization: `Bearer ${this.token}` } },
      );
      if (response.ok) return { code: "websocket-failed", message: "the WebSocket could not be opened" };
      const error = await errorOf(response);
      if (TOKEN_CODES.has(error.code)) this.token = null;
      return { code: error.code, message: error.message };
    } catch (e) {
      return { code: "server-unreachable", message: String(e?.message ?? e) };
    }
  }

  /** Records a failure and schedules what comes next. `wsFault`: the WebSocket itself failed. */
  failed(reason, wsFault) {
    if (this.closed) return;
    this.setError(reason);
    if (wsFault) this.wsFailures += 1;
    if (this.wsFailures >= this.options.pollAfterFailures && !this.polling) {
      this.startPolling();
      return;
    }
    if (this.polling) {
      // Already polling: try the WebSocket again later.
      this.later(() => this.open(), this.options.wsRetryWhilePollingMs);
      return;
    }
    this.setStatus("reconnecting", reason);
    const delay = backoffDelay(this.attempt++, this.options, this.random);
    this.later(() => this.open(), delay);
  }

  receive(socket, text) {
    if (socket !== this.ws) return;
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this.welcome(frame);
      case "event":
        return this.deliver(frame);
      case "resume-failed":
        return this.resumeFailed(frame.seq, frame);
      case "token-expiring":
        return this.refreshInPlace(socket);
      case "subscribed":
        this.followed.add(frame.channel);
        return this.answer(frame.ref, frame, null);
      case "unsubscribed":
        this.followed.delete(frame.channel);
        if (frame.reason) this.sink.receive({ kind: "unsubscribed", frame });
        return this.answer(frame.ref, frame, null);
      case "authenticated":
      case "ack":
      case "presence":
      case "pong":
        return this.answer(frame.ref, frame, null);
      case "error":
        return this.answer(frame.ref, null, new SwitchboardError(frame.code, frame.message, frame));
      default:
        return;
    }
  }

  welcome(frame) {
    this.welcomed = true;
    this.attempt = 0;
    this.wsFailures = 0;
    this.lastError = null;
    if (this.lastSeq === null) {
      this.lastSeq = frame.seq;
      this.sink.receive({ kind: "start", seq: frame.seq });
    }
    if (this.polling) {
      this.polling.abort();
      this.polling = null;
    }
    this.clearTimers();
    this.startHeartbeat(frame.heartbeat_interval_ms, frame.client_timeout_ms);
    this.setStatus("open", null);
  }

  /** Hands an event over, once: anything at or before the last one handed over is a repeat. */
  deliver(frame) {
    if (typeof frame.seq === "number") {
      if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
    }
    this.sink.receive({ kind: "event", frame });
  }

  /** The server asks for a fresh token before the current one expires: the session goes on. */
  async refreshInPlace(socket) {
    try {
      this.token = null;
      const token = await this.currentToken();
      if (socket === this.ws) await this.request({ type: "auth", token });
    } catch {
      // Not refreshed: the server closes the session at expiry, and the reconnect asks again.
    }
  }

  resumeFailed(seq, frame) {
    // What was missed is gone from the server: the app reloads its state, live events go on.
    this.lastSeq = seq;
    this.sink.receive({ kind: "resume-failed", seq, frame: { code: "resume-failed", ...frame } });
  }

  /**
   * The server refuses the resume point itself: ahead of its history (which is not the one this
   * client knew — a restored database, say), or not a sequence number. Resuming from it would be
   * refused for ever, so it is dropped — the next connection starts afresh — and the app is told
   * as when history is gone, with the code.
   */
  resumeRefused({ code, message }) {
    const frame = { type: "resume-failed", code, message, since: this.lastSeq };
    this.lastSeq = null;
    this.sink.receive({ kind: "resume-failed", seq: null, frame });
  }

  // --- heartbeat -------------------------------------------------------------------------

  startHeartbeat(intervalMs = this.options.heartbeatIntervalMs, timeoutMs = this.options.clientTimeoutMs) {
    this.stopHeartbeat();
    this.lastHeard = Date.now();
    // Browsers answer the server's WebSocket pings without telling the page, so the page pings
    // too: a connection that stops answering is dead even when the OS has not noticed.
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > timeoutMs) {
        const socket = this.ws;
        this.stopHeartbeat();
        socket?.close(4000, "heartbeat timeout");
        // Do not wait for a close handshake from a dead peer.
        if (socket) this.socketClosed(socket, { code: 4000, reason: "no answer from the server" });
        return;
      }
      this.ws?.send(JSON.stringify({ type: "ping" }));
    }, Math.max(100, Math.floor(intervalMs / 2)));
  }

  stopHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  // --- long-poll -------------------------------------------------------------------------

  startPolling() {
    const controller = new AbortController();
    this.polling = controller;
    // `polling` is reported once the first answer came: from then on, nothing is missed.
    this.later(() => this.open(), this.options.wsRetryWhilePollingMs);
    this.pollLoop(controller);
  }

  async pollLoop(controller) {
    let failures = 0;
    while (this.polling === controller && !this.closed) {
      try {
        // Without a starting point, the first answer gives one ("now"), not the whole history.
        const path =
          this.lastSeq === null
            ? "/api/v1/events"
            : `/api/v1/events?since=${this.lastSeq}&timeout=${this.options.pollTimeoutS}${this.channelsQuery()}`;
        const response = await this.fetch(new URL(path, this.base), {
          headers: { authorization: `Bearer ${await this.currentToken()}` },
          signal: controller.signal,
        });
        if (this.polling !== controller) return;
        if (response.ok) {
          const page = await response.json();
          if (this.polling !== controller) return;
          for (const frame of page.events) this.deliver(frame);
          if (this.lastSeq === null) {
            this.lastSeq = page.since;
            this.sink.receive({ kind: "start", seq: page.since });
          }
          failures = 0;
          if (this.status !== "polling") this.setStatus("polling", this.lastError);
          continue;
        }
        const error = await errorOf(response);
        if (response.status === 410 && error.code === "resume-failed") {
          const frame = { type: "resume-failed", since: this.lastSeq, oldest_seq: error.oldest_seq };
          // Carry on from the oldest event kept; the app reloads its state first.
          this.resumeFailed(error.oldest_seq - 1, frame);
          continue;
        }
        if (response.status === 400 && SINCE_CODES.has(error.code)) {
          // The next poll, without a starting point, answers with where "now" is.
          this.resumeRefused(error);
          continue;
        }
        if (TOKEN_CODES.has(error.code)) this.token = null;
        this.setError({ code: error.code, message: error.message });
      } catch (e) {
        if (controller.signal.aborted) return;
        this.setError({ code: "server-unreachable", message: String(e?.message ?? e) });
      }
      this.setStatus("reconnecting", this.lastError);
      await new Promise((resolve) => this.later(resolve, backoffDelay(failures++, this.options, this.random)));
    }
  }

  // --- requests and answers --------------------------------------------------------------

  /** `&channels=…` for a long-poll: the channels followed. */
  channelsQuery() {
    if (this.followed.size === 0) return "";
    return `&channels=${encodeURIComponent([...this.followed].join(","))}`;
  }

  request(frame) {
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  answer(ref, frame, error) {
    const waiting = this.pending.get(ref);
    if (!waiting) return;
    this.pending.delete(ref);
    if (error) waiting.reject(error);
    else waiting.resolve(frame);
  }

  failPending(error) {
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
  }

  // --- plumbing --------------------------------------------------------------------------

  setStatus(status, reason) {
    const changed = status !== this.status || reason !== this.statusReason;
    this.status = status;
    this.statusReason = reason;
    this.sink.report(this.state(), changed);
  }

  setError(reason) {
    this.lastError = reason;
    this.sink.report(this.state(), false);
  }

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

// --- Sharing one connection ----------------------------------------------------------------
//
// A group is the tabs of one browser (one origin and storage) that use one server, WebSocket
// path, account and user; its name says so, and names its SharedWorker, lock and channel. One
// `Hub` holds the group's connection — in the SharedWorker, or in the tab holding the lock — and
// each tab's `Member` talks to it in messages (`t` says which):
//
//   member → hub:  join, request {id, frame}, post {frame}, token {id, stale}, leave,
//                  token-for-hub {id, token | error} (the worker asked this tab for one)
//   hub → members: hub {hub, epoch, state, seq} (who the hub is and where it stands),
//                  relay {message} (what the connection hands over, in order), state,
//                  answer {to, id, frame | token | error}, want-token {to, id},
//                  gone (the leader tab closed its client)
//
// Followers drop repeats by seq, so a new leader may resume from the last event it handed over;
// a tab that is behind the hub when it meets it fetches what it missed over the long-poll API
// before it takes live events again.

/** The group's name prefix; the version changes whenever the messages above do. */
const GROUP_PREFIX = "switchboard.v1 ";

/** How long a tab waits for the hub's token, or the worker for a tab's, ms, before asking elsewhere. */
const TAB_ANSWER_TIMEOUT_MS = 10000;

/**
 * Live messages a tab holds while it fetches what it missed. Past it the tab gives up the
 * catch-up: what it held is dropped, and the app gets `resume-failed` (reload your state).
 */
const HOLD_LIMIT = 10000;

/** Failed fetches of what a tab missed before it gives up with `resume-failed`. */
const CATCH_UP_TRIES = 5;

/** Why a group is not connected while the tab that held its connection is replaced. */
const leaderLeft = () => ({ code: "connection-lost", message: "the tab that held the shared connection left" });

/** The messages a hub takes; everything else on a group's channel is for members. */
const TO_HUB = new Set(["join", "request", "post", "token", "leave", "token-for-hub"]);

function groupName(base, wsPath, { account, user }) {
  return GROUP_PREFIX + JSON.stringify([base.href, wsPath ?? "/ws", account, user]);
}

/**
 * SharedWorker when this module can be one: a worker's script must be same-origin with the
 * page, so a page that loads the SDK from another origin (the Switchboard server's) has none.
 */
function sameOriginSharedWorker() {
  try {
    const here = globalThis.location?.origin;
    return here && new URL(import.meta.url).origin === here ? globalThis.SharedWorker : undefined;
  } catch {
    return undefined;
  }
}

/** The connection options a worker can be given (functions do not cross to it). */
function portableOptions(options) {
  const portable = {};
  for (const key of Object.keys(DEFAULTS)) {
    if (typeof options[key] === "number" && Number.isFinite(options[key])) portable[key] = options[key];
  }
  if (typeof options.wsPath === "string") portable.wsPath = options.wsPath;
  return portable;
}

/** An error as a message can carry it. */
function plainError(e, code) {
  if (e instanceof SwitchboardError) {
    const { name, ...details } = e;
    return { code: e.code, message: e.message, details };
  }
  return { code, message: String(e?.message ?? e) };
}

/**
 * The group's connection and its members' requests: what the connection hands over is relayed
 * to every member, each request answered to the member that asked, and tokens come from
 * `getToken` (the leader tab's own, or one member's on the worker's behalf) — one question at a
 * time for the whole group — and must name the group's account and user.
 */
class Hub {
  constructor({ base, options, since, token, getToken, identity, takeover, broadcast, to }) {
    this.id = randomId();
    /** Orders hubs in time: a member ignores a late word from a hub older than its own. */
    this.epoch = Date.now();
    this.broadcast = broadcast;
    this.to = to;
    this.closed = false;
    const reason = takeover ? leaderLeft() : null;
    this.connection = new Connection(base, options, {
      since,
      token,
      getToken: () => groupToken(identity, getToken),
      sink: this,
      status: takeover ? "reconnecting" : "connecting",
      reason,
    });
  }

  receive(message) {
    this.broadcast({ t: "relay", hub: this.id, message });
  }

  report(state, changed) {
    this.broadcast({ t: "state", hub: this.id, state, changed });
  }

  /** Tells every member, or the one that joined, who the hub is and where it stands. */
  announce(member) {
    const { id: hub, epoch, connection } = this;
    const message = { t: "hub", hub, epoch, state: connection.state(), seq: connection.lastSeq };
    if (member === undefined) this.broadcast(message);
    else this.to(member, message);
  }

  handle(message) {
    if (this.closed || typeof message?.from !== "string") return;
    switch (message.t) {
      case "join":
        return this.announce(message.from);
      case "request":
        return this.request(message);
      case "post":
        return this.connection.post(message.frame);
      case "token":
        return this.giveToken(message);
      default:
        return;
    }
  }

  request({ from, id, frame }) {
    if (!this.connection.isOpen() || frame === null || typeof frame !== "object") {
      const error = { code: "disconnected", message: "the connection is not open" };
      return this.answer(from, id, { error });
    }
    this.connection.request(frame).then(
      (answer) => this.answer(from, id, { frame: answer }),
      (e) => this.answer(from, id, { error: plainError(e, "internal-error") }),
    );
  }

  giveToken({ from, id, stale }) {
    this.connection.currentToken(typeof stale === "string" ? stale : undefined).then(
      (token) => this.answer(from, id, { token }),
      (e) => this.answer(from, id, { error: plainError(e, "get-token-failed") }),
    );
  }

  answer(member, id, body) {
    if (!this.closed) this.to(member, { t: "answer", hub: this.id, id, ...body });
  }

  /** Ends the group's connection without telling members it closed: another hub takes over. */
  close() {
    this.closed = true;
    this.connection.sink = { receive() {}, report() {} };
    this.connection.close();
    this.broadcast({ t: "gone", hub: this.id });
  }
}

/** A token from `getToken` that names the group's account and user; any other is refused. */
async function groupToken(identity, getToken) {
  const token = await getToken();
  const named = tokenIdentity(token);
  if (named === null || named.account !== identity.account || named.user !== identity.user) {
    throw new SwitchboardError(
      "get-token-failed",
      "getToken returned a token for another account or user than the tabs sharing this connection",
    );
  }
  return token;
}

/**
 * This tab's end of a shared connection. It hands the client what the hub relays, in order and
 * once — first fetching, over the long-poll API, anything the tab missed before it met the hub —
 * sends its requests with its own ids, and asks the hub for tokens. `send` reaches the hub: the
 * worker's port, the group's channel, or the hub itself in the leader tab.
 */
class Member {
  constructor(client, name, token) {
    this.client = client;
    this.name = name;
    /** This tab's latest token: a new hub started here begins with it. */
    this.lastToken = token;
    this.identity = tokenIdentity(token);
    this.id = randomId();
    this.send = () => {};
    this.hub = null;
    this.epoch = -Infinity;
    this.status = "connecting";
    this.nextId = 1;
    /** Requests and token questions waiting for the hub's answer, by id. */
    this.asks = new Map();
    /** Relayed messages held until this tab is level with the hub; null while it is. */
    this.held = [];
    /** Counts catch-ups, so a superseded one stops. */
    this.catchUps = 0;
    this.catching = false;
    /** The hub's point the running catch-up reaches for: where the tab carries on if it gives up. */
    this.target = null;
    this.timers = new Set();
    /** What closing undoes: the port or channel, the lock, listeners. */
    this.cleanup = [];
    this.closed = false;
  }

  isOpen() {
    return !this.closed && this.hub !== null && this.status === "open";
  }

  request(frame) {
    return this.ask({ t: "request", frame });
  }

  post(frame) {
    this.send({ t: "post", from: this.id, frame });
  }

  /** The group's token; a hub that does not answer in time (there is none just now): this tab's own. */
  currentToken(stale) {
    return this.ask({ t: "token", stale }, () => this.client.options.getToken());
  }

  ask(message, fallback) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const ask = { resolve, reject, hub: this.hub, message: { ...message, from: this.id, id } };
      if (fallback) {
        ask.timer = setTimeout(() => {
          this.asks.delete(id);
          Promise.resolve().then(fallback).then(resolve, reject);
        }, TAB_ANSWER_TIMEOUT_MS);
      }
      this.asks.set(id, ask);
      this.send(ask.message);
    });
  }

  /** A message from the hub (or, on a channel, from anyone: what is not for this tab is ignored). */
  handle(message) {
    if (this.closed || message === null || typeof message !== "object") return;
    if (message.to !== undefined && message.to !== this.id) return;
    switch (message.t) {
      case "hub":
        return this.met(message);
      case "relay":
        return this.relay(message.message);
      case "state":
        if (message.hub === this.hub) this.report(message.state, message.changed);
        return;
      case "answer":
        return this.answered(message);
      case "gone":
        if (message.hub === this.hub) this.hubGone();
        return;
      case "want-token":
        return this.giveToken(message.id);
      default:
        return;
    }
  }

  /** A hub says who it is and how far it has relayed. */
  met({ hub, epoch, state, seq }) {
    if (typeof epoch !== "number" || epoch < this.epoch) return; // an older hub's late word
    if (hub !== this.hub) {
      this.hub = hub;
      this.epoch = epoch;
      for (const [id, ask] of this.asks) {
        if (ask.message.t === "token" && ask.hub !== hub) {
          ask.hub = hub;
          this.send(ask.message);
        } else if (ask.hub !== hub) {
          this.fail(id, new SwitchboardError("disconnected", "the shared connection changed hands first"));
        }
      }
    }
    this.report(state, false);
    this.reach(seq ?? null);
  }

  report(state, changed) {
    this.status = state.status;
    this.client.report(state, changed);
  }

  /** The leader tab closed its client: until the next leader speaks, this tab is not connected. */
  hubGone() {
    this.hub = null;
    for (const [id, ask] of this.asks) {
      if (ask.message.t !== "request") continue;
      this.fail(id, new SwitchboardError("disconnected", "the shared connection closed before an answer"));
    }
    const reason = leaderLeft();
    this.report({ status: "reconnecting", reason, lastError: reason }, true);
  }

  answered({ id, frame, token, error }) {
    const ask = this.asks.get(id);
    if (!ask) return;
    this.asks.delete(id);
    clearTimeout(ask.timer);
    if (error) return ask.reject(new SwitchboardError(error.code, error.message, error.details));
    if (ask.message.t !== "token") return ask.resolve(frame);
    this.lastToken = token;
    ask.resolve(token);
  }

  fail(id, error) {
    const ask = this.asks.get(id);
    this.asks.delete(id);
    clearTimeout(ask?.timer);
    ask?.reject(error);
  }

  /** The worker asks this tab for a fresh token for the whole group. */
  async giveToken(id) {
    let answer;
    try {
      answer = { token: await this.client.options.getToken() };
    } catch (e) {
      answer = { error: plainError(e, "get-token-failed") };
    }
    if (!this.closed) this.send({ t: "token-for-hub", from: this.id, id, ...answer });
  }

  // --- every event once, in order ----------------------------------------------------------

  relay(message) {
    if (message === null || typeof message !== "object") return;
    if (this.held === null) return this.pass(message);
    this.held.push(message);
    if (this.held.length > HOLD_LIMIT) this.giveUp("more events came than it can hold meanwhile");
  }

  pass(message) {
    if (message.kind === "start") return this.reach(message.seq);
    this.client.receive(message);
  }

  /** The hub has handed over everything up to `point`: a tab behind it fetches the rest first. */
  reach(point) {
    if (this.catching) return;
    const from = this.client.lastSeq;
    if (from !== null && typeof point === "number" && from < point) {
      this.target = point;
      this.catchUp(from);
      return;
    }
    if (from === null && typeof point === "number") this.client.receive({ kind: "start", seq: point });
    this.release();
  }

  /** Hands over what was held; a `start` among it may begin another catch-up, which holds the rest. */
  release() {
    const held = this.held ?? [];
    this.held = null;
    for (let i = 0; i < held.length; i++) {
      if (this.held !== null) {
        this.held.push(...held.slice(i));
        return;
      }
      this.pass(held[i]);
    }
  }

  /** Fetches the events after `from` page by page until none is left, holding live ones meanwhile. */
  async catchUp(from) {
    const run = ++this.catchUps;
    this.catching = true;
    this.held ??= [];
    let since = from;
    for (let failures = 0; ; ) {
      try {
        const page = await this.client.rest("GET", `/api/v1/events?since=${since}&timeout=0`);
        if (run !== this.catchUps) return;
        for (const frame of page.events) this.client.receive({ kind: "event", frame });
        if (page.events.length === 0) break;
        since = page.since;
      } catch (e) {
        if (run !== this.catchUps) return;
        if (e.code === "resume-failed" && typeof e.oldest_seq === "number") {
          const frame = { type: "resume-failed", code: "resume-failed", since, oldest_seq: e.oldest_seq };
          since = e.oldest_seq - 1;
          this.client.receive({ kind: "resume-failed", seq: since, frame });
          continue;
        }
        if (SINCE_CODES.has(e.code)) {
          const frame = { type: "resume-failed", code: e.code, message: e.message, since };
          this.client.receive({ kind: "resume-failed", seq: null, frame });
          break;
        }
        if (++failures >= CATCH_UP_TRIES) {
          return this.giveUp(`what it missed could not be fetched (${e.code ?? e.message})`);
        }
        const { options } = this.client;
        await this.pause(backoffDelay(failures, options, options.random ?? Math.random));
        if (run !== this.catchUps) return;
      }
    }
    this.catching = false;
    this.release();
  }

  /** Stops catching up: what was missed and held is given up, and the app reloads its state. */
  giveUp(why) {
    this.catchUps++;
    this.catching = false;
    const held = this.held ?? [];
    this.held = null;
    let seq = Math.max(this.target ?? -Infinity, this.client.lastSeq ?? -Infinity);
    for (const message of held) {
      if (message.kind === "event" && typeof message.frame?.seq === "number") {
        seq = Math.max(seq, message.frame.seq);
      }
    }
    const message = `this tab fell behind: ${why}`;
    const frame = { type: "resume-failed", code: "resume-failed", message, since: this.client.lastSeq };
    this.client.receive({ kind: "resume-failed", seq: Number.isFinite(seq) ? seq : null, frame });
  }

  /** This tab now holds the group's connection, resuming from its own point: no catch-up needed. */
  leading() {
    this.catchUps++;
    this.catching = false;
    this.held = null;
  }

  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.catchUps++;
    for (const timer of this.timers) clearTimeout(timer);
    const closed = new SwitchboardError("closed", "the client was closed");
    for (const id of [...this.asks.keys()]) this.fail(id, closed);
    for (const undo of this.cleanup) undo();
  }
}

/** Joins the group through its SharedWorker; `failed` runs if the worker cannot start. */
function joinWorker(member, SharedWorker, failed) {
  let worker;
  try {
    worker = new SharedWorker(new URL(import.meta.url), { type: "module", name: member.name });
  } catch {
    return failed();
  }
  const client = member.client;
  const port = worker.port;
  client.shared = "worker";
  port.onmessage = (event) => member.handle(event.data);
  member.send = (message) => port.postMessage(message);
  const join = () =>
    member.send({
      t: "join",
      from: member.id,
      since: client.lastSeq,
      token: member.lastToken,
      base: client.base.href,
      options: portableOptions(client.options),
    });
  const leave = () => member.send({ t: "leave", from: member.id });
  // A page put in the back-forward cache leaves, and joins again (behind, so it catches up) when
  // it comes back: the worker asks only present tabs for tokens.
  const hidden = () => leave();
  const shown = (event) => event.persisted && join();
  globalThis.addEventListener?.("pagehide", hidden);
  globalThis.addEventListener?.("pageshow", shown);
  // A worker that cannot run this module (a browser without module workers, a CSP that forbids
  // it) fails before its first word: then the tabs share by lock.
  const undo = () => {
    leave();
    port.close();
    globalThis.removeEventListener?.("pagehide", hidden);
    globalThis.removeEventListener?.("pageshow", shown);
  };
  worker.onerror = () => {
    if (member.hub !== null || member.closed) return;
    undo();
    member.cleanup = member.cleanup.filter((other) => other !== undo);
    failed();
  };
  member.cleanup.push(undo);
  join();
}

/**
 * Joins the group by lock: the tab that holds the group's lock leads — it holds the connection
 * and relays over the group's channel — and the others follow; when the leader goes (its lock
 * goes with it), the next tab in line leads, resuming from the last event it handed over.
 */
function joinByLock(member, { locks, BroadcastChannel }) {
  const client = member.client;
  const channel = new BroadcastChannel(member.name);
  let hub = null;
  let release = null;
  client.shared = "follower";
  channel.onmessage = ({ data }) => {
    if (hub !== null && TO_HUB.has(data?.t)) hub.handle(data);
    else member.handle(data);
  };
  member.send = (message) => (hub !== null ? hub.handle(message) : channel.postMessage(message));
  const abort = new AbortController();
  locks
    .request(member.name, { signal: abort.signal }, () => {
      if (member.closed) return undefined;
      client.shared = "leader";
      member.leading();
      hub = new Hub({
        base: client.base,
        options: client.options,
        since: client.lastSeq,
        token: member.lastToken,
        getToken: () => client.options.getToken(),
        identity: member.identity,
        takeover: member.hub !== null || member.epoch !== -Infinity,
        broadcast: (message) => {
          channel.postMessage(message);
          member.handle(message);
        },
        to: (id, message) => {
          if (id === member.id) member.handle(message);
          else channel.postMessage({ ...message, to: id });
        },
      });
      hub.announce();
      // Held until this client closes, or the tab goes (and the browser releases it).
      return new Promise((resolve) => (release = resolve));
    })
    .catch(() => {}); // aborted: closed before it led
  member.cleanup.push(() => {
    abort.abort();
    hub?.close();
    release?.();
    channel.close();
  });
  member.send({ t: "join", from: member.id });
}

/**
 * The SharedWorker side: one hub for the group the worker's name names, started by the first tab
 * that joins (with its resume point, token and options), closed when the last one leaves. It
 * asks a tab for a token when the connection needs one — the first to have joined that is still
 * there, and the next one if that one does not answer in time. Exported for tests; the module
 * calls it itself when it runs as a group's worker.
 */
export function serveSharedWorker(scope, runtime = {}) {
  /** Each present tab's port, by member id. */
  const ports = new Map();
  /** Tokens asked of tabs, by question id. */
  const asks = new Map();
  let hub = null;
  let nextAsk = 1;
  const post = (port, message) => {
    try {
      port.postMessage(message);
    } catch {
      // A port whose tab is gone: it leaves, or is passed over.
    }
  };
  const askTab = (member) =>
    new Promise((resolve) => {
      const id = nextAsk++;
      const settle = (answer) => {
        clearTimeout(timer);
        asks.delete(id);
        resolve(answer);
      };
      const timer = setTimeout(() => settle(null), TAB_ANSWER_TIMEOUT_MS);
      asks.set(id, { member, settle });
      post(ports.get(member), { t: "want-token", to: member, id });
    });
  const getToken = async () => {
    const tried = new Set();
    for (;;) {
      const member = [...ports.keys()].find((id) => !tried.has(id));
      if (member === undefined) throw new SwitchboardError("get-token-failed", "no tab gave a token");
      tried.add(member);
      const answer = await askTab(member);
      if (typeof answer?.token === "string") return answer.token;
      if (answer?.error) throw new SwitchboardError(answer.error.code, answer.error.message);
    }
  };
  const start = (join) => {
    const identity = tokenIdentity(join.token);
    if (identity === null || typeof join.base !== "string") return null;
    const options = { ...DEFAULTS, ...portableOptions(join.options ?? {}), ...runtime };
    return new Hub({
      base: new URL(join.base),
      options,
      since: typeof join.since === "number" ? join.since : null,
      token: join.token,
      getToken,
      identity,
      takeover: false,
      broadcast: (message) => {
        for (const port of ports.values()) post(port, message);
      },
      to: (member, message) => ports.has(member) && post(ports.get(member), { ...message, to: member }),
    });
  };
  const leave = (member) => {
    ports.delete(member);
    for (const ask of asks.values()) if (ask.member === member) ask.settle(null);
    if (ports.size === 0 && hub !== null) {
      hub.close();
      hub = null;
    }
  };
  scope.onconnect = (event) => {
    const port = event.ports[0];
    port.onmessage = ({ data: message }) => {
      if (typeof message?.from !== "string") return;
      switch (message.t) {
        case "join":
          try {
            hub ??= start(message);
          } catch {
            return; // a join that names no server
          }
          if (hub === null) return;
          ports.set(message.from, port);
          break;
        case "leave":
          return leave(message.from);
        case "token-for-hub":
          return asks.get(message.id)?.settle(message);
        default:
          break;
      }
      hub?.handle(message);
    };
  };
}

// Run as a group's SharedWorker: serve it.
if (
  typeof SharedWorkerGlobalScope === "function" &&
  globalThis instanceof SharedWorkerGlobalScope &&
  globalThis.name.startsWith(GROUP_PREFIX)
) {
  serveSharedWorker(globalThis);
}

function closeReason(event) {
  const known = {
    1001: "server-shutting-down",
    1008: "too-many-frames",
    1006: "connection-lost",
    1011: "server-error",
    4000: "heartbeat-timeout",
    4001: "slow-consumer",
    4002: "token-expired",
    4003: "token-refused",
    4004: "too-many-sessions",
  };
  return { code: known[event.code] ?? "connection-lost", message: event.reason || `closed with ${event.code}` };
}

async function errorOf(response) {
  try {
    const body = await response.json();
    const { code, message, ...details } = body.error;
    return new SwitchboardError(code, message, { status: response.status, ...details });
  } catch {
    return new SwitchboardError("http-" + response.status, `the server answered ${response.status}`, {
      status: response.status,
    });
  }
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `c-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}
