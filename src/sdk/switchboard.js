// Switchboard's browser client: one dependency-free ES module, served by the server at
// /sdk/switchboard.js (types beside it in switchboard.d.ts).
//
// It carries the server's guarantees to the page: it connects with a token from the app's own
// backend, resumes from the last event it delivered after any interruption (so nothing is lost
// or repeated), asks for a new token when the server says the old one expired, notices a dead
// connection when pongs stop, backs off with full jitter, and falls back to long-polling when
// WebSockets keep failing — telling the app at every step through `status`.
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

/** The `exp` claim of a JWT, in ms since the epoch, or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp } = JSON.parse(atob(payload));
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
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

/** Opens a client; see the README's "Browser SDK" section. */
export function connect(url, options) {
  return new Client(url, options);
}

export class Client {
  constructor(url, options = {}) {
    if (typeof options.getToken !== "function") {
      throw new TypeError("connect(url, { getToken }) needs getToken: an async function returning a JWT");
    }
    this.options = { ...DEFAULTS, ...options };
    this.base = new URL(url, globalThis.location?.href);
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.random = options.random ?? Math.random;
    this.handlers = new Map();
    this.status = "connecting";
    /** The last failure: `{ code, message }`, or null. */
    this.lastError = null;
    /** The sequence number of the last event handed to the app (null before the first welcome). */
    this.lastSeq = options.since ?? null;
    this.token = null;
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
    if (this.isOpen()) return this.request(frame);
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
    if (this.isOpen()) return this.request({ type: "read", conversation_id: conversationId, ...body });
    return this.rest("POST", `/api/v1/conversations/${encodeURIComponent(conversationId)}/read`, body);
  }

  /** Tells the other participants this user is typing (live only: dropped when not connected). */
  typing(conversationId) {
    if (this.isOpen()) this.ws.send(JSON.stringify({ type: "typing", conversation_id: conversationId }));
  }

  /** The online users of this account. */
  async presence() {
    if (this.isOpen()) return (await this.request({ type: "presence" })).users;
    return (await this.rest("GET", "/api/v1/presence")).users;
  }

  /** Calls the server's REST API with this client's token (refreshed once if it expired). */
  async rest(method, path, body) {
    const call = async () =>
      this.fetch(new URL(path, this.base), {
        method,
        headers: {
          authorization: `Bearer ${await this.currentToken()}`,
          ...(body ? { "content-type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
      });
    let response = await call();
    if (response.status === 401) {
      const error = await errorOf(response);
      if (!TOKEN_CODES.has(error.code)) throw error;
      this.token = null;
      response = await call();
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
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

  isOpen() {
    return this.ws !== null && this.welcomed;
  }

  async currentToken() {
    const expiry = this.token && tokenExpiry(this.token);
    // Refresh a little early so that a token is not refused in flight.
    if (!this.token || (expiry !== null && expiry - 5000 < Date.now())) {
      this.token = await this.options.getToken();
    }
    return this.token;
  }

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
        new URL(`/api/v1/events?since=${since}&timeout=0`, this.base),
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
    this.lastError = reason;
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
    if (this.lastSeq === null) this.lastSeq = frame.seq;
    if (this.polling) {
      this.polling.abort();
      this.polling = null;
    }
    this.clearTimers();
    this.startHeartbeat(frame.heartbeat_interval_ms, frame.client_timeout_ms);
    this.setStatus("open", null);
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
    this.emit("resume-failed", { code: "resume-failed", ...frame });
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
    this.emit("resume-failed", frame);
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
            : `/api/v1/events?since=${this.lastSeq}&timeout=${this.options.pollTimeoutS}`;
        const response = await this.fetch(new URL(path, this.base), {
          headers: { authorization: `Bearer ${await this.currentToken()}` },
          signal: controller.signal,
        });
        if (this.polling !== controller) return;
        if (response.ok) {
          const page = await response.json();
          if (this.polling !== controller) return;
          for (const frame of page.events) this.deliver(frame);
          if (this.lastSeq === null) this.lastSeq = page.since;
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
        this.lastError = { code: error.code, message: error.message };
      } catch (e) {
        if (controller.signal.aborted) return;
        this.lastError = { code: "server-unreachable", message: String(e?.message ?? e) };
      }
      this.setStatus("reconnecting", this.lastError);
      await new Promise((resolve) => this.later(resolve, backoffDelay(failures++, this.options, this.random)));
    }
  }

  // --- requests and answers --------------------------------------------------------------

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
    if (changed) this.emit("status", status, reason);
  }

  emit(event, ...args) {
    for (const handler of this.handlers.get(event) ?? []) {
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
