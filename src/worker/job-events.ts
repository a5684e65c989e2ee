/**
 * The worker's side of a job's event log (src/queue/events.ts): turns what the worker sees while a job
 * runs into events, in order, without blocking training.
 *
 * - stage changes of the progress stream → `stage.completed` (previous stage) and `stage.started`;
 * - every record appended to `<outputDir>/metrics.jsonl` → one `metrics` event whose `data` is that record
 *   verbatim (so the log's metrics equal the file); records with `eval_` keys also → `eval.completed`;
 * - every new `<outputDir>/checkpoints/checkpoint-<stage>-<step>/state.json` → `checkpoint.saved` with the stage,
 *   step and the metrics saved with it;
 * - events the training child reports itself (`model.loading`, `data.ready`, `warning`) pass through.
 * Appends are chained so they land in the order they were produced; `flush()` waits for them. A failed
 * append is logged and dropped (the job's outcome never depends on its event log).
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { EVENT_TYPES, type JobEventLog, type JobEventType, type NewJobEvent } from '../queue/events.js';
import type { ProgressEvent, TrainingEvent } from '../training/types.js';

const CHECKPOINT_DIR = /^checkpoint-(sft|dpo)-(\d+)$/;
/** Event types a training child may report (anything else is dropped as a protocol error). */
const CHILD_EVENT_TYPES = new Set<string>(['model.loading', 'data.ready', 'warning']);

export interface CheckpointEventData {
  stage: 'sft' | 'dpo';
  step: number;
  /** Directory name under `checkpoints/`. */
  name: string;
  savedAt: string | null;
  metrics: Record<string, unknown>;
}

export class JobEventEmitter {
  private chain: Promise<void> = Promise.resolve();
  private stage: 'sft' | 'dpo' | null = null;
  private metricsOffset = 0;
  private partial = '';
  private readonly seenCheckpoints = new Set<string>();
  /** Number of `metrics` records emitted (= metrics.jsonl lines read). */
  metricsRecords = 0;

  constructor(
    private readonly log: JobEventLog,
    private readonly jobId: string,
    private readonly outputDir: string,
    private readonly logger: Logger,
  ) {}

  /** Queue an append (ordered, never throws). */
  emit(e: NewJobEvent): void {
    this.chain = this.chain.then(
      () =>
        this.log.append(this.jobId, e).then(
          () => undefined,
          (err: Error) => this.logger.warn({ err: err.message, type: e.type }, 'could not append a job event'),
        ),
      () => undefined,
    );
  }

  /** An event reported by the training child over IPC (validated here: a process boundary). */
  fromChild(e: TrainingEvent): void {
    if (!e || typeof e !== 'object' || typeof e.type !== 'string' || !CHILD_EVENT_TYPES.has(e.type) || typeof e.message !== 'string') {
      this.logger.warn({ event: e }, 'ignoring a malformed training event');
      return;
    }
    const level = e.level === 'warn' ? 'warn' : 'info';
    const data = e.data && typeof e.data === 'object' && !Array.isArray(e.data) ? e.data : {};
    this.emit({ type: e.type as JobEventType, level, message: e.message.slice(0, 2000), data });
  }

  /** A training progress event: stage transitions, new metrics lines, new checkpoints. */
  onProgress(e: ProgressEvent, totalSteps = e.totalSteps): void {
    if (e.stage !== this.stage) {
      // records of the stage that just ended, before announcing the next one
      this.scan();
      if (this.stage) this.emit({ type: 'stage.completed', message: `${this.stage} finished`, data: { stage: this.stage } });
      this.stage = e.stage;
      this.emit({ type: 'stage.started', message: `${e.stage} started (${totalSteps} steps)`, data: { stage: e.stage, totalSteps } });
    }
    this.scan();
  }

  /** Read what training wrote since the last call (metrics lines, checkpoints). */
  scan(): void {
    this.tailMetrics();
    this.scanCheckpoints();
  }

  /** Close the running training stage (after training returned). */
  endTraining(): void {
    this.scan();
    if (this.stage) this.emit({ type: 'stage.completed', message: `${this.stage} finished`, data: { stage: this.stage } });
    this.stage = null;
  }

  private tailMetrics(): void {
    const path = join(this.outputDir, 'metrics.jsonl');
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      return;
    }
    // the file was rewritten (a resumed run cuts it back to its checkpoint): start over
    if (size < this.metricsOffset) {
      this.metricsOffset = 0;
      this.partial = '';
    }
    if (size === this.metricsOffset) return;
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(size - this.metricsOffset);
      const n = readSync(fd, buf, 0, buf.length, this.metricsOffset);
      this.metricsOffset += n;
      const text = this.partial + buf.subarray(0, n).toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        if (line.trim() === '') continue;
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(line) as Record<string, unknown>;
        } catch {
          this.logger.warn({ line: line.slice(0, 200) }, 'unparsable metrics.jsonl line');
          continue;
        }
        this.metricsRecords++;
        const stage = String(rec.stage ?? '');
        this.emit({ type: 'metrics', message: `${stage} step ${rec.step}`, data: rec });
        const evalKeys = Object.keys(rec).filter((k) => k.startsWith('eval_'));
        if (evalKeys.length > 0) {
          const metrics = Object.fromEntries(evalKeys.map((k) => [k, rec[k]]));
          this.emit({ type: 'eval.completed', message: `${stage} eval at step ${rec.step}`, data: { stage, step: rec.step, metrics } });
        }
      }
    } finally {
      closeSync(fd);
    }
  }

  private scanCheckpoints(): void {
    const root = join(this.outputDir, 'checkpoints');
    let names: string[];
    try {
      names = readdirSync(root);
    } catch {
      return;
    }
    for (const name of names.sort()) {
      const m = CHECKPOINT_DIR.exec(name);
      if (!m || this.seenCheckpoints.has(name)) continue;
      const statePath = join(root, name, 'state.json');
      if (!existsSync(statePath)) continue;
      this.seenCheckpoints.add(name);
      let state: Record<string, unknown> = {};
      try {
        state = JSON.parse(readFileSync(statePath, 'utf8')) as Record<string, unknown>;
      } catch {
        // written last and renamed into place, so unreadable only if removed meanwhile (save_total_limit)
      }
      const data: CheckpointEventData = {
        stage: m[1] as 'sft' | 'dpo',
        step: Number(m[2]),
        name,
        savedAt: typeof state.savedAt === 'string' ? state.savedAt : null,
        metrics: { ...((state.lastMetrics as Record<string, unknown>) ?? {}), ...((state.lastEval as Record<string, unknown>) ?? {}) },
      };
      this.emit({ type: 'checkpoint.saved', message: `checkpoint ${name}`, data: { ...data } });
    }
  }

  /** Wait until every queued append is done. */
  flush(): Promise<void> {
    return this.chain;
  }
}

/** True for the event types of the log (a guard for values read from elsewhere). */
export function isEventType(t: unknown): t is JobEventType {
  return typeof t === 'string' && (EVENT_TYPES as readonly string[]).includes(t);
}
