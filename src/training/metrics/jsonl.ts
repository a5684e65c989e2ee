/**
 * metrics.jsonl: one JSON object per logged step (the artifact layout: README "Artifacts"), e.g.
 * `{"stage":"dpo","step":10,"examples":80,"loss":0.61,"rewards/accuracies":0.75,...,"time":"2026-...Z"}`.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { TensorBoardWriter } from './tensorboard.js';

/** One metrics line. `stage` and `step` are what the plot and TensorBoard key on. */
export interface MetricsRecord {
  stage?: string;
  step?: number;
  [key: string]: unknown;
}

/**
 * Appends one JSON line per call to a metrics.jsonl file (synchronously, so a crash loses at most the line
 * being written). Optionally mirrors the numeric fields to a {@link TensorBoardWriter} as
 * `<stage>/<key>` scalars at `step`.
 */
export class MetricsLog {
  readonly path: string;
  private readonly tensorboard?: TensorBoardWriter;

  /**
   * @param path the metrics.jsonl path (its directory is created)
   * @param opts.tensorboard writer to mirror numeric fields to
   */
  constructor(path: string, opts: { tensorboard?: TensorBoardWriter } = {}) {
    this.path = path;
    this.tensorboard = opts.tensorboard;
    mkdirSync(dirname(path), { recursive: true });
  }

  /**
   * Append one record (a `time` ISO timestamp is added when absent). Non-finite numbers are written as null
   * (JSON has no NaN).
   */
  append(record: MetricsRecord): void {
    const rec: Record<string, unknown> = { ...record };
    rec.time ??= new Date().toISOString();
    for (const [k, v] of Object.entries(rec)) if (typeof v === 'number' && !Number.isFinite(v)) rec[k] = null;
    appendFileSync(this.path, `${JSON.stringify(rec)}\n`);
    if (this.tensorboard && typeof record.step === 'number') {
      const prefix = record.stage ? `${record.stage}/` : '';
      for (const [k, v] of Object.entries(record)) {
        if (k === 'step' || typeof v !== 'number') continue;
        this.tensorboard.scalar(`${prefix}${k}`, v, record.step);
      }
    }
  }

  /** Flush the mirrored TensorBoard writer (the jsonl lines are already on disk). */
  flush(): void {
    this.tensorboard?.flush();
  }
}

/**
 * Read a metrics.jsonl file; blank and unparsable lines (e.g. a line cut by a crash) are skipped.
 * @returns the records in file order ([] when the file does not exist)
 */
export function readMetricsJsonl(path: string): MetricsRecord[] {
  if (!existsSync(path)) return [];
  const out: MetricsRecord[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const s = line.trim();
    if (!s) continue;
    try {
      const v = JSON.parse(s) as unknown;
      if (v && typeof v === 'object' && !Array.isArray(v)) out.push(v as MetricsRecord);
    } catch {
      // a partial last line: ignore
    }
  }
  return out;
}
