// Types of tether.js (and codec.js, which it re-exports): the public API only.

export const PROTOCOL_V1: 1;
export const PROTOCOL_V2: 2;
export const DEFAULT_MAX_FRAME: 65536;
export const HEARTBEAT_MS_MAX: 268435455;
export const LOGIN_PROBE: 1;
export const LOGIN_UPSTREAM: 2;
export const PUSH_WANT_ACK: 1;
export const SUBPROTOCOL: "tether";

export const CloseCode: Readonly<{
  Normal: 1000; ServerShutdown: 1001; IdleTimeout: 1002; SlowConsumer: 1003; WriteTimeout: 1004;
  Overloaded: 1005; InternalError: 1006; ProtocolError: 2000; FrameTooLarge: 2001;
  UnknownFrame: 2002; LoginTimeout: 2003; LoginRequired: 2004; AuthFailed: 2005;
  TokenExpired: 2006; UnsupportedVersion: 2007; Replaced: 2008; Kicked: 2009; NotAllowed: 2010;
}>;
export const RefuseReason: Readonly<{
  SlowConsumer: 1; TooLarge: 2; RateLimited: 3; Overloaded: 4; NotAllowed: 5; ShuttingDown: 6;
  BadTarget: 7; ClusterUnavailable: 8; TimedOut: 9; NoBackend: 10; Rejected: 11;
}>;

/** A close code's name, or `Other(n)`. */
export function closeCodeName(code: number): string;
/** A refuse reason's name, or `Other(n)`. */
export function refuseReasonName(reason: number): string;
/** Whether a close code allows reconnecting (anything outside 2000–2999). */
export function mayReconnect(code: number): boolean;
/** The tether close code a WebSocket close code 4000–4999 stands for, or null. */
export function tetherCodeOfWsClose(wsCode: number): number | null;

export type Status =
  | { kind: "Delivered"; devices: number }
  | { kind: "Offline" }
  | { kind: "Refused"; reason: number }
  | { kind: "Acked" }
  | { kind: "Accepted" };

/** A frame: its type name and its fields, named as in docs/protocol.md. u64 fields are bigints. */
export type Frame =
  | { type: "Login"; version: number; flags: number; user: string; device: string; token: string; heartbeat_ms: number; network_key: string }
  | { type: "LoginOk"; session_id: bigint; server_epoch: bigint; min_lease_ms: number; max_lease_ms: number; lease_multiplier_pct: number; grace_ms: number; prior_ms: number; max_frame: number }
  | { type: "Ping"; lease_ms: number }
  | { type: "Pong"; deadline_ms: number }
  | { type: "Push"; id: bigint; payload: Uint8Array }
  | { type: "PushAck"; id: bigint }
  | { type: "Send"; to: string; client_id: bigint; payload: Uint8Array }
  | { type: "SendResult"; client_id: bigint; status: Status }
  | { type: "Kick"; reason: number; may_reconnect: boolean; jitter_ms: number }
  | { type: "GoAway"; reason: number; may_reconnect: boolean; window_ms: number }
  | { type: "Close"; code: number; text: string }
  | { type: "Probe"; delay_ms: number }
  | { type: "ProbeFire" }
  | { type: "NetReport"; learned_ms: number }
  | { type: "BackendPush"; id: bigint; flags: number; user: string; payload: Uint8Array }
  | { type: "PushResult"; id: bigint; status: Status }
  | { type: "Upstream"; client_id: bigint; flags: number; payload: Uint8Array }
  | { type: "UpstreamResult"; client_id: bigint; status: { kind: "Accepted" } | { kind: "Refused"; reason: number }; reply: Uint8Array }
  | { type: "UpstreamDeliver"; id: bigint; user: string; device: string; session_id: bigint; client_id: bigint; payload: Uint8Array }
  | { type: "UpstreamAnswer"; id: bigint; accepted: boolean; reply: Uint8Array }
  | { type: "Message"; id: bigint; from_user: string; from_device: string; payload: Uint8Array }
  | { type: "TokenNotice"; expires_in_ms: number }
  | { type: "Refresh"; token: string }
  | { type: "Refreshed" }
  | { type: "Ignored"; kind: number };

/** The bytes of one frame, framing included. Integers may be given as numbers or bigints, payloads as strings (UTF-8). */
export function encode(frame: Frame | Record<string, unknown>): Uint8Array;
/** The frame at the front of `buf`, or null while it is incomplete. Throws DecodeError. */
export function decodeFrame(buf: Uint8Array, opts?: { max?: number; version?: number }): { frame: Frame; used: number } | null;
/** The spec's readable form of a frame, e.g. `Ping { lease_ms: 240000 }`. */
export function describe(frame: Frame): string;

/** Reassembles a byte stream that arrives in pieces. */
export class Decoder {
  constructor(opts?: { max?: number; version?: number });
  max: number;
  version: number;
  readonly pending: number;
  push(bytes: Uint8Array): void;
  next(): Frame | null;
}

export class DecodeError extends Error {
  kind: "Oversized" | "UnknownType" | "BadUtf8" | "Malformed";
  /** 2001, 2002 or 2000: what the receiver closes with. */
  closeCode: number;
}
export class EncodeError extends Error {}

export class TetherError extends Error {
  code: "stopped" | "queue_full" | "too_large" | "unsupported" | "bad_argument" | "connection_lost";
  closeCode?: number;
}

export interface Push {
  id: bigint;
  payload: Uint8Array;
  text(): string;
  /** Acknowledges it, once; a no-op after the connection it came on ended. */
  ack(): void;
  /** For a client's Message: its sender. */
  from_user?: string;
  from_device?: string;
}

export interface UpstreamResult {
  clientId: bigint;
  accepted: boolean;
  reason: number | null;
  reasonName: string | null;
  reply: Uint8Array;
  text(): string;
}

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export type State = "idle" | "connecting" | "online" | "waiting" | "offline" | "stopped";

export interface ClientOptions {
  url: string;
  user: string;
  device?: string;
  token: string;
  getToken?: () => string | Promise<string>;
  WebSocket?: unknown;
  heartbeatMs?: number;
  hiddenHeartbeatMs?: number;
  pongTimeoutMs?: number;
  connectTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  maxQueued?: number;
  maxInFlight?: number;
  autoAck?: boolean;
  onPush?: (push: Push) => void | Promise<void>;
  onMessage?: (message: Push) => void | Promise<void>;
  /** States, and the events `token_notice`, `token_refreshed`, `go_away`, `lost`. */
  onState?: (state: State | "token_notice" | "token_refreshed" | "go_away" | "lost", detail: Record<string, unknown>) => void;
  onError?: (err: Error) => void;
  timers?: Timers;
  random?: () => number;
  window?: EventTarget | null;
  document?: (EventTarget & { visibilityState?: string }) | null;
}

export class TetherClient {
  constructor(opts: ClientOptions);
  readonly state: State;
  /** The last LoginOk, once logged in. */
  readonly loginOk: Extract<Frame, { type: "LoginOk" }> | null;
  /** The lease in use now (visible or hidden), within the server's bounds. */
  readonly leaseMs: number;
  readonly stats: { connects: number; logins: number; pings: number; pongs: number; pushes: number; lastPongDeadlineMs: number };
  start(): void;
  close(): void;
  upstream(payload: Uint8Array | string, opts?: { clientId?: bigint | number }): Promise<UpstreamResult>;
  setOnline(online: boolean): void;
  setVisible(visible: boolean): void;
}
