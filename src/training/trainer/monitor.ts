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
 * The bar's layout: stage, bar, steps, epoch, train metrics, the last evaluation, then elapsed<ETA as tqdm /
 * transformers' progress bar show them ({duration_formatted} and {eta_formatted} are cli-progress tokens).
 */
export function barFormat(stage: 'sft' | 'dpo'): string {
  return `${stage.toUpperCase()} |{bar}| {value}/{total} | epoch {epoch} | loss {loss} | {extra} | {tps} tok/s | {eval} | {duration_formatted}<{eta_formatted}`;
}

/** The bar's tokens for one step: train metrics of a logged step, and the last evaluation (`eval -` before the first). */
export function barPayload(p: StageProgress, lastEval: Record<string, number> | null): Record<string, string> {
  const m = p.metrics ?? {};
  const extra = p.stage === 'dpo' ? `acc ${fmt(m['rewards/accuracies'], 2)} margin ${fmt(m['rewards/margins'])}` : `lr ${fmt(m.learning_rate, 6)}`;
  const ev = lastEval
    ? `eval@${lastEval.step} ${p.stage === 'dpo' && lastEval['eval_rewards/accuracies'] !== undefined ? `acc ${fmt(lastEval['eval_rewards/accuracies'], 2)}` : `loss ${fmt(lastEval.eval_loss)}`}`
    : 'eval -';
  const epoch = fmt(p.epoch, 2);
  return p.metrics ? { loss: fmt(m.loss), extra, tps: fmt(m['tokens/s'], 0), eval: ev, epoch } : { eval: ev, epoch };
}

/**
 * Progress reporting: a progress bar (stderr TTY, or forced), else one pino line per logged step.
 */
export class ProgressReporter {
  private bar: cliProgress.SingleBar | null = null;
  private barStage: string | null = null;
  private lastEval: (Record<string, number> & { step: number }) | null = null;
  private readonly useBar: boolean;
  private readonly stream: NodeJS.WritableStream;
  /**
   * @param mode true: always a bar; 'auto': a bar when `stream` is a TTY; false: log lines
   * @param opts.stream where the bar is drawn (default process.stderr)
   */
  constructor(
    private readonly logger: Logger,
    mode: boolean | 'auto',
    private readonly onProgress?: (e: ProgressEvent) => void,
    opts: { stream?: NodeJS.WritableStream & { isTTY?: boolean } } = {},
  ) {
    this.stream = opts.stream ?? process.stderr;
    this.useBar = mode === true || (mode === 'auto' && (opts.stream ?? process.stderr).isTTY === true);
  }

  update(p: StageProgress): void {
    const m = p.metrics ?? {};
    if (p.eval) this.lastEval = { ...p.eval, step: p.step };
    if (this.barStage !== p.stage) this.lastEval = p.eval ? { ...p.eval, step: p.step } : null;
    if (this.useBar) {
      let bar = this.bar;
      if (!bar || this.barStage !== p.stage) {
        bar?.stop();
        bar = new cliProgress.SingleBar(
          { format: barFormat(p.stage), stream: this.stream, hideCursor: true, etaBuffer: 20 },
          cliProgress.Presets.shades_classic,
        );
        bar.start(p.totalSteps, 0, { loss: '-', extra: '', tps: '-', eval: 'eval -', epoch: '-' });
        this.bar = bar;
        this.barStage = p.stage;
      }
      bar.update(p.step, barPayload(p, this.lastEval));
      if (p.step >= p.totalSteps) {
        bar.stop();
        this.bar = null;
      }
    } else {
      this.barStage = p.stage;
      if (p.metrics) {
        const keys = ['loss', 'rewards/accuracies', 'rewards/margins', 'grad_norm', 'learning_rate', 'tokens/s'];
        const pick: Record<string, number> = {};
        for (const k of keys) if (m[k] !== undefined) pick[k] = Number(m[k]!.toPrecision(6));
        this.logger.info(
          { stage: p.stage, step: p.step, totalSteps: p.totalSteps, examples: p.examples, epoch: p.epoch, ...pick },
          `${p.stage} step ${p.step}/${p.totalSteps}`,
        );
      }
      if (p.eval) this.logger.info({ stage: p.stage, step: p.step, ...p.eval }, `${p.stage} eval`);
    }
    this.onProgress?.({ stage: p.stage, step: p.step, totalSteps: p.totalSteps, metrics: { ...(p.metrics ?? {}), ...(p.eval ?? {}) } });
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
