// Replays a request envelope through a private, never-listening http.Server and hands back the real response.
import { AsyncResource } from 'node:async_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { duplexPair } from 'node:stream';

/** Everything needed to run a request again, away from the client's connection. Serializable but for `body`. */
export interface Envelope {
  method: string;
  /** Path and query as the handler must see them (the `bgrs` parameter removed). */
  url: string;
  /** Flat `[name, value, name, value…]` list, already filtered (no hop-by-hop, conditional or range headers). */
  rawHeaders: string[];
  /** Raw body bytes to send, or `null` when there are none to send. */
  body: Buffer | null;
  /**
   * The original body was consumed by a parser before bgrs saw it: the replay carries none, the
   * replayed request arrives already consumed (so parsers skip it) and its headers show the
   * original `Content-Length` (`undefined`: it had none).
   */
  bodyConsumed: boolean;
  contentLength: string | undefined;
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  remoteFamily: string | undefined;
  encrypted: boolean;
}

/** Runs on the replayed request, in the async context captured when the job was detached. */
export type ReplayHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface Replay {
  /** Resolves with the response head; its body is a stream. Rejects if the connection dies first. */
  response: Promise<IncomingMessage>;
  /** Tears down the private connection: the handler sees a client disconnect. */
  abort(): void;
}

interface RunSlot {
  handle: ReplayHandler;
  resource: AsyncResource;
  envelope: Envelope;
}

const kSlot = Symbol('bgrs.slot');
type SlotSocket = Duplex & { [kSlot]?: RunSlot };
type ClientSocket = Duplex;

/** What the Agent and the http server call on a socket; an in-memory pair has no use for any of it. */
const SOCKET_NO_OPS = {
  setKeepAlive() {
    return this;
  },
  setNoDelay() {
    return this;
  },
  setTimeout() {
    return this;
  },
  ref() {
    return this;
  },
  unref() {
    return this;
  },
};

/** Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1). */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

// Large limits: the outer server already accepted these headers, and responses may carry many cookies.
const MAX_HEADER_SIZE = 1 << 20;

/**
 * One private server per bgrs instance. Every job gets a connection of its own, an in-memory pair
 * made for it and destroyed with it: whatever the app attaches to `req.socket` in one job (an
 * NTLM identity, a cached user) can never be seen by another, and an idle connection never keeps
 * a finished job's request alive. (Pooling the pairs replayed faster; it is what let state cross
 * jobs, so it went. bench/RESULTS.md has the figures.)
 */
export class Replayer {
  readonly #server: http.Server;

  constructor() {
    this.#server = http.createServer({ maxHeaderSize: MAX_HEADER_SIZE, requestTimeout: 0 }, onReplayedRequest);
    // A parse error must not reach the default 'clientError' handler's console noise; the client side sees it.
    this.#server.on('clientError', (_err, socket) => socket.destroy());
  }

  /** Starts one request on a fresh in-memory connection. */
  replay(envelope: Envelope, handle: ReplayHandler): Replay {
    const slot: RunSlot = { handle, resource: new AsyncResource('bgrs.job'), envelope };
    const [serverSide, clientSide] = duplexPair() as [SlotSocket, ClientSocket];
    // Node does not carry a destroy across a duplexPair (nodejs/node#61015): link both ways, or a
    // handler that destroys its socket would leave the job waiting forever.
    serverSide.once('close', () => clientSide.destroy());
    clientSide.once('close', () => serverSide.destroy());
    Object.assign(serverSide, SOCKET_NO_OPS, {
      remoteAddress: envelope.remoteAddress,
      remotePort: envelope.remotePort,
      remoteFamily: envelope.remoteFamily,
      encrypted: envelope.encrypted || undefined,
      [kSlot]: slot,
    });
    Object.assign(clientSide, SOCKET_NO_OPS, {
      // The client calls this once the response is over. Without it, it ends its side instead, and
      // the server end, already finished, is told to end again: Node builds (and drops) an
      // ERR_STREAM_ALREADY_FINISHED with its stack for every job. The pair is destroyed right after
      // anyway (on the response's close), so destroying it here only skips that end.
      destroySoon() {
        clientSide.destroy();
      },
    });
    this.#server.emit('connection', serverSide);
    const request = http.request({
      method: envelope.method,
      path: envelope.url,
      headers: envelope.rawHeaders,
      createConnection: () => clientSide,
      maxHeaderSize: MAX_HEADER_SIZE,
    });
    const response = new Promise<IncomingMessage>((resolve, reject) => {
      request.once('response', (res: IncomingMessage) => {
        // The connection serves this one job: once its response is over, both ends go.
        res.once('close', () => clientSide.destroy());
        resolve(res);
      });
      request.once('error', reject);
    });
    // Handled by whoever awaits it; this keeps an early failure from counting as unhandled meanwhile.
    response.catch(() => undefined);
    request.end(envelope.body ?? undefined);
    return {
      response,
      abort() {
        request.destroy();
        serverSide.destroy();
      },
    };
  }
}

function onReplayedRequest(req: IncomingMessage, res: ServerResponse): void {
  const slot = (req.socket as SlotSocket)[kSlot];
  if (!slot) {
    res.statusCode = 500;
    res.end();
    return;
  }
  const { handle, resource, envelope } = slot;
  const start = (): void => resource.runInAsyncScope(handle, null, req, res);
  if (!envelope.bodyConsumed) {
    start();
    return;
  }
  // Drain the (empty) wire body so that body parsers see a finished request and keep `req.body`.
  if (envelope.contentLength === undefined) delete req.headers['content-length'];
  else req.headers['content-length'] = envelope.contentLength;
  req.once('end', start);
  req.resume();
}
