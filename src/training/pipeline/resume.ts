/**
 * Pipeline phase: `resume_from_checkpoint` — find the checkpoint (`latest` under `<output_dir>/checkpoints`,
 * or a directory), read it, and hand each stage the part it continues from.
 */
import type { Logger } from 'pino';
import type { TrainConfig } from '../../config/index.js';
import { canonicalSha256 } from '../data/hash.js';
import { readCheckpoint, resolveCheckpoint, type CheckpointState } from '../trainer/checkpoint.js';
import type { OptimizerState } from '../trainer/optimizer.js';
import type { StagePosition } from '../trainer/stage.js';
import type { F32Tensor } from '../trainer/tensorfile.js';

/** A checkpoint read from disk (host tensors). */
export interface ResumePoint {
  /** The checkpoint directory. */
  dir: string;
  state: CheckpointState;
  policy: Map<string, F32Tensor>;
  optimizer: OptimizerState;
  /** The frozen reference model's weights (DPO checkpoints with a separate reference). */
  reference: Map<string, F32Tensor> | null;
  /** Precomputed reference log-probs (`train_chosen`, `train_rejected`, `eval_chosen`, `eval_rejected`, each `[N]`). */
  refLogps: Map<string, F32Tensor> | null;
}

/** What one stage continues from: the weights, the optimizer state and the loop position. */
export interface StageResume {
  policy: Map<string, F32Tensor>;
  optimizer: OptimizerState;
  position: StagePosition;
}

/**
 * Hash of the training-relevant settings (every key but resume/output/progress/log cadence), stored in each
 * checkpoint's state.
 */
export function configHash(cfg: TrainConfig): string {
  const relevant = { ...cfg, resume_from_checkpoint: null, output_dir: null, progress_bar: null, log_every: null };
  return canonicalSha256(relevant).slice(0, 16);
}

/**
 * Resolve and read `resume_from_checkpoint` (null setting, or `latest` with no checkpoint yet: a fresh start).
 * @throws CheckpointError when an explicit path is not a checkpoint, or its state / tensors cannot be read
 */
export async function loadResumePoint(cfg: Pick<TrainConfig, 'resume_from_checkpoint'>, outputDir: string, logger: Logger): Promise<ResumePoint | null> {
  if (!cfg.resume_from_checkpoint) return null;
  const dir = await resolveCheckpoint(cfg.resume_from_checkpoint, outputDir);
  if (!dir) {
    logger.info({ output_dir: outputDir }, 'resume_from_checkpoint=latest: no checkpoint yet, starting fresh');
    return null;
  }
  const ckpt = await readCheckpoint(dir);
  logger.info({ checkpoint: dir, stage: ckpt.state.stage, step: ckpt.state.step }, 'resuming from checkpoint');
  return { dir, ...ckpt };
}

/** The loop position stored in a checkpoint state. */
export function stagePosition(s: CheckpointState): StagePosition {
  return { step: s.step, examples: s.examples, numTokens: s.numTokens, rng: s.rng, lastMetrics: s.lastMetrics, lastEval: s.lastEval };
}

/** The part of `point` that `stage` continues from; null when there is no resume point or it is in the other stage. */
export function resumeFor(point: ResumePoint | null, stage: 'sft' | 'dpo'): StageResume | null {
  if (!point || point.state.stage !== stage) return null;
  return { policy: point.policy, optimizer: point.optimizer, position: stagePosition(point.state) };
}
