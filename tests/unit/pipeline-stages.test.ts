/**
 * Pipeline phase stages: SFT then DPO with the shared options log TRL-named records and write checkpoints
 * every save_steps; SFT is skipped (its saved summary returned) when resuming inside DPO, and a DPO stage
 * resumed from its checkpoint logs what the uninterrupted stage logged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lossOptions, type TrainConfig } from '../../src/config/index.js';
import { loadPreferenceExamples } from '../../src/training/data/index.js';
import { prepareData } from '../../src/training/pipeline/data.js';
import { createReference } from '../../src/training/pipeline/reference.js';
import { loadResumePoint } from '../../src/training/pipeline/resume.js';
import { attachDpoAdapters, countTrainableParameters, runDpo, runSft, type StageRun } from '../../src/training/pipeline/stages.js';
import type { MetricsRecord } from '../../src/training/trainer/monitor.js';
import { TIMING_KEYS } from '../../src/training/trainer/monitor.js';
import pino, { type Logger } from 'pino';
import { silent, smallConfig } from './pipeline-helpers.js';
import { stories, toyPairs } from './trainer-helpers.js';

async function stageRun(cfg: TrainConfig, outputDir: string, records: MetricsRecord[], logger: Logger = silent): Promise<StageRun> {
  const { tokenizer } = await toyPairs();
  const rows = (await loadPreferenceExamples('toy')).slice(0, 8);
  const data = await prepareData(cfg, tokenizer, silent, rows);
  const policy = await stories();
  return { cfg, outputDir, policy, data, logger, log: (r) => void records.push(r), progress: () => {}, onEval: () => async () => {} };
}

const strip = (rs: MetricsRecord[]) => rs.map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => !(TIMING_KEYS as readonly string[]).includes(k))));

test('SFT then DPO: records, checkpoints, and a DPO resume that logs the same steps', async () => {
  const cfg = await smallConfig(['max_steps=3', 'save_steps=1', 'save_total_limit=null', 'n_eval_examples=2', 'max_length=48', 'max_prompt_length=24']);
  const dir = mkdtempSync(join(tmpdir(), 'pipe-stages-'));
  const recs: MetricsRecord[] = [];
  const run = await stageRun(cfg, dir, recs);
  const sft = await runSft(run, null);
  assert.ok(sft.summary.eval_loss !== undefined && sft.summary.loss !== undefined);
  assert.deepEqual(
    recs.filter((r) => r.stage === 'sft' && r.loss !== undefined).map((r) => r.step),
    [1, 2],
  );
  attachDpoAdapters(run);
  const loss = lossOptions(cfg);
  const ref = createReference({ cfg, loss, policy: run.policy, data: run.data, resume: null, logger: silent });
  const dpo = await runDpo(run, { loss, reference: ref, point: null, sftSummary: sft.summary });
  assert.ok(Math.abs(Number(recs.find((r) => r.stage === 'dpo' && r.step === 1)!.loss) - Math.LN2) < 1e-5, 'first DPO loss is ln 2');
  assert.ok(dpo.summary['rewards/accuracies'] !== undefined && dpo.summary.learning_rate !== undefined);
  const train = recs.filter((r) => r.loss !== undefined);
  assert.ok(
    train.every((r) => typeof r.learning_rate === 'number' && !('lr' in r)),
    'learning_rate only (TRL), no lr duplicate',
  );
  const ckpts = readdirSync(join(dir, 'checkpoints'));
  assert.ok(ckpts.includes('checkpoint-sft-000002') && ckpts.includes('checkpoint-dpo-000003'), ckpts.join(','));
  assert.ok(readdirSync(join(dir, 'checkpoints', 'checkpoint-dpo-000001')).includes('reference.safetensors'));
  ref.dispose();
  run.policy.dispose();

  // resume at DPO step 1: SFT skipped with its saved summary, DPO steps 2..3 equal the first run's
  const point = await loadResumePoint({ resume_from_checkpoint: join(dir, 'checkpoints', 'checkpoint-dpo-000001') }, dir, silent);
  const recs2: MetricsRecord[] = [];
  const run2 = await stageRun(cfg, mkdtempSync(join(tmpdir(), 'pipe-stages2-')), recs2);
  const sft2 = await runSft(run2, point);
  assert.deepEqual(sft2, { summary: sft.summary, seconds: 0 });
  attachDpoAdapters(run2);
  const ref2 = createReference({ cfg, loss, policy: run2.policy, data: run2.data, resume: point, logger: silent });
  await runDpo(run2, { loss, reference: ref2, point, sftSummary: sft2.summary });
  const tail = (rs: MetricsRecord[]) => strip(rs.filter((r) => r.stage === 'dpo' && Number(r.step) > 1));
  assert.deepEqual(tail(recs2), tail(recs));
  ref2.dispose();
  run2.policy.dispose();
});

test('sft.enabled=false skips SFT', async () => {
  const cfg = await smallConfig(['sft.enabled=false']);
  const recs: MetricsRecord[] = [];
  const run = await stageRun(cfg, mkdtempSync(join(tmpdir(), 'pipe-stages3-')), recs);
  assert.deepEqual(await runSft(run, null), { summary: {}, seconds: 0 });
  assert.equal(recs.length, 0);
  run.policy.dispose();
});

test('LoRA runs log the trainable-parameter count and percentage (PEFT print_trainable_parameters)', async () => {
  const cfg = await smallConfig(['lora.enabled=true', 'lora.r=2', 'lora.target_modules=[q_proj,v_proj]', 'sft.max_steps=1', 'max_steps=1']);
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
  const run = await stageRun(cfg, mkdtempSync(join(tmpdir(), 'pipe-stages4-')), [], logger);
  const all = countTrainableParameters(run.policy).all;
  await runSft(run, null);
  attachDpoAdapters(run);
  const c = countTrainableParameters(run.policy);
  const { dim, numLayers } = { dim: run.policy.config.hiddenSize, numLayers: run.policy.config.numLayers };
  const kvDim = run.policy.config.numKvHeads * run.policy.config.headDim;
  const expected = numLayers * (2 * (dim + dim) + 2 * (dim + kvDim)); // q: r·(in+out), v: r·(in+kv out), r = 2
  assert.equal(c.trainable, expected);
  assert.equal(c.all, all + expected);
  for (const stage of ['sft', 'dpo']) {
    const line = logs.find((l) => l.stage === stage && l.trainable_params !== undefined);
    assert.ok(line, `${stage} logs the count: ${JSON.stringify(logs.map((l) => l.msg))}`);
    assert.equal(line.trainable_params, expected);
    assert.match(
      String(line.msg),
      new RegExp(`trainable params: ${expected.toLocaleString('en-US')} \\|\\| all params: [\\d,]+ \\|\\| trainable%: \\d+\\.\\d{4}`),
    );
  }
  run.policy.dispose();
});
