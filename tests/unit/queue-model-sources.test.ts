/**
 * A registered model file may point at a checkpoint by path (`config/model/<name>.yaml` with `name_or_path:
 * /models/ckpt`). The API resolves the request's `model: <name>` to that path; the worker checks the queued
 * config again and must accept exactly the sources registered files declare, and nothing else, without ever
 * listing those paths in a message.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { registeredModelSources, resolveRequestConfig } from '../../src/config/index.js';
import { configDir } from '../../src/config/paths.js';
import { resolvedConfigProblems } from '../../src/queue/payload.js';

test('the worker accepts the checkpoint path a registered model file declares, and no other path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dpo-model-sources-'));
  const saved = process.env.DPO_CONFIG_DIR;
  t.after(() => {
    if (saved === undefined) delete process.env.DPO_CONFIG_DIR;
    else process.env.DPO_CONFIG_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  });
  cpSync(configDir(), dir, { recursive: true });
  const ckpt = join(dir, 'checkpoints', 'smol');
  writeFileSync(join(dir, 'model', 'smol.yaml'), `name: smol\nname_or_path: ${ckpt}\ntokenizer_name_or_path: null\n`);
  process.env.DPO_CONFIG_DIR = dir;

  const sources = registeredModelSources();
  assert.ok(sources.includes(ckpt), 'the declared checkpoint path is a registered source');
  assert.ok(sources.includes('stories260K'), 'a built-in model file declares its own name');

  const names = Object.freeze({ smol: true, stories260K: true }) as Readonly<Record<string, true>>;
  const lookup = Object.freeze(Object.fromEntries(sources.map((s) => [s, true]))) as Readonly<Record<string, true>>;
  // what the API queues for `config: {model: "smol"}`: the model file's path
  const r = resolveRequestConfig({ model: 'smol' });
  assert.ok(r.config, JSON.stringify(r.problems));
  const resolved = r.config as unknown as Record<string, unknown>;
  assert.equal((resolved.model as { name_or_path: string }).name_or_path, ckpt);
  assert.deepEqual(resolvedConfigProblems(resolved, names, '/data/config', lookup), []);

  // without the declared sources (the worker before this change) the same config was refused
  assert.equal(resolvedConfigProblems(resolved, names, '/data/config').length, 1);

  // any other path stays refused, and the message lists names, never a registered path
  const other = { ...resolved, model: { ...(resolved.model as object), name_or_path: join(dir, 'checkpoints', 'other') } };
  const problems = resolvedConfigProblems(other, names, '/data/config', lookup);
  assert.equal(problems.length, 1);
  assert.equal(problems[0]!.path, '/data/config/model/name_or_path');
  assert.match(problems[0]!.message, /smol, stories260K/);
  assert.ok(!problems[0]!.message.includes(ckpt));
});
