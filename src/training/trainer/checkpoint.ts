/**
 * Training checkpoints: everything needed to continue a run so that its metrics equal an uninterrupted run's,
 * step for step — the model parameters (policy; the reference when it is a separate model), the optimizer
 * state, the stage / step / data position, the RNG state and the running counters.
 *
 * Layout: `<output_dir>/checkpoints/checkpoint-<stage>-<step>/{state.json, policy.safetensors,
 * optimizer.safetensors, reference.safetensors?, ref_logps.safetensors?}`. A checkpoint is written into a
 * temporary directory and renamed into place (atomic), and `state.json` is written last, so a directory with
 * a `state.json` is complete. `save_total_limit` prunes the oldest.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { TrainConfig } from '../../config/index.js';
import type { OptimizerState } from './optimizer.js';
import type { RngState } from './rng.js';
import { type F32Tensor, readF32Safetensors, writeF32Safetensors } from './tensorfile.js';

export const CHECKPOINT_VERSION = 1;

export class CheckpointError extends Error {
  readonly code = 'INVALID_CHECKPOINT';
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

/** The JSON part of a checkpoint. */
export interface CheckpointState {
  version: number;
  stage: 'sft' | 'dpo';
  /** Optimizer steps completed in this stage. */
  step: number;
  totalSteps: number;
  /** Training examples consumed in this stage. */
  examples: number;
  /** Running total of non-padding tokens (TRL num_tokens). */
  numTokens: number;
  rng: RngState;
  optimizer: { name: string; step: number };
  /** Whether the stage finished (a checkpoint at the end of SFT resumes straight into DPO). */
  stageComplete: boolean;
  /** Metrics of the last logged train step and the last evaluation (for the run summary). */
  lastMetrics: Record<string, number>;
  lastEval: Record<string, number>;
  /** Metrics summary of the finished SFT stage (DPO checkpoints). */
  sftSummary?: Record<string, number>;
  /** Hash of the training-relevant config (checkpoints written before `config` was saved are compared by it). */
  configHash: string;
  /**
   * The run's full resolved config (loadConfig's result), which a resume continues; untrusted when read back
   * (re-validated by loadConfig). Absent in older checkpoints.
   */
  config?: TrainConfig;
  /** sha256 of the run's training examples (the data phase's hash), checked on resume. */
  dataSha256?: string;
  savedAt: string;
}

export interface CheckpointData {
  state: CheckpointState;
  policy: Map<string, tf.Variable>;
  optimizer: OptimizerState;
  reference?: Map<string, tf.Variable> | null;
  refLogps?: Map<string, F32Tensor> | null;
}

export function checkpointsDir(outputDir: string): string {
  return join(outputDir, 'checkpoints');
}

const STAGE_ORDER = { sft: 0, dpo: 1 } as const;

export function checkpointName(stage: 'sft' | 'dpo', step: number): string {
  return `checkpoint-${stage}-${String(step).padStart(6, '0')}`;
}

function varsToHost(vars: Map<string, tf.Variable>): Map<string, F32Tensor> {
  const out = new Map<string, F32Tensor>();
  for (const [k, v] of vars) out.set(k, { shape: v.shape.slice(), data: (v.dataSync() as Float32Array).slice() });
  return out;
}

/**
 * Write a checkpoint atomically and prune old ones.
 * @returns the checkpoint directory
 */
