/**
 * Resume restores the run (issue 16): a checkpoint carries the run's resolved config, so
 * `resume_from_checkpoint=latest output_dir=<dir>` alone — without the original `datasets=[...]` and
 * `loss.beta` — continues the original run on the original data, and its metrics equal an uninterrupted
 * run's (also through the `dpo train` CLI). A given setting that differs from the checkpoint's fails naming
 * the key and both values, unless it is a safe one (max_steps) or `resume_strict=false`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pino from 'pino';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { loadPreferenceExamples } from '../../src/training/data/index.js';
import { runTraining, TrainingAbortedError } from '../../src/training/run.js';
import { MetricsFile, TIMING_KEYS } from '../../src/training/trainer/monitor.js';

const silent = pino({ level: 'silent' });
const root = resolve(import.meta.dirname, '../..');

/** runTraining as the CLI calls it: the config resolved from the overrides, which are also what was given. */
function train(outputDir: string, overrides: string[], extra: { signal?: AbortSignal; onProgress?: (e: { stage: string; step: number }) => void } = {}) {
  return runTraining({ outputDir, config: loadConfig({ overrides }), given: { overrides }, logger: silent, ...extra });
}

function deterministic(dir: string): Array<Record<string, unknown>> {
  return MetricsFile.read(join(dir, 'metrics.jsonl')).map((r) =>
    Object.fromEntries(Object.entries(r).filter(([k]) => !(TIMING_KEYS as readonly string[]).includes(k))),
  );
}

test('resume without the original overrides continues the original run; conflicting overrides fail naming the key', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'resume-cfg-'));
  // data that is not the default toy set: its last 14 pairs, in reverse
  const data = join(tmp, 'pairs.json');
  writeFileSync(data, JSON.stringify((await loadPreferenceExamples('toy')).slice(-14).reverse()));
  const ORIGINAL = [
    `datasets=[${data}]`,
    'loss.beta=0.2',
    'sft.max_steps=2',
    'max_steps=4',
    'batch_size=2',
    'save_steps=1',
    'n_eval_examples=2',
    'n_eval_model_samples=0',
    'progress_bar=false',
    'tensorboard=false',
    'plot=false',
    'log_logit_stats=false',
  ];
  const full = join(tmp, 'full');
  await train(full, ORIGINAL);

  const cut = join(tmp, 'cut');
  const ac = new AbortController();
  await assert.rejects(
    train(cut, ORIGINAL, { signal: ac.signal, onProgress: (e) => void (e.stage === 'dpo' && e.step === 2 && ac.abort()) }),
    TrainingAbortedError,
  );
  for (const name of ['cli', 'conflict', 'lenient', 'longer']) cpSync(cut, join(tmp, name), { recursive: true });

  // the README's line: only resume_from_checkpoint and the output dir
  await train(cut, ['resume_from_checkpoint=latest']);
  assert.deepEqual(deterministic(cut), deterministic(full));
  const run = JSON.parse(readFileSync(join(cut, 'run.json'), 'utf8'));
  assert.deepEqual(run.config.datasets, [data]);
  assert.equal(run.config.loss.beta, 0.2);
  assert.equal(run.data.sha256, JSON.parse(readFileSync(join(full, 'run.json'), 'utf8')).data.sha256);

  // the same through the CLI
  const cli = join(tmp, 'cli');
  const r = spawnSync(process.execPath, ['bin/dpo.js', 'train', 'resume_from_checkpoint=latest', `output_dir=${cli}`], {
    cwd: root,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, LOG_LEVEL: 'warn' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`datasets:\\n\\s+- ${data.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 'the printed config is the checkpoint run’s');
  assert.deepEqual(deterministic(cli), deterministic(full));

  // an unsafe change fails naming the key and both values, and trains nothing
  const conflict = join(tmp, 'conflict');
  await assert.rejects(
    train(conflict, ['resume_from_checkpoint=latest', 'loss.beta=0.3', 'max_length=96']),
    (e: unknown) =>
      e instanceof ConfigError &&
      e.code === 'INVALID_CONFIG' &&
      e.key === 'loss.beta' &&
      /loss\.beta: the checkpoint has 0\.2, the resume command gives 0\.3/.test(e.message) &&
      /max_length: the checkpoint has 128, the resume command gives 96/.test(e.message) &&
      /resume_strict=false/.test(e.message),
  );
  // resume_strict=false resumes with the given value (and without `given`, a setting that differs from the
  // defaults counts as given)
  const lenient = join(tmp, 'lenient');
  const lenientCfg = loadConfig({ overrides: ['resume_from_checkpoint=latest', 'loss.beta=0.3', 'resume_strict=false'] });
  await runTraining({ outputDir: lenient, config: lenientCfg, logger: silent });
  assert.equal(JSON.parse(readFileSync(join(lenient, 'run.json'), 'utf8')).config.loss.beta, 0.3);
  // a safe change: more DPO steps
  const longer = join(tmp, 'longer');
  await train(longer, ['resume_from_checkpoint=latest', 'max_steps=6']);
  const dpoSteps = deterministic(longer).filter((x) => x.stage === 'dpo' && x.loss !== undefined);
  assert.deepEqual(
    dpoSteps.map((x) => x.step),
    [1, 2, 3, 4, 5, 6],
  );
  assert.deepEqual(JSON.parse(readFileSync(join(longer, 'run.json'), 'utf8')).config.datasets, [data]);
});
