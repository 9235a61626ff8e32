// The built package: require() and import of dist, and its .d.ts compile in ESM and CommonJS projects.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

const root = new URL('..', import.meta.url).pathname;
const node = (args: string[]): string => execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' });

describe('the published package', () => {
  it('loads with require()', () => {
    const out = node(['-e', "const m = require('express-bgrs'); console.log(typeof m.bgrs, typeof m.MemoryStore, typeof m.bgrs().detachable)"]);
    assert.equal(out.trim(), 'function function function');
  });

  it('loads express-bgrs/testing with require() and import', () => {
    assert.equal(node(['-e', "console.log(typeof require('express-bgrs/testing').storeConformanceSuite)"]).trim(), 'function');
    assert.equal(
      node(['--input-type=module', '-e', "import { storeConformanceSuite } from 'express-bgrs/testing'; console.log(typeof storeConformanceSuite)"]).trim(),
      'function',
    );
  });

  it('loads the store subpaths without loading their drivers until used', () => {
    const out = node([
      '-e',
      "const { RedisStore } = require('express-bgrs/redis'); const { PostgresStore } = require('express-bgrs/postgres'); const loaded = Object.keys(require.cache).filter((k) => /node_modules\\/(ioredis|pg)\\//.test(k)).length; console.log(typeof RedisStore, typeof PostgresStore, loaded)",
    ]);
    assert.equal(out.trim(), 'function function 0');
    const esm = node([
      '--input-type=module',
      '-e',
      "import { RedisStore } from 'express-bgrs/redis'; import { PostgresStore } from 'express-bgrs/postgres'; console.log(typeof RedisStore, typeof PostgresStore)",
    ]);
    assert.equal(esm.trim(), 'function function');
  });

  it('loads express-bgrs/bullmq with require() and import, without loading bullmq until a queue is used', () => {
    const cjs = node([
      '-e',
      "const { bullmq } = require('express-bgrs/bullmq'); const loaded = Object.keys(require.cache).filter((k) => /node_modules\\/bullmq\\//.test(k)).length; console.log(typeof bullmq, loaded)",
    ]);
    assert.equal(cjs.trim(), 'function 0');
    assert.equal(node(['--input-type=module', '-e', "import { bullmq } from 'express-bgrs/bullmq'; console.log(typeof bullmq)"]).trim(), 'function');
  });

  it('says how to install bullmq when queue mode is used without it', () => {
    // A resolve hook makes bullmq missing, as in an app that never installed it.
    const hook = `export async function resolve(specifier, context, next) {
      if (specifier === 'bullmq') throw Object.assign(new Error("Cannot find package 'bullmq'"), { code: 'ERR_MODULE_NOT_FOUND' });
      return next(specifier, context);
    }`;
    const script = `import { register } from 'node:module';
      register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}));
      const { bgrs } = await import('express-bgrs');
      const { bullmq } = await import('express-bgrs/bullmq');
      const { RedisStore } = await import('express-bgrs/redis');
      const { Redis } = await import('ioredis');
      const errors = [];
      const client = new Redis({ lazyConnect: true });
      const background = bgrs({ store: new RedisStore({ client }), executor: bullmq({ connection: {} }), logger: { warn() {}, error: (m) => errors.push(m) } });
      const worker = background.work((req, res) => res.end());
      await new Promise((resolve) => setTimeout(resolve, 300));
      await worker.close();
      await background.close();
      client.disconnect();
      console.log(errors.join('\\n'));`;
    const out = node(['--input-type=module', '-e', script]);
    assert.match(out, /queue mode needs the bullmq package \(6\.x\), an optional peer dependency: npm install bullmq/);
  });

  it('loads with import', () => {
    const out = node([
      '--input-type=module',
      '-e',
      "import { bgrs, MemoryStore, isReplay } from 'express-bgrs'; console.log(typeof bgrs, typeof MemoryStore, typeof isReplay)",
    ]);
    assert.equal(out.trim(), 'function function function');
  });

  for (const [label, module, moduleResolution] of [
    ['an ESM (NodeNext) project', 'NodeNext', 'NodeNext'],
    ['a CommonJS project', 'CommonJS', 'Node10'],
  ] as const) {
    it(`type-checks in ${label}`, () => {
      // A user's project: the package and express under node_modules, the usage file beside them.
      const dir = mkdtempSync(join(tmpdir(), 'bgrs-types-'));
      mkdirSync(join(dir, 'node_modules'));
      symlinkSync(root, join(dir, 'node_modules/express-bgrs'));
      symlinkSync(join(root, 'node_modules/express'), join(dir, 'node_modules/express'));
      symlinkSync(join(root, 'node_modules/@types'), join(dir, 'node_modules/@types'));
      symlinkSync(join(root, 'node_modules/ioredis'), join(dir, 'node_modules/ioredis'));
      symlinkSync(join(root, 'node_modules/pg'), join(dir, 'node_modules/pg'));
      copyFileSync(join(root, 'test/fixtures/types/usage.ts'), join(dir, 'usage.ts'));
      const config = join(dir, 'tsconfig.json');
      writeFileSync(
        config,
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, module, moduleResolution, esModuleInterop: true, skipLibCheck: false, types: ['node'] },
          files: [join(dir, 'usage.ts')],
        }),
      );
      try {
        execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', config], { cwd: dir, encoding: 'utf8' });
      } catch (err) {
        assert.fail(`tsc failed:\n${(err as { stdout?: string }).stdout ?? String(err)}`);
      }
    });
  }
});