export async function saveCheckpoint(outputDir: string, data: CheckpointData, opts: { totalLimit: number | null }): Promise<string> {
  const root = checkpointsDir(outputDir);
  await mkdir(root, { recursive: true });
  const name = checkpointName(data.state.stage, data.state.step);
  const final = join(root, name);
  const tmp = join(root, `.tmp-${name}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  await writeF32Safetensors(join(tmp, 'policy.safetensors'), varsToHost(data.policy));
  const slots = new Map<string, F32Tensor>();
  for (const [k, s] of data.optimizer.slots) slots.set(k, s);
  await writeF32Safetensors(join(tmp, 'optimizer.safetensors'), slots, { name: data.optimizer.name, step: String(data.optimizer.step) });
  if (data.reference) await writeF32Safetensors(join(tmp, 'reference.safetensors'), varsToHost(data.reference));
  if (data.refLogps) await writeF32Safetensors(join(tmp, 'ref_logps.safetensors'), data.refLogps);
  await writeFile(join(tmp, 'state.json'), JSON.stringify(data.state, null, 2));
  if (existsSync(final)) await rm(final, { recursive: true, force: true });
  await rename(tmp, final);
  await pruneCheckpoints(outputDir, opts.totalLimit);
  return final;
}

interface Listed {
  dir: string;
  stage: 'sft' | 'dpo';
  step: number;
}

/** Complete checkpoints of a run, oldest first. */
export async function listCheckpoints(outputDir: string): Promise<Listed[]> {
  const root = checkpointsDir(outputDir);
  if (!existsSync(root)) return [];
  const out: Listed[] = [];
  for (const e of await readdir(root)) {
    const m = /^checkpoint-(sft|dpo)-(\d+)$/.exec(e);
    if (!m || !existsSync(join(root, e, 'state.json'))) continue;
    out.push({ dir: join(root, e), stage: m[1] as 'sft' | 'dpo', step: Number(m[2]) });
  }
  return out.sort((a, b) => STAGE_ORDER[a.stage] - STAGE_ORDER[b.stage] || a.step - b.step);
}

/** Keep the newest `limit` checkpoints (null: keep all); also removes stale temporary directories. */
export async function pruneCheckpoints(outputDir: string, limit: number | null): Promise<void> {
  const root = checkpointsDir(outputDir);
  for (const e of await readdir(root)) {
    if (e.startsWith('.tmp-') && !e.endsWith(`-${process.pid}`)) await rm(join(root, e), { recursive: true, force: true });
  }
  if (!limit) return;
  const all = await listCheckpoints(outputDir);
  for (const c of all.slice(0, Math.max(0, all.length - limit))) await rm(c.dir, { recursive: true, force: true });
}

/**
 * Resolve `resume_from_checkpoint`: `latest` → the newest complete checkpoint under `<outputDir>/checkpoints`
 * (null when there is none: a fresh start); otherwise a checkpoint directory (absolute, or relative to the cwd).
 * @throws CheckpointError when an explicit path has no state.json
 */
export async function resolveCheckpoint(spec: string, outputDir: string): Promise<string | null> {
  if (spec === 'latest') {
    const all = await listCheckpoints(outputDir);
    return all.length ? all[all.length - 1]!.dir : null;
  }
  const dir = resolve(spec);
  if (!existsSync(join(dir, 'state.json'))) {
    throw new CheckpointError(
      `resume_from_checkpoint=${spec}: ${dir} is not a checkpoint (no state.json); use 'latest' or a checkpoints/checkpoint-<stage>-<step> directory`,
    );
  }
  return dir;
}

/** Read a checkpoint's JSON state and tensors (host copies). */
export async function readCheckpoint(dir: string): Promise<{
  state: CheckpointState;
  policy: Map<string, F32Tensor>;
  optimizer: OptimizerState;
  reference: Map<string, F32Tensor> | null;
  refLogps: Map<string, F32Tensor> | null;
}> {
  let state: CheckpointState;
  try {
    state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as CheckpointState;
  } catch (e) {
    throw new CheckpointError(`${dir}/state.json cannot be read: ${(e as Error).message}`);
  }
  if (state.version !== CHECKPOINT_VERSION) throw new CheckpointError(`${dir}: checkpoint version ${state.version}, expected ${CHECKPOINT_VERSION}`);
  const policy = await readF32Safetensors(join(dir, 'policy.safetensors'));
  const slots = await readF32Safetensors(join(dir, 'optimizer.safetensors'));
  const reference = existsSync(join(dir, 'reference.safetensors')) ? await readF32Safetensors(join(dir, 'reference.safetensors')) : null;
  const refLogps = existsSync(join(dir, 'ref_logps.safetensors')) ? await readF32Safetensors(join(dir, 'ref_logps.safetensors')) : null;
  return {
    state,
    policy,
    optimizer: { name: state.optimizer.name as OptimizerState['name'], step: state.optimizer.step, slots },
    reference,
    refLogps,
  };
}

/**
 * Assign host tensors to variables by name.
 * @throws CheckpointError naming a parameter that is missing or has another shape
 */
export function assignVariables(vars: Map<string, tf.Variable>, host: Map<string, F32Tensor>, what: string): void {
  for (const [k, v] of vars) {
    const h = host.get(k);
    if (!h) throw new CheckpointError(`${what}: parameter ${k} is missing from the checkpoint (different model or LoRA settings?)`);
    if (h.shape.join('x') !== v.shape.join('x')) {
      throw new CheckpointError(`${what}: parameter ${k} has shape [${h.shape}] in the checkpoint, [${v.shape}] in the model`);
    }
    tf.tidy(() => v.assign(tf.tensor(h.data, h.shape, 'float32')));
  }
}
