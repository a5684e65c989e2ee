/**
 * The memory estimate (src/training/plan/memory.ts) and its refusal: each memory setting lowers the part it
 * should, an impossible run is refused with INSUFFICIENT_MEMORY naming the estimate, the memory available
 * and what would fit, and `dpo train` refuses it before any training step (and `--dry-run` prints the plan).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config/index.js';
import { InsufficientMemoryError, checkMemory, estimateMemory } from '../../src/training/plan/memory.js';
import type { ModelConfig } from '../../src/training/types.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Qwen2.5-0.5B's shape. */
const qwen05: ModelConfig = {
  architecture: 'llama',
  modelType: 'qwen2',
  vocabSize: 151936,
  hiddenSize: 896,
  intermediateSize: 4864,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  headDim: 64,
  maxPositionEmbeddings: 32768,
  normEps: 1e-6,
  ropeTheta: 1000000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  attentionBias: true,
  qkNorm: false,
  bosTokenId: null,
  eosTokenId: 151643,
  padTokenId: null,
};

const base = loadConfig({ overrides: ['batch_size=4', 'max_length=512', 'max_prompt_length=256'] });

test('the estimate: Qwen2.5-0.5B parameter count, and each memory setting lowers its part', () => {
  const full = estimateMemory(qwen05, base);
  // 494M parameters (HF reports 494,032,768 for Qwen2.5-0.5B)
  assert.ok(Math.abs(full.weights / 4 - 494_032_768) < 1e3, `parameters ${full.weights / 4}`);
  const ckpt = estimateMemory(qwen05, { ...base, gradient_checkpointing: true });
  assert.ok(ckpt.activations < full.activations / 3, `checkpointing: ${ckpt.activations} vs ${full.activations}`);
  const lora = estimateMemory(qwen05, { ...base, lora: { ...base.lora, enabled: true, r: 16, target_modules: 'all-linear' } });
  assert.equal(lora.reference, 0, 'LoRA: the reference is the adapter-disabled policy');
  assert.ok(lora.optimizer < full.optimizer / 20 && lora.gradients < full.gradients / 20);
  const bf16 = estimateMemory(qwen05, { ...base, frozen_weights_dtype: 'bfloat16' });
  assert.ok(bf16.reference < 0.75 * full.reference, 'a bfloat16 reference costs less');
  const pre = estimateMemory(qwen05, { ...base, precompute_ref_log_probs: true });
  assert.equal(pre.reference, 0);
  const loraInt8 = estimateMemory(qwen05, { ...base, weight_quantize_algo: 'weight_only_int8', lora: { ...base.lora, enabled: true } });
  assert.ok(loraInt8.weights < 0.5 * full.weights);
});

test('checkMemory refuses with INSUFFICIENT_MEMORY naming the estimate, the memory available and what would fit', () => {
  const available = 6 * 2 ** 30;
  assert.throws(
    () => checkMemory(qwen05, base, { available }),
    (e: unknown) => {
      assert.ok(e instanceof InsufficientMemoryError);
      assert.equal(e.code, 'INSUFFICIENT_MEMORY');
      assert.match(e.message, /estimated peak memory \d+\.\d\d GiB \(weights .*\) exceeds the 6\.00 GiB available/);
      assert.ok(e.wouldFit.length > 0, e.message);
      assert.match(e.message, /would fit: .*lora\.enabled=true/);
      for (const w of e.wouldFit) assert.ok(w.bytes <= available);
      return true;
    },
  );
  assert.equal(checkMemory(qwen05, base, { available: 2 ** 40 }).totalBytes, estimateMemory(qwen05, base).totalBytes);
});

test('dpo train refuses an impossible run with INSUFFICIENT_MEMORY before any step; --dry-run prints the plan', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'plan-memory-'));
  const args = ['batch_size=4096', 'max_length=65536', 'max_prompt_length=32', `output_dir=${out}`];
  const run = spawnSync(process.execPath, ['bin/dpo.js', 'train', ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  assert.equal(run.status, 1, run.stderr.slice(-2000));
  assert.match(run.stderr, /INSUFFICIENT_MEMORY: estimated peak memory [\d.]+ GiB .* exceeds the [\d.]+ GiB available/);
  assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
  const metrics = path.join(out, 'metrics.jsonl');
  assert.ok(!fs.existsSync(metrics) || fs.readFileSync(metrics, 'utf8').trim() === '', 'no training step ran');
  const dry = spawnSync(process.execPath, ['bin/dpo.js', 'train', '--dry-run', 'max_steps=3'], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  assert.equal(dry.status, 0, dry.stderr.slice(-2000));
  assert.match(dry.stdout, /# dry run: nothing trained/);
  assert.match(dry.stdout, /stage: sft\n\s+steps: 3/);
  assert.match(dry.stdout, /stage: dpo\n\s+steps: 3/);
  assert.match(dry.stdout, /estimate_gib: [\d.]+\n\s+available_gib: [\d.]+\n\s+fits: true/);
  const dryBad = spawnSync(process.execPath, ['bin/dpo.js', 'train', '--dry-run', ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  assert.equal(dryBad.status, 1);
  assert.match(dryBad.stdout, /fits: false/);
  assert.match(dryBad.stderr, /INSUFFICIENT_MEMORY/);
  fs.rmSync(out, { recursive: true, force: true });
});
