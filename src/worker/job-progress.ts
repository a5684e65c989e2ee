/**
 * A finetune job's progress as the worker reports it: stage spans, step, metrics, trained tokens, the
 * estimated finish and the data phase's counts, written to `job.progress` (throttled) where GET /jobs/:jobId
 * reads it (src/queue/status.ts).
 */
import type { Logger } from 'pino';
import type { FinetuneProgress, JobDataSummary, Stage } from '../queue/types.js';
import type { ProgressEvent, TrainingEvent } from '../training/types.js';
import type { FinetuneJob } from './processor.js';

/**
 * The status's `data` from a `data.ready` event's data (runTraining's counts), or null when it is not one.
 * @returns counts (non-negative integers; `truncatedFraction` in [0, 1]) and the warnings as strings
 */
export function dataSummary(d: unknown): JobDataSummary | null {
  if (!d || typeof d !== 'object' || Array.isArray(d)) return null;
  const o = d as Record<string, unknown>;
  const count = (k: string): number => (typeof o[k] === 'number' && Number.isFinite(o[k]) && o[k] >= 0 ? Math.round(o[k]) : 0);
  const f = typeof o.truncated_fraction === 'number' && Number.isFinite(o.truncated_fraction) ? Math.min(1, Math.max(0, o.truncated_fraction)) : 0;
  const warnings = Array.isArray(o.warnings)
    ? o.warnings
        .filter((w): w is string => typeof w === 'string')
        .slice(0, 20)
        .map((w) => w.slice(0, 2000))
    : [];
  return {
    rows: count('examples'),
    train: count('train'),
    eval: count('eval'),
    dropped: count('dropped'),
    truncated: count('truncated'),
    truncatedFraction: f,
    maxLength: count('max_length'),
    warnings,
  };
}

const TOKENS_PER_S_KEYS = ['tokens/s', 'tokens_per_s', 'tokens_per_second', 'train_tokens_per_second'];

export function tokensPerSecond(m: Record<string, number> | undefined): number | undefined {
  if (!m) return undefined;
  for (const k of TOKENS_PER_S_KEYS) if (typeof m[k] === 'number') return m[k];
  return undefined;
}

/**
 * The whole job's progress in percent (0-100, whole numbers): the planned stages (SFT when enabled, DPO when
 * enabled, upload) count equally; the current one by its fraction, a finished upload is 100. A stage outside
 * the plan (the `sft` span that covers model loading when SFT is off) counts as the start.
 */
export function jobPercent(p: Pick<FinetuneProgress, 'stage' | 'fraction' | 'stages'>, plan: { sft: boolean; dpo: boolean }): number {
  const planned: Stage[] = [...(plan.sft ? (['sft'] as const) : []), ...(plan.dpo ? (['dpo'] as const) : []), 'upload'];
  if (p.stage === null) return 0;
  const last = p.stages.at(-1);
  if (p.stage === 'upload' && last?.stage === 'upload' && last.finishedAt !== null) return 100;
  const at = planned.indexOf(p.stage);
  if (at < 0) return 0;
  const f = p.stage === 'upload' ? 0 : Math.min(1, Math.max(0, p.fraction));
  return Math.min(100, Math.max(0, Math.round((100 * (at + f)) / planned.length)));
}

