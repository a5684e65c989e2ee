/**
 * Learning-rate schedules: warmup then linear / cosine / constant.
 *
 * Warmup follows the DPO reference implementation (`trainers.py`: `LambdaLR(lambda step: min(1.0, (step + 1) /
 * (warmup_steps + 1)))`), so the first step never has lr 0; the decay after warmup follows transformers'
 * `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup` (to 0 at `totalSteps`).
 */
import type { LrScheduler } from '../../config/index.js';

export interface ScheduleSettings {
  /** Peak learning rate. */
  lr: number;
  warmupSteps: number;
  kind: LrScheduler;
  /** Total optimizer steps of the stage (the decay horizon). */
  totalSteps: number;
}

/**
 * Learning rate of optimizer step `step` (0-based).
 * @returns lr ≥ 0
 */
export function learningRateAt(step: number, s: ScheduleSettings): number {
  const warm = Math.max(0, s.warmupSteps);
  if (step < warm) return (s.lr * (step + 1)) / (warm + 1);
  if (s.kind === 'constant') return s.lr;
  const span = Math.max(1, s.totalSteps - warm);
  const progress = Math.min(1, Math.max(0, (step - warm) / span));
  if (s.kind === 'linear') return s.lr * Math.max(0, 1 - progress);
  return s.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}
