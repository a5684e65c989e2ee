/**
 * The API's listening entry (src/api/server.ts) as a real process over real HTTP: it listens on PORT,
 * answers /health and /docs/json, rejects a bad environment naming the variable, and exits 0 on SIGTERM
 * (close-with-grace).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { closedPort, dropPrefix, REDIS_URL, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const entry = join(root, 'src/api/server.ts');

function run(env: Record<string, string>) {
  const proc = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd: root,
    env: { ...process.env, REDIS_URL, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return { proc, exit, log: () => out };
}

test('dpo serve listens, serves /health and /docs/json, and exits 0 on SIGTERM', async () => {
  const port = await closedPort();
  const prefix = uniquePrefix('srv');
  const api = run({ PORT: String(port), HOST: '127.0.0.1', QUEUE_PREFIX: prefix });
  let health: Response | null = null;
  for (let i = 0; i < 300 && !health; i++) {
    assert.equal(api.proc.exitCode, null, api.log());
    health = await fetch(`http://127.0.0.1:${port}/health`).catch(() => null);
    if (!health) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(health, `the API did not listen on ${port}:\n${api.log()}`);
  assert.equal(health.status, 200);
  assert.equal(((await health.json()) as { redis: string }).redis, 'up');
  const doc = await fetch(`http://127.0.0.1:${port}/docs/json`);
  assert.equal(doc.status, 200);
  assert.ok(((await doc.json()) as { paths: Record<string, unknown> }).paths['/trigger-finetune']);
  api.proc.kill('SIGTERM');
  assert.equal(await api.exit, 0, api.log());
  await dropPrefix(prefix);
});

test('a bad environment value stops the API with a message naming the variable', async () => {
  const api = run({ PORT: 'eighty' });
  assert.equal(await api.exit, 1);
  assert.match(api.log(), /PORT must be integer/);
});