/** Tracks stage spans, step and metrics of a job, and writes them to `job.progress` (throttled). */
export class ProgressReporter {
  readonly state: FinetuneProgress = {
    stage: null,
    step: 0,
    totalSteps: 0,
    fraction: 0,
    metrics: { sft: {}, dpo: {} },
    stages: [],
    trainedTokens: 0,
    estimatedFinish: null,
    percent: 0,
  };
  /** Final `num_tokens` of finished training stages. */
  private doneTokens = 0;
  private lastWrite = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly job: FinetuneJob,
    private readonly minIntervalMs: number,
    private readonly log: Logger,
    /** The training stages the job runs (`sft.enabled`, `dpo.enabled`); upload always follows. */
    private readonly plan: { sft: boolean; dpo: boolean } = { sft: true, dpo: true },
  ) {}

  /** Close the running stage span (if any) and open `stage`; written at once. */
  startStage(stage: Stage, totalSteps = 0): void {
    const now = new Date().toISOString();
    if (this.state.stage === 'sft' || this.state.stage === 'dpo') this.doneTokens = this.state.trainedTokens ?? 0;
    const cur = this.state.stages.at(-1);
    if (cur && cur.finishedAt === null) cur.finishedAt = now;
    this.state.stages.push({ stage, startedAt: now, finishedAt: null });
    Object.assign(this.state, { stage, step: 0, totalSteps, fraction: 0 });
    this.log.info({ stage }, `stage ${stage}`);
    this.write(true);
  }

  /** Close the running stage span (written at once). */
  endStage(): void {
    const cur = this.state.stages.at(-1);
    if (cur && cur.finishedAt === null) {
      cur.finishedAt = new Date().toISOString();
      this.write(true);
    }
  }

  /**
   * A milestone of the training child: `data.ready` becomes the status's `data` (the child's report is
   * checked here, a process boundary: counts as finite non-negative numbers, at most 20 warnings of 2000
   * characters); written at once.
   */
  onTrainingEvent(e: TrainingEvent): void {
    if (e?.type !== 'data.ready') return;
    const summary = dataSummary(e.data);
    if (!summary) return;
    this.state.data = summary;
    this.write(true);
  }

  /** A training progress event (stage sft|dpo, step of totalSteps, metrics of the step). */
  onTraining(e: ProgressEvent): void {
    if (e.stage !== this.state.stage) this.startStage(e.stage, e.totalSteps);
    this.state.step = e.step;
    this.state.totalSteps = e.totalSteps;
    this.state.fraction = e.totalSteps > 0 ? Math.min(1, Math.max(0, e.step / e.totalSteps)) : 0;
    if (e.metrics) {
      // a non-finite value (a diverged step) is null in JSON, never a stale or fake number (the job then fails)
      const values = Object.fromEntries(
        Object.entries(e.metrics)
          .filter(([, v]) => typeof v === 'number' || v === null)
          .map(([k, v]) => [k, typeof v === 'number' && Number.isFinite(v) ? v : null]),
      ) as Record<string, number>;
      this.state.metrics[e.stage] = { ...this.state.metrics[e.stage], ...values };
      const m = this.state.metrics[e.stage];
      if (typeof m.num_tokens === 'number') this.state.trainedTokens = this.doneTokens + m.num_tokens;
      this.state.estimatedFinish = estimateFinish(e.stage, e.step, e.totalSteps, m, Date.now(), this.plan.dpo);
    }
    this.write(e.step >= e.totalSteps);
  }

  private write(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastWrite < this.minIntervalMs) return;
    this.lastWrite = now;
    this.state.percent = jobPercent(this.state, this.plan);
    const snapshot = structuredClone(this.state);
    // serialised so an older snapshot never lands after a newer one
    this.pending = this.pending
      .then(() => this.job.updateProgress(snapshot))
      .catch((err: Error) => this.log.warn({ err: err.message }, 'could not update job progress'));
  }

  /** Wait for queued progress writes. */
  flush(): Promise<void> {
    return this.pending;
  }
}

/**
 * When training should end, from the measured throughput: the current stage's remaining steps times its
 * tokens per step (`num_tokens / step`) over `tokens/s`; while SFT runs, DPO is assumed to take as many
 * steps with twice the tokens per step (chosen and rejected) at the same rate (unless `dpoFollows` is false:
 * an SFT-only job). ISO 8601, or null before anything is measured. (Upload time is not included.)
 */
export function estimateFinish(
  stage: 'sft' | 'dpo',
  step: number,
  totalSteps: number,
  m: Record<string, number>,
  now = Date.now(),
  dpoFollows = true,
): string | null {
  const tps = tokensPerSecond(m);
  const tokens = m.num_tokens;
  if (!tps || tps <= 0 || typeof tokens !== 'number' || step <= 0) return null;
  const perStep = tokens / step;
  let remaining = Math.max(0, totalSteps - step) * perStep;
  if (stage === 'sft' && dpoFollows) remaining += totalSteps * perStep * 2;
  return new Date(now + (remaining / tps) * 1000).toISOString();
}
