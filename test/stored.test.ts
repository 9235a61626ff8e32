// Unit tests of the stored request (src/replay/stored.ts): what queue mode keeps with a job comes back exactly,
// and bytes it did not write are refused with a clear error, never replayed as something else.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Envelope } from '../src/replay/capture.js';
import { decodeRequest, encodeRequest, mayRerun } from '../src/replay/stored.js';

const envelope = (body: Buffer | null, extra: Partial<Envelope> = {}): Envelope => ({
  method: 'POST',
  url: '/orders?x=1',
  rawHeaders: ['Host', 'example.test', 'Content-Type', 'application/octet-stream', 'X-Ünïcode', 'wert'],
  body,
  bodyConsumed: false,
  contentLength: body ? String(body.length) : undefined,
  remoteAddress: '::ffff:127.0.0.1',
  remotePort: 51234,
  remoteFamily: 'IPv6',
  encrypted: true,
  ...extra,
});

describe('stored requests', () => {
  it('round-trips an envelope and a raw body of every byte value', () => {
    const body = Buffer.from(Array.from({ length: 4096 }, (_, i) => i % 256));
    const back = decodeRequest(encodeRequest({ envelope: envelope(body) }));
    assert.deepEqual(back.envelope, envelope(body));
    assert.ok(back.envelope.body!.equals(body));
    assert.equal(back.parsed, undefined);
    assert.equal(back.rerun, false);
  });

  it('round-trips no body, and an empty one', () => {
    assert.equal(decodeRequest(encodeRequest({ envelope: envelope(null) })).envelope.body, null);
    assert.deepEqual(decodeRequest(encodeRequest({ envelope: envelope(Buffer.alloc(0)) })).envelope.body, Buffer.alloc(0));
  });

  it('carries a body parsed before bgrs: JSON, a string (express.text) or bytes (express.raw)', () => {
    const consumed = envelope(null, { bodyConsumed: true, contentLength: '42' });
    const json = { order: [1, 2, { deep: null }], note: 'ünï', flag: false };
    assert.deepEqual(decodeRequest(encodeRequest({ envelope: consumed, parsed: { value: json } })).parsed, { value: json });
    assert.deepEqual(decodeRequest(encodeRequest({ envelope: consumed, parsed: { value: 'plain text' } })).parsed, { value: 'plain text' });
    const bytes = Buffer.from([0, 255, 10, 13]);
    const raw = decodeRequest(encodeRequest({ envelope: consumed, parsed: { value: bytes } })).parsed;
    assert.ok(Buffer.isBuffer(raw?.value) && raw.value.equals(bytes));
    assert.deepEqual(decodeRequest(encodeRequest({ envelope: consumed, parsed: { value: {} } })).parsed, { value: {} });
  });

  it('carries whether another worker may run it again', () => {
    assert.equal(decodeRequest(encodeRequest({ envelope: envelope(null), rerun: true })).rerun, true);
    assert.equal(decodeRequest(encodeRequest({ envelope: envelope(null), rerun: false })).rerun, false);
  });

  it("carries the route's run options and the Idempotency-Key the worker completes, and nothing when there are none", () => {
    const decoded = decodeRequest(
      encodeRequest({ envelope: envelope(null), run: { timeout: 600_000, ttl: 86_400_000 }, idempotency: { key: 'k1', ttl: 3600 } }),
    );
    assert.deepEqual(decoded.run, { timeout: 600_000, ttl: 86_400_000 });
    assert.deepEqual(decoded.idempotency, { key: 'k1', ttl: 3600 });
    const plain = decodeRequest(encodeRequest({ envelope: envelope(null) }));
    assert.equal('run' in plain, false);
    assert.equal('idempotency' in plain, false);
  });

  it('refuses bytes it did not write: too short, cut short, another version, not JSON', () => {
    const good = encodeRequest({ envelope: envelope(Buffer.from('body')) });
    assert.throws(() => decodeRequest(Buffer.from([0, 0])), /too short/);
    assert.throws(() => decodeRequest(good.subarray(0, 10)), /cut short/);
    const header = Buffer.from(JSON.stringify({ v: 99, envelope: {}, hasBody: false }));
    const length = Buffer.alloc(4);
    length.writeUInt32BE(header.length);
    assert.throws(() => decodeRequest(Buffer.concat([length, header])), /version 99/);
    const junk = Buffer.from('{nope');
    length.writeUInt32BE(junk.length);
    assert.throws(() => decodeRequest(Buffer.concat([length, junk])), SyntaxError);
  });

  it('mayRerun: the methods RFC 9110 calls idempotent, or a route that opted in', () => {
    for (const method of ['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'get']) assert.equal(mayRerun(method, false), true, method);
    for (const method of ['POST', 'PATCH', 'CONNECT']) assert.equal(mayRerun(method, false), false, method);
    assert.equal(mayRerun('POST', true), true);
  });
});
