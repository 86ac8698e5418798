// Types for switchboard.js, served beside it at /sdk/switchboard.d.ts.

export type Status = "connecting" | "open" | "reconnecting" | "polling" | "closed";

/** Why the client is not (or no longer) connected: a server error code or one of the SDK's. */
export interface Failure {
  /** e.g. `token-expired`, `invalid-token`, `server-unreachable`, `websocket-failed`,
   *  `heartbeat-timeout`, `slow-consumer`, `server-shutting-down`, `connection-lost`,
   *  `token-refused`, `too-many-sessions`, `too-many-frames`, `get-token-failed`,
   *  `since-in-future`, `invalid-since` (the resume point was refused: see `ResumeFailure`). */
  code: string;
  message: string;
}

export interface Options {
  /** Asks the app's backend for a Switchboard JWT; called again when the server says it expired. */
  getToken: () => Promise<string> | string;
  /** Resume after this sequence number on the first connection (e.g. kept across a reload). */
  since?: number;
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
}

/** A server frame of type `event`: `seq` is absent for ephemeral events (presence, typing). */
export interface EventFrame<T = unknown> {
  type: "event";
  seq?: number;
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

export const DEFAULTS: Readonly<Required<Omit<Options, "getToken" | "since" | "wsPath" | "WebSocket" | "fetch" | "random">>>;

export function backoffDelay(
  attempt: number,
  options: { backoffBaseMs: number; backoffMaxMs: number },
  random?: () => number,
): number;

export function tokenExpiry(token: string): number | null;

export function connect(url: string, options: Options): Client;

export class Client {
  readonly status: Status;
  readonly lastError: Failure | null;
  /** The sequence number of the last event handed to the app. */
  readonly lastSeq: number | null;

  on(event: "status", handler: (status: Status, reason: Failure | null) => void): this;
  on(event: "resume-failed", handler: (frame: ResumeFailure) => void): this;
  on<T = any>(event: string, handler: (data: T, frame: EventFrame<T>) => void): this;
  off(event: string, handler: (...args: any[]) => void): this;

  send(conversationId: string, text: string, options?: { clientMsgId?: string; attachments?: unknown[] }): Promise<Ack | Record<string, unknown>>;
  markRead(conversationId: string, upTo?: string): Promise<unknown>;
  typing(conversationId: string): void;
  presence(): Promise<string[]>;
  rest<T = any>(method: string, path: string, body?: unknown): Promise<T>;
  close(): void;
}
