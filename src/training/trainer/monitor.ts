/**
 * Monitoring of a run: metrics.jsonl (one JSON line per logged step, truncated to the checkpoint on resume),
 * a cli-progress bar on a TTY or pino lines otherwise, and `onProgress` events.
 */
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import type { Logger } from 'pino';
import type { ProgressEvent } from '../types.js';
import type { StageProgress } from './stage.js';

export type MetricsRecord = Record<string, number | string>;

/** Keys whose values depend on wall time (excluded when comparing runs). */
export const TIMING_KEYS = ['tokens/s', 'pairs/s', 'examples/s', 'step_seconds'] as const;

const STAGE_ORDER: Record<string, number> = { sft: 0, dpo: 1 };

/**
 * Append-only metrics.jsonl. On resume the file is cut back to the records at or before the checkpoint
 * (stage, step), so the resumed run's file equals an uninterrupted run's.
 */
export class MetricsFile {
  readonly path: string;
  constructor(path: string, resumeAt: { stage: 'sft' | 'dpo'; step: number } | null) {
    this.path = path;
    if (resumeAt && existsSync(path)) {
      const keep = readFileSync(path, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .filter((l) => {
          try {
            const r = JSON.parse(l) as MetricsRecord;
            const so = STAGE_ORDER[String(r.stage)] ?? 0;
            const ro = STAGE_ORDER[resumeAt.stage]!;
            return so < ro || (so === ro && Number(r.step) <= resumeAt.step);
          } catch {
            return false;
          }
        });
      writeFileSync(path, keep.length ? keep.join('\n') + '\n' : '');
    } else writeFileSync(path, '');
  }

  append(r: MetricsRecord): void {
    appendFileSync(this.path, JSON.stringify(r) + '\n');
  }

  /** Every record in the file. */
  static read(path: string): MetricsRecord[] {
    if (!existsSync(path)) return [];
    return readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as MetricsRecord);
  }
}

const fmt = (v: number | undefined, d = 4): string => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));

/**
 * Progress reporting: a progress bar (stderr TTY, or forced), else one pino line per logged step.
 */
export class ProgressReporter {
  private bar: cliProgress.SingleBar | null = null;
  private barStage: string | null = null;
  private readonly useBar: boolean;
  constructor(
    private readonly logger: Logger,
    mode: boolean | 'auto',
    private readonly onProgress?: (e: ProgressEvent) => void,
  ) {
    this.useBar = mode === true || (mode === 'auto' && process.stderr.isTTY === true);
  }

  update(p: StageProgress): void {
    const m = p.metrics ?? {};
    if (this.useBar) {
      if (this.barStage !== p.stage) {
        this.bar?.stop();
        this.bar = new cliProgress.SingleBar(
          {
            format: `${p.stage.toUpperCase()} |{bar}| {value}/{total} | loss {loss} | {extra} | {tps} tok/s`,
            stream: process.stderr,
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(p.totalSteps, 0, { loss: '-', extra: '', tps: '-' });
        this.barStage = p.stage;
      }
      const extra = p.stage === 'dpo' ? `acc ${fmt(m['rewards/accuracies'], 2)} margin ${fmt(m['rewards/margins'])}` : `lr ${fmt(m.learning_rate, 6)}`;
      this.bar!.update(p.step, p.metrics ? { loss: fmt(m.loss), extra, tps: fmt(m['tokens/s'], 0) } : {});
      if (p.step >= p.totalSteps) {
        this.bar!.stop();
        this.bar = null;
        this.barStage = null;
      }
    } else if (p.metrics) {
      const keys = ['loss', 'rewards/accuracies', 'rewards/margins', 'grad_norm', 'learning_rate', 'tokens/s'];
      const pick: Record<string, number> = {};
      for (const k of keys) if (m[k] !== undefined) pick[k] = Number(m[k]!.toPrecision(6));
      this.logger.info({ stage: p.stage, step: p.step, totalSteps: p.totalSteps, examples: p.examples, ...pick }, `${p.stage} step ${p.step}/${p.totalSteps}`);
    }
    if (p.eval && !this.useBar) this.logger.info({ stage: p.stage, step: p.step, ...p.eval }, `${p.stage} eval`);
    this.onProgress?.({ stage: p.stage, step: p.step, totalSteps: p.totalSteps, metrics: { ...(p.metrics ?? {}), ...(p.eval ?? {}) } });
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
