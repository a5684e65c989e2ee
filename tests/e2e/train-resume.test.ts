/**
 * runTraining end to end on stories260K + toy data: an interrupted run (aborted during SFT, then during DPO)
 * resumed with resume_from_checkpoint=latest logs exactly the metrics of an uninterrupted run, step for step;
 * the artifact is complete (model/, metrics.jsonl, run.json, TensorBoard events that parse, a PNG plot,
 * samples, manifest with matching hashes); save_total_limit prunes checkpoints.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { runTraining, TrainingAbortedError } from '../../src/training/run.js';
import { MetricsFile, TIMING_KEYS } from '../../src/training/trainer/monitor.js';
import { verifyManifest } from '../../src/storage/manifest.js';
import { maskedCrc32c } from '../../src/training/metrics/index.js';
import { loadConfig } from '../../src/config/index.js';

const silent = pino({ level: 'silent' });
const BASE = [
  'sft.max_steps=4',
  'max_steps=6',
  'batch_size=2',
  'gradient_accumulation_steps=2',
  'eval_every=12',
  'save_steps=2',
  'save_total_limit=2',
  'n_eval_examples=4',
  'n_eval_model_samples=1',
  'sample_max_new_tokens=4',
  'progress_bar=false',
  'warmup_steps=2',
  'lr_scheduler=cosine',
];

function deterministic(path: string): Array<Record<string, unknown>> {
  return MetricsFile.read(path).map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => !(TIMING_KEYS as readonly string[]).includes(k))));
}

/** Parse TFRecord framing of a TensorBoard event file; returns the number of records (checks both CRCs). */
function tfRecords(path: string): number {
  const buf = readFileSync(path);
  let off = 0;
  let n = 0;
  while (off < buf.length) {
    const len = Number(buf.readBigUInt64LE(off));
    assert.equal(buf.readUInt32LE(off + 8), maskedCrc32c(buf.subarray(off, off + 8)), 'length crc');
    const data = buf.subarray(off + 12, off + 12 + len);
    assert.equal(buf.readUInt32LE(off + 12 + len), maskedCrc32c(data), 'data crc');
    off += 12 + len + 4;
    n++;
  }
  return n;
}

async function abortAt(dir: string, stage: 'sft' | 'dpo', step: number, extra: string[] = []): Promise<void> {
  const ac = new AbortController();
  await assert.rejects(
    runTraining({
      outputDir: dir,
      config: loadConfig({ overrides: [...BASE, ...extra] }),
      logger: silent,
      signal: ac.signal,
      onProgress: (e) => {
        if (e.stage === stage && e.step === step) ac.abort();
      },
    }),
    (e: unknown) => e instanceof TrainingAbortedError && e.code === 'TRAINING_ABORTED',
  );
}

test('resume after interruptions equals the uninterrupted run, step for step', async () => {
  const root = mkdtempSync(join(tmpdir(), 'train-resume-'));
  const full = join(root, 'full');
  const res = await runTraining({ outputDir: full, config: loadConfig({ overrides: BASE }), logger: silent });
  assert.ok(res.metrics.dpo['rewards/accuracies'] !== undefined);
  assert.ok(res.metrics.sft.eval_loss !== undefined);

  const cut = join(root, 'cut');
  await abortAt(cut, 'sft', 3); // mid-SFT: checkpoint at step 3 (abort), resumed
  await abortAt(cut, 'dpo', 3, ['resume_from_checkpoint=latest']); // mid-DPO
  const names = readdirSync(join(cut, 'checkpoints')).filter((d) => d.startsWith('checkpoint-'));
  assert.ok(names.length <= 2, `save_total_limit=2 keeps at most 2 checkpoints: ${names.join(', ')}`);
  await runTraining({ outputDir: cut, config: loadConfig({ overrides: [...BASE, 'resume_from_checkpoint=latest'] }), logger: silent });

  const a = deterministic(join(full, 'metrics.jsonl'));
  const b = deterministic(join(cut, 'metrics.jsonl'));
  assert.equal(a.filter((r) => r.stage === 'dpo' && r.loss !== undefined).length, 6);
  assert.ok(
    a.some((r) => r['eval_rewards/accuracies'] !== undefined),
    'eval metrics are logged with eval_ prefix',
  );
  assert.deepEqual(b, a);
  const runJson = JSON.parse(readFileSync(join(cut, 'run.json'), 'utf8'));
  assert.match(String(runJson.resumed_from), /checkpoint-dpo-000003/);
  assert.equal(runJson.config.loss.beta, 0.1);
  assert.ok(runJson.backend.name);

  // artifact
  for (const f of ['model/model.safetensors', 'model/config.json', 'metrics.jsonl', 'run.json', 'manifest.json', 'samples.jsonl', 'training_plot.png']) {
    assert.ok(existsSync(join(full, f)), `${f} exists`);
  }
  assert.deepEqual(await verifyManifest(full), []);
  const png = readFileSync(join(full, 'training_plot.png'));
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const ev = readdirSync(join(full, 'tensorboard')).filter((f) => f.startsWith('events.out.tfevents.'));
  assert.equal(ev.length, 1);
  assert.ok(tfRecords(join(full, 'tensorboard', ev[0]!)) > 20);
  const sample = JSON.parse(readFileSync(join(full, 'samples.jsonl'), 'utf8').split('\n')[0]!);
  assert.equal(typeof sample.completion, 'string');
});
