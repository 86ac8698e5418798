// Types for switchboard.js, served beside it at /sdk/switchboard.d.ts.

export type Status = "connecting" | "open" | "reconnecting" | "polling" | "closed";

/** Why the client is not (or no longer) connected: a server error code or one of the SDK's. */
export interface Failure {
  /** e.g. `token-expired`, `invalid-token`, `server-unreachable`, `websocket-failed`,
   *  `heartbeat-timeout`, `slow-consumer`, `server-shutting-down`, `connection-lost`,
   *  `token-refused`, `too-many-sessions`, `too-many-frames`, `get-token-failed`,
   *  `since-in-future`, `invalid-since` (the resume point was refused: see `ResumeFailure`).
   *  On a shared connection, `connection-lost` also while the tab that held it is replaced. */
  code: string;
  message: string;
}

export interface Options {
  /**
   * Asks the app's backend for a Switchboard JWT; called again when the server says it expired.
   * With `shared`, each tab calls it once to learn whose connection to share; after that the
   * group asks one tab's for all.
   */
  getToken: () => Promise<string> | string;
  /** Resume after this sequence number on the first connection (e.g. kept across a reload). */
  since?: number;
  /**
   * Share one connection with this browser's other tabs that use the same server and
   * `wsPath` as the same account and user (read from the token): in a SharedWorker when this
   * module was loaded from the page's own origin, else in one tab elected with Web Locks that
   * relays over a BroadcastChannel; alone where neither exists. See docs/sdk.md, "One
   * connection per browser".
   */
  shared?: boolean;
  /** Defaults in `DEFAULTS`. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  pollAfterFailures?: number;
  wsRetryWhilePollingMs?: number;
  pollTimeoutS?: number;
  heartbeatIntervalMs?: number;
  clientTimeoutMs?: number;
  /** The WebSocket path, `/ws` by default. */
  wsPath?: string;
  /** For tests and non-browser runtimes. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  random?: () => number;
  /** With `shared`: `null` never uses a SharedWorker (e.g. for a bundled copy of this module). */
  SharedWorker?: typeof SharedWorker | null;
  /** With `shared`, for tests: the Web Locks manager and BroadcastChannel to elect a leader tab with. */
  locks?: LockManager | null;
  BroadcastChannel?: typeof BroadcastChannel | null;
}

/** A server frame of type `event`: `seq` is absent for ephemeral events (presence, typing). */
export interface EventFrame<T = unknown> {
  type: "event";
  seq?: number;
  /** Set for a channel's event. */
  channel?: string;
  event: string;
  data: T;
}

export interface Ack {
  type: "ack";
  ref: number;
  conversation_id: string;
  message_id?: string;
  seq?: number;
  duplicate?: boolean;
}

/**
 * Handed to `resume-failed` handlers: the client could not resume where it left off, so reload
 * your state. `code` says why: `resume-failed` — the server no longer keeps what was missed
 * (live events carry on after `seq`); `since-in-future` — the resume point is ahead of the
 * server's history (a restored database, say); `invalid-since` — it is not a sequence number.
 * For the last two the client has dropped its resume point and connected afresh.
 */
export interface ResumeFailure {
  type: "resume-failed";
  code: "resume-failed" | "since-in-future" | "invalid-since";
  message?: string;
  /** The resume point that could not be honoured. */
  since: number | null;
  /** The oldest event the server keeps (`resume-failed`). */
  oldest_seq?: number;
  /** Live events carry on after this one (`resume-failed` on the WebSocket). */
  seq?: number;
}

export class SwitchboardError extends Error {
  code: string;
  status?: number;
  retry_after_ms?: number;
}

export const DEFAULTS: Readonly<
  Required<
    Omit<
      Options,
      "getToken" | "since" | "shared" | "wsPath" | "WebSocket" | "fetch" | "random" | "SharedWorker" | "locks" | "BroadcastChannel"
    >
  >
>;

export function backoffDelay(
  attempt: number,
  options: { backoffBaseMs: number; backoffMaxMs: number },
  random?: () => number,
): number;

export function tokenExpiry(token: string): number | null;

/** The account (`account_id`) and user (`sub`) a JWT names, read without verifying it; null if none. */
export function tokenIdentity(token: string): { account: string; user: string } | null;

/** Serves a group's shared connection from a SharedWorker's scope (the module does so itself). */
export function serveSharedWorker(
  scope: { onconnect: ((event: { ports: readonly MessagePort[] }) => void) | null },
  runtime?: Pick<Options, "WebSocket" | "fetch" | "random">,
): void;

export function connect(url: string, options: Options): Client;

export class Client {
  readonly status: Status;
  readonly lastError: Failure | null;
  /** The sequence number of the last event handed to the app. */
  readonly lastSeq: number | null;
  /**
   * How the connection is held: `null` by this client alone, `"worker"` in the group's
   * SharedWorker, `"leader"` by this tab for the group, `"follower"` by another tab.
   */
  readonly shared: "worker" | "leader" | "follower" | null;

  on(event: "status", handler: (status: Status, reason: Failure | null) => void): this;
  on(event: "resume-failed", handler: (frame: ResumeFailure) => void): this;
  on(event: "subscribe-failed", handler: (failure: { channel: string; code: string; message: string }) => void): this;
  on<T = any>(event: string, handler: (data: T, frame: EventFrame<T>) => void): this;
  off(event: string, handler: (...args: any[]) => void): this;

  send(conversationId: string, text: string, options?: { clientMsgId?: string; attachments?: unknown[] }): Promise<Ack | Record<string, unknown>>;
  markRead(conversationId: string, upTo?: string): Promise<unknown>;
  typing(conversationId: string): void;
  presence(): Promise<string[]>;
  /** Follows a channel the token allows; answers a function that stops it. */
  subscribe<T = any>(channel: string, handler: (data: T, frame: EventFrame<T>) => void): () => void;
  /** Stops `handler` (every handler of the channel, without one). */
  unsubscribe(channel: string, handler?: (...args: any[]) => void): void;
  rest<T = any>(method: string, path: string, body?: unknown): Promise<T>;
  close(): void;
}
