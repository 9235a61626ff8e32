// Options are validated once, at setup, with errors that name the option and the fix.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import express from 'express';
import { bgrs, type Options } from '../src/index.js';
import { listen } from './helpers.js';

describe('bgrs() options', () => {
  it('suggests the right name for a misspelt option', () => {
    assert.throws(() => bgrs({ timout: 5 } as unknown as Partial<Options>), /unknown option `timout`, did you mean `timeout`\?/);
    assert.throws(() => bgrs({ BasePath: '/x' } as unknown as Partial<Options>), /did you mean `basePath`/);
  });

  it('names the option, the value and what it expects', () => {
    assert.throws(() => bgrs({ ttl: -1 }), /`ttl` must be a positive number, received `-1`/);
    assert.throws(() => bgrs({ basePath: 'jobs' }), /`basePath` must be a path that starts with '\/'/);
    assert.throws(() => bgrs({ basePath: '/' }), /`basePath` must be a path below the root/);
    assert.throws(() => bgrs({ retryAfter: Number.NaN }), /`retryAfter` must be a number ≥ 0/);
    assert.throws(() => bgrs({ owner: 'me' as unknown as Options['owner'] }), /`owner` must be a function/);
    assert.throws(() => bgrs({ maxResultBytes: 0 }), /`maxResultBytes` must be a positive number/);
  });

  it('treats an option set to undefined as not set', async () => {
    const background = bgrs({ ttl: undefined, basePath: undefined });
    const app = express();
    app.use(background);
    app.get('/x', (_req, res) => res.send('x'));
    const server = await listen(app);
    try {
      const ack = await fetch(`${server.url}/x?bgrs=1`);
      assert.equal(ack.status, 202);
      assert.match(ack.headers.get('location')!, /^\/bgrs\//);
    } finally {
      await server.close();
    }
  });

  it('catches app.use(bgrs) without the call', async () => {
    const app = express();
    app.use(bgrs as unknown as Parameters<typeof app.use>[0]);
    app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      res.status(500).send(err.message);
    });
    const server = await listen(app);
    try {
      const res = await fetch(`${server.url}/`);
      assert.equal(res.status, 500);
      assert.match(await res.text(), /write `app\.use\(bgrs\(\)\)`, not `app\.use\(bgrs\)`/);
    } finally {
      await server.close();
    }
  });

  it('strips a trailing slash from basePath', async () => {
    const background = bgrs({ basePath: '/jobs/' });
    const app = express();
    app.use(background);
    app.get('/x', (_req, res) => res.send('x'));
    const server = await listen(app);
    try {
      const ack = await fetch(`${server.url}/x?bgrs=1`);
      const location = ack.headers.get('location')!;
      assert.match(location, /^\/jobs\/[0-9a-f-]{36}$/);
      assert.equal((await fetch(server.url + location)).status, 200);
    } finally {
      await server.close();
    }
  });

  it('warns once about the MemoryStore in production, unless validations are off', () => {
    const warnings: string[] = [];
    const logger = { warn: (message: string) => warnings.push(message), error: () => undefined };
    const previous = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      bgrs({ logger });
      bgrs({ logger, validations: false });
    } finally {
      process.env.NODE_ENV = previous;
    }
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /\[BGRS_MEMORY_STORE_PRODUCTION\]/);
    bgrs({ logger });
    assert.equal(warnings.length, 1, 'no warning outside production');
  });
});
