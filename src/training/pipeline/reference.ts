/**
 * Pipeline phase: the DPO reference, one of four sources behind one interface —
 * - `none`: a reference-free loss (SimPO, ORPO, ... or `loss.reference_free`);
 * - `lora`: the policy with its adapters disabled (TRL / LlamaFactory `disable_adapter()`), no extra weights;
 * - `precomputed`: the log-probs of the SFT model scored once before DPO (TRL `precompute_ref_log_probs`);
 * - `model`: a frozen copy of the SFT model, optionally synced to the policy during training (TR-DPO soft sync
 *   `sync_ref_model`, or PaddleNLP's hard update every `ref_model_update_steps`).
 * Each source says what a DPO checkpoint must store to continue it, and restores itself from a checkpoint.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { Logger } from 'pino';
import { ConfigError, type TrainConfig } from '../../config/index.js';
import type { TokenizedPair } from '../data/index.js';
import { hardSyncReference, needsReference, referenceSyncDue, softSyncReference, type ResolvedLossOptions } from '../losses/index.js';
import { storeFrozenInLowPrecision } from '../models/frozen.js';
import { cloneModel, type GenerativeLM } from '../models/index.js';
import { assignVariables } from '../trainer/checkpoint.js';
import { scorePairs, type ReferenceSource, type RefLogps } from '../trainer/tasks.js';
import type { F32Tensor } from '../trainer/tensorfile.js';
import type { ResumePoint } from './resume.js';

/** What a DPO checkpoint stores for the reference. */
export interface ReferenceCheckpoint {
  /** The frozen model's weights (`model` source), else null. */
  reference: Map<string, tf.Variable> | null;
  /** The precomputed log-probs (`precomputed` source), else null. */
  refLogps: Map<string, F32Tensor> | null;
}

/** The DPO reference. */
export interface Reference {
  readonly kind: ReferenceSource['kind'];
  /** What the DPO task reads reference log-probs from. */
  readonly source: ReferenceSource;
  /** Checkpoint contents of this reference. */
  checkpoint(): ReferenceCheckpoint;
  /** After each DPO optimizer step (1-based `step`): sync a frozen model when due. */
  afterStep(step: number): void;
  /** Free the reference's own weights (the frozen copy); the policy is not touched. */
  dispose(): void;
}

export type ReferenceConfig = Pick<
  TrainConfig,
  | 'lora'
  | 'precompute_ref_log_probs'
  | 'eval_batch_size'
  | 'sync_ref_model'
  | 'ref_model_sync_steps'
  | 'ref_model_update_steps'
  | 'ref_model_mixup_alpha'
  | 'frozen_weights_dtype'
>;

export interface ReferenceInputs {
  cfg: ReferenceConfig;
  loss: ResolvedLossOptions;
  /** The policy at the start of DPO (the SFT model, with DPO's adapters when LoRA is on). */
  policy: GenerativeLM;
  data: { train: TokenizedPair[]; eval: TokenizedPair[]; padId: number };
  /** A DPO checkpoint to restore the reference from (null: build it from `policy`). */
  resume: ResumePoint | null;
  logger: Logger;
}

const NO_STATE: ReferenceCheckpoint = { reference: null, refLogps: null };

const REF_LOGPS_KEYS = ['train_chosen', 'train_rejected', 'eval_chosen', 'eval_rejected'] as const;

/** Precomputed log-probs as checkpoint tensors (each `[N]`). */
export function refLogpsToHost(p: { train: RefLogps; eval: RefLogps }): Map<string, F32Tensor> {
  const arrays = [p.train.chosen, p.train.rejected, p.eval.chosen, p.eval.rejected];
  return new Map(REF_LOGPS_KEYS.map((k, i) => [k, { shape: [arrays[i]!.length], data: arrays[i]! }]));
}

/** Precomputed log-probs from checkpoint tensors (a missing tensor reads as empty). */
export function refLogpsFromHost(m: Map<string, F32Tensor>): { train: RefLogps; eval: RefLogps } {
  const g = (k: string): Float32Array => m.get(k)?.data ?? new Float32Array(0);
  return { train: { chosen: g('train_chosen'), rejected: g('train_rejected') }, eval: { chosen: g('eval_chosen'), rejected: g('eval_rejected') } };
}

function precomputed(o: ReferenceInputs): Reference {
  let logps: { train: RefLogps; eval: RefLogps };
  if (o.resume) {
    if (!o.resume.refLogps)
      throw new ConfigError('resume_from_checkpoint', `${o.resume.dir} has no reference log-probs; it was written with other reference settings`);
    logps = refLogpsFromHost(o.resume.refLogps);
  } else {
    const t0 = Date.now();
    const { train, eval: evalPairs, padId } = o.data;
    logps = { train: scorePairs(o.policy, train, padId, o.cfg.eval_batch_size), eval: scorePairs(o.policy, evalPairs, padId, o.cfg.eval_batch_size) };
    o.logger.info({ pairs: train.length + evalPairs.length, seconds: (Date.now() - t0) / 1000 }, 'reference log-probs precomputed');
  }
  const host = refLogpsToHost(logps);
  return {
    kind: 'precomputed',
    source: { kind: 'precomputed', ...logps },
    checkpoint: () => ({ reference: null, refLogps: host }),
    afterStep: () => {},
    dispose: () => {},
  };
}

function frozenCopy(o: ReferenceInputs): Reference {
  const model = cloneModel(o.policy, { trainable: false });
  // a frozen copy in bfloat16 costs half (native backend; the GEMM widens while packing)
  if (o.cfg.frozen_weights_dtype === 'bfloat16') storeFrozenInLowPrecision(model, 'bfloat16');
  if (o.resume) {
    if (!o.resume.reference) {
      model.dispose();
      throw new ConfigError('resume_from_checkpoint', `${o.resume.dir} has no reference weights; it was written with other reference settings`);
    }
    assignVariables(model.params, o.resume.reference, 'checkpoint reference');
  }
  const sync = {
    syncRefModel: o.cfg.sync_ref_model,
    refModelSyncSteps: o.cfg.ref_model_sync_steps,
    refModelUpdateSteps: o.cfg.ref_model_update_steps ?? undefined,
  };
  return {
    kind: 'model',
    source: { kind: 'model', model },
    checkpoint: () => ({ reference: model.params, refLogps: null }),
    afterStep: (step) => {
      const due = referenceSyncDue(step, sync);
      if (due === 'soft') softSyncReference(o.policy.params, model.params, o.cfg.ref_model_mixup_alpha);
      else if (due === 'hard') hardSyncReference(o.policy.params, model.params);
    },
    dispose: () => model.dispose(),
  };
}

/**
 * The reference for the configured loss and settings: none (reference-free loss), the adapter-disabled
 * policy (`lora.enabled`), precomputed log-probs (`precompute_ref_log_probs`), else a frozen copy of `policy`.
 * @throws ConfigError (`resume_from_checkpoint`) when a DPO checkpoint lacks the frozen reference's weights or
 *   the precomputed log-probs;
 *   CheckpointError when they do not match the model
 */
export function createReference(o: ReferenceInputs): Reference {
  const passive = (kind: 'none' | 'lora'): Reference => ({
    kind,
    source: { kind },
    checkpoint: () => NO_STATE,
    afterStep: () => {},
    dispose: () => {},
  });
  if (!needsReference(o.loss)) return passive('none');
  if (o.cfg.lora.enabled) return passive('lora');
  if (o.cfg.precompute_ref_log_probs) return precomputed(o);
  return frozenCopy(o);
}
