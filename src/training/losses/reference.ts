/**
 * Reference-model updates during DPO.
 * - Soft sync (TR-DPO, Gorbatovski et al. 2024, arXiv:2404.09656, Eq. 6): ref ← α·policy + (1 − α)·ref every
 *   `ref_model_sync_steps` steps with α = `ref_model_mixup_alpha` (TRL `trl/trainer/callbacks.py:SyncRefModelCallback`,
 *   defaults α = 0.6, 512 steps). α = 1 is the hard update.
 * - Hard copy (PaddleNLP `ref_model_update_steps`: `ref.set_state_dict(model.state_dict())`).
 * Both work on two parameter maps keyed by the same HF tensor names (`CausalLM.params`). The trainer decides
 * when to call them.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Parameters missing on one side or of a different shape. */
export class ReferenceSyncError extends Error {
  readonly code = 'REFERENCE_SYNC_MISMATCH';
  constructor(message: string) {
    super(message);
    this.name = 'ReferenceSyncError';
  }
}

function pairs(policy: Map<string, tf.Variable>, reference: Map<string, tf.Variable>): Array<[tf.Variable, tf.Variable, string]> {
  const out: Array<[tf.Variable, tf.Variable, string]> = [];
  for (const [name, ref] of reference) {
    const pol = policy.get(name);
    if (!pol) {
      throw new ReferenceSyncError(
        `reference parameter '${name}' has no policy counterpart; sync needs the same architecture (no LoRA adapters on one side only)`,
      );
    }
    if (pol.shape.join('x') !== ref.shape.join('x')) {
      throw new ReferenceSyncError(`parameter '${name}': policy shape [${pol.shape}] differs from reference shape [${ref.shape}]`);
    }
    out.push([pol, ref, name]);
  }
  return out;
}

/**
 * TR-DPO soft update in place: ref ← α·policy + (1 − α)·ref for every reference parameter.
 * @param policy policy parameters (read only)
 * @param reference reference parameters (assigned)
 * @param alpha mixup α in [0, 1] (`ref_model_mixup_alpha`)
 * @throws ReferenceSyncError when names or shapes differ; RangeError for α outside [0, 1]
 */
export function softSyncReference(policy: Map<string, tf.Variable>, reference: Map<string, tf.Variable>, alpha: number): void {
  if (!(alpha >= 0 && alpha <= 1)) throw new RangeError(`ref_model_mixup_alpha must be in [0, 1], got ${alpha}`);
  for (const [pol, ref] of pairs(policy, reference)) {
    tf.tidy(() => {
      ref.assign(tf.add(tf.mul(pol, alpha), tf.mul(ref, 1 - alpha)));
    });
  }
}

/**
 * Hard update in place: ref ← policy (PaddleNLP `ref_model_update_steps`).
 * @throws ReferenceSyncError when names or shapes differ
 */
export function hardSyncReference(policy: Map<string, tf.Variable>, reference: Map<string, tf.Variable>): void {
  for (const [pol, ref] of pairs(policy, reference)) {
    tf.tidy(() => {
      ref.assign(tf.clone(pol));
    });
  }
}

/**
 * Whether the reference should be synced after optimizer step `step` (1-based) given the settings:
 * soft every `syncSteps` when `syncRefModel`, hard every `updateSteps` (> 0).
 */
export function referenceSyncDue(
  step: number,
  s: { syncRefModel?: boolean; refModelSyncSteps?: number; refModelUpdateSteps?: number },
): 'soft' | 'hard' | null {
  if (s.refModelUpdateSteps && s.refModelUpdateSteps > 0 && step % s.refModelUpdateSteps === 0) return 'hard';
  if (s.syncRefModel && s.refModelSyncSteps && s.refModelSyncSteps > 0 && step % s.refModelSyncSteps === 0) return 'soft';
  return null;
}
