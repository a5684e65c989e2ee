/**
 * tfjs-core's gradient registry under Node (src/training/engine/gradients.ts): the cached one-file bundle
 * and the resolve-hook fallback both register the gradients (checked in fresh processes, since the registry
 * is per process).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const script = `
const tf = await import('@tensorflow/tfjs-core');
await import('@tensorflow/tfjs-backend-cpu');
await tf.setBackend('cpu');
const { ensureGradients, gradientsRegistered } = await import('./src/training/engine/gradients.ts');
const before = gradientsRegistered();
await ensureGradients();
const g = tf.grad((x) => tf.mean(tf.square(x)))(tf.tensor1d([1, 2, 3]));
console.log(JSON.stringify({ before, after: gradientsRegistered(), grad: Array.from(g.dataSync()) }));
`;

function run(cacheDir: string): { before: boolean; after: boolean; grad: number[] } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, DPO_NATIVE_CACHE: cacheDir },
  });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { before: boolean; after: boolean; grad: number[] };
}

test('gradients: built into the cache once, then imported from it; d mean(x^2) = 2x/n', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpo-grad-cache-'));
  try {
    for (let i = 0; i < 2; i++) {
      const r = run(dir);
      assert.equal(r.before, false);
      assert.equal(r.after, true);
      r.grad.forEach((v, j) => assert.ok(Math.abs(v - (2 * (j + 1)) / 3) < 1e-6, `grad ${r.grad}`));
      assert.ok(
        fs.readdirSync(dir).some((f) => /^tfjs-core-.*-gradients-.*\.mjs$/.test(f)),
        'bundle cached',
      );
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('gradients: an unusable cache directory falls back to the resolve hook', () => {
  const file = path.join(os.tmpdir(), `dpo-grad-not-a-dir-${process.pid}`);
  fs.writeFileSync(file, 'x');
  try {
    const r = run(path.join(file, 'sub')); // a directory below a file cannot be created
    assert.equal(r.after, true);
    r.grad.forEach((v, j) => assert.ok(Math.abs(v - (2 * (j + 1)) / 3) < 1e-6));
  } finally {
    fs.rmSync(file, { force: true });
  }
});
