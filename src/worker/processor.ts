/**
 * The `finetune` job processor: one job runs the stages sft → dpo (runTraining in a forked child) and
 * upload (Storage.putArtifact), reporting stage, step, fraction and the latest metrics to the job as it
 * goes. Cancellation (DELETE /jobs/:id sets a Redis flag; BullMQ's own abort signal too) and the job
 * timeout abort training; the job then fails with JOB_CANCELLED / JOB_TIMEOUT.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WaitingError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { resolveRequestConfig } from '../config/index.js';
import { cancelKey } from '../queue/connection.js';
import { FailureCodes, JobFailure } from '../queue/errors.js';
import { recordJobOutcome } from '../queue/stats.js';
import { QueueNames, type FinetuneProgress, type FinetuneResult, type QueueJobTypes, type Stage, type StageSpan } from '../queue/types.js';
import type { Storage } from '../storage/storage.js';
import type { ProgressEvent } from '../training/types.js';
import { ChildFailure, trainInChild } from './child-process.js';
import type { TrainResult } from './ipc.js';

type FT = QueueJobTypes['finetune'];
export type FinetuneJob = Job<FT['data'], FT['result'], FT['name']>;

export interface ProcessorDeps {
  redis: Redis;
  prefix: string;
  storage: Storage;
  /** Scratch root; a job trains into `<workDir>/<communityId>/<jobId>`. */
  workDir: string;
  backend: string;
  logLevel: string;
  logger: Logger;
  /** Abort training after this many seconds (0 = never). */
  jobTimeoutSeconds: number;
  /** How often the cancellation flag is polled, ms (default 500). */
  cancelPollMs?: number;
  /** Least time between two progress writes to Redis, ms (stage changes are written at once; default 250). */
  progressIntervalMs?: number;
  /** The training runner (default: a forked child running src/training/run.ts runTraining). */
  train?: typeof trainInChild;
  /**
   * Aborted when the worker gives up waiting for running jobs at shutdown: training stops (checkpointing
   * first when `save_steps` is set) and the job goes back to the queue, to resume on another worker.
   */
  shutdownSignal?: AbortSignal;
}

/** True when `<outputDir>/checkpoints/` holds at least one checkpoint (a `state.json`). */
async function hasCheckpoint(outputDir: string): Promise<boolean> {
  try {
    const entries = await readdir(join(outputDir, 'checkpoints'), { withFileTypes: true });
    return entries.some((e) => e.isDirectory() && existsSync(join(outputDir, 'checkpoints', e.name, 'state.json')));
  } catch {
    return false;
  }
}

/** Abort code of a job stopped by worker shutdown (it is handed back to the queue, not failed). */
const SHUTDOWN = 'WORKER_SHUTDOWN';

const TOKENS_PER_S_KEYS = ['tokens/s', 'tokens_per_s', 'tokens_per_second', 'train_tokens_per_second'];

function tokensPerSecond(m: Record<string, number> | undefined): number | undefined {
  if (!m) return undefined;
  for (const k of TOKENS_PER_S_KEYS) if (typeof m[k] === 'number') return m[k];
  return undefined;
}

/** Tracks stage spans, step and metrics of a job, and writes them to `job.progress` (throttled). */
class ProgressReporter {
  readonly state: FinetuneProgress = {
    stage: null,
    step: 0,
    totalSteps: 0,
    fraction: 0,
    metrics: { sft: {}, dpo: {} },
    stages: [],
  };
  private lastWrite = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly job: FinetuneJob,
    private readonly minIntervalMs: number,
    private readonly log: Logger,
  ) {}

  /** Close the running stage span (if any) and open `stage`; written at once. */
  startStage(stage: Stage, totalSteps = 0): void {
    const now = new Date().toISOString();
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

  /** A training progress event (stage sft|dpo, step of totalSteps, metrics of the step). */
  onTraining(e: ProgressEvent): void {
    if (e.stage !== this.state.stage) this.startStage(e.stage, e.totalSteps);
    this.state.step = e.step;
    this.state.totalSteps = e.totalSteps;
    this.state.fraction = e.totalSteps > 0 ? Math.min(1, Math.max(0, e.step / e.totalSteps)) : 0;
    if (e.metrics) {
      const finite = Object.fromEntries(Object.entries(e.metrics).filter(([, v]) => typeof v === 'number' && Number.isFinite(v)));
      this.state.metrics[e.stage] = { ...this.state.metrics[e.stage], ...finite };
    }
    this.write(e.step >= e.totalSteps);
  }

  private write(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastWrite < this.minIntervalMs) return;
    this.lastWrite = now;
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

function spanSeconds(spans: StageSpan[]): Partial<Record<Stage, number>> {
  const out: Partial<Record<Stage, number>> = {};
  for (const s of spans) {
    if (!s.finishedAt) continue;
    out[s.stage] = (out[s.stage] ?? 0) + (Date.parse(s.finishedAt) - Date.parse(s.startedAt)) / 1000;
  }
  return out;
}

/**
 * Build the BullMQ processor for the `finetune` queue.
 * @returns `(job, token, signal) => FinetuneResult`; throws JobFailure `{code}` on failure (no retry).
 */
export function createFinetuneProcessor(deps: ProcessorDeps) {
  const train = deps.train ?? trainInChild;
  return async function processFinetune(job: FinetuneJob, token?: string, bullSignal?: AbortSignal): Promise<FinetuneResult> {
    const jobId = job.id!;
    const { communityId } = job.data;
    const log = deps.logger.child({ jobId, communityId });
    const reporter = new ProgressReporter(job, deps.progressIntervalMs ?? 250, log);
    const controller = new AbortController();
    let abortCode: string | null = null;
    const abort = (code: string, why: string): void => {
      if (controller.signal.aborted) return;
      abortCode = code;
      log.info({ code }, why);
      controller.abort(new Error(why));
    };
    const flag = cancelKey(deps.prefix, QueueNames.finetune, jobId);
    const poll = setInterval(() => {
      deps.redis.exists(flag).then(
        (n) => n === 1 && abort(FailureCodes.cancelled, 'cancelled by request'),
        () => {},
      );
    }, deps.cancelPollMs ?? 500);
    const timeout =
      deps.jobTimeoutSeconds > 0
        ? setTimeout(() => abort(FailureCodes.timeout, `exceeded JOB_TIMEOUT_SECONDS=${deps.jobTimeoutSeconds}`), deps.jobTimeoutSeconds * 1000)
        : undefined;
    const onBullAbort = (): void => abort(FailureCodes.cancelled, 'cancelled by the worker');
    bullSignal?.addEventListener('abort', onBullAbort, { once: true });
    const onShutdown = (): void => abort(SHUTDOWN, 'the worker is shutting down; the job goes back to the queue');
    if (deps.shutdownSignal?.aborted) onShutdown();
    deps.shutdownSignal?.addEventListener('abort', onShutdown, { once: true });
    const outputDir = resolve(join(deps.workDir, communityId, jobId));
    let lastTps: Partial<Record<'sft' | 'dpo', number>> = {};
    try {
      if ((await deps.redis.exists(flag)) === 1) throw new JobFailure(FailureCodes.cancelled, 'cancelled by request before it started');
      // never trust Redis: the API's resolved config is validated again (the one resolution in this process)
      const checked = resolveRequestConfig(job.data.config, '/data/config');
      if (!checked.config) throw new JobFailure('INVALID_JOB_PAYLOAD', checked.problems.map((p) => `${p.path}: ${p.message}`).join('; '));
      const config = checked.config;
      // A re-run of this job (a worker died or handed it back) resumes from its last checkpoint, if any;
      // a first run starts from an empty directory.
      const resume = (job.attemptsStarted ?? 1) > 1 && (await hasCheckpoint(outputDir));
      log.info({ rows: job.data.dataset.length, outputDir, attempt: job.attemptsStarted, resume }, 'finetune job started');
      if (!resume) await rm(outputDir, { recursive: true, force: true });
      await mkdir(outputDir, { recursive: true });
      // the SFT stage starts with loading the base model and tokenizer
      reporter.startStage('sft');
      let trained: TrainResult;
      try {
        trained = await train({
          request: {
            jobId,
            communityId,
            config: resume ? { ...config, resume_from_checkpoint: 'latest' } : config,
            dataset: job.data.dataset,
            outputDir,
            backend: deps.backend,
            logLevel: deps.logLevel,
          },
          signal: controller.signal,
          onProgress: (e) => {
            reporter.onTraining(e);
            const tps = tokensPerSecond(e.metrics);
            if (tps !== undefined) lastTps = { ...lastTps, [e.stage]: tps };
          },
        });
      } catch (err) {
        if (abortCode === SHUTDOWN && token) {
          await job.moveToWait(token);
          log.info('job handed back to the queue');
          throw new WaitingError();
        }
        if (abortCode) throw new JobFailure(abortCode, (controller.signal.reason as Error).message);
        if (err instanceof ChildFailure) {
          throw new JobFailure(err.code === 'ABORTED' ? FailureCodes.cancelled : err.code, err.message);
        }
        throw err;
      }
      // training finished: only a cancellation still stops the job (a shutdown or timeout that came too late
      // to interrupt training lets the upload run)
      if (abortCode === FailureCodes.cancelled) throw new JobFailure(abortCode, (controller.signal.reason as Error).message);
      reporter.startStage('upload');
      let uploaded;
      try {
        uploaded = await deps.storage.putArtifact(trained.artifactDir, communityId, jobId);
      } catch (err) {
        const e = err as { code?: string; message: string };
        throw new JobFailure(
          typeof e.code === 'string' && /^STORAGE_/.test(e.code) ? e.code : FailureCodes.storage,
          `${e.message} (the trained artifact is kept in ${trained.artifactDir})`,
        );
      }
      reporter.endStage();
      await reporter.flush();
      // local: the artifact was copied into STORAGE_DIR, free the scratch copy. Remote backends decide
      // themselves (firebase: FIREBASE_DELETE_LOCAL).
      const storedPath = uploaded.uri.startsWith('file:') ? fileURLToPath(uploaded.uri) : null;
      if (deps.storage.kind === 'local' && storedPath !== outputDir) await rm(outputDir, { recursive: true, force: true });
      const metrics = {
        sft: { ...reporter.state.metrics.sft, ...trained.metrics.sft },
        dpo: { ...reporter.state.metrics.dpo, ...trained.metrics.dpo },
      };
      const durations = spanSeconds(reporter.state.stages);
      const result: FinetuneResult = { artifact: uploaded, metrics, stages: reporter.state.stages, durations };
      for (const s of ['sft', 'dpo'] as const) {
        const t = tokensPerSecond(metrics[s]);
        if (t !== undefined) lastTps[s] = t;
      }
      await recordJobOutcome(deps.redis, deps.prefix, { durations, tokensPerSecond: lastTps, failureCode: null }).catch(() => {});
      log.info({ uri: uploaded.uri, files: uploaded.files.length, durations }, 'finetune job completed');
      return result;
    } catch (err) {
      if (err instanceof WaitingError) throw err;
      reporter.endStage();
      await reporter.flush();
      const failure = err instanceof JobFailure ? err : new JobFailure(FailureCodes.training, (err as Error).message ?? String(err));
      await recordJobOutcome(deps.redis, deps.prefix, {
        durations: spanSeconds(reporter.state.stages),
        tokensPerSecond: lastTps,
        failureCode: failure.code,
      }).catch(() => {});
      log.warn({ code: failure.code }, `finetune job failed: ${failure.message}`);
      if (failure.code === FailureCodes.cancelled) await rm(outputDir, { recursive: true, force: true }).catch(() => {});
      throw failure;
    } finally {
      clearInterval(poll);
      clearTimeout(timeout);
      bullSignal?.removeEventListener('abort', onBullAbort);
      deps.shutdownSignal?.removeEventListener('abort', onShutdown);
    }
  };
}
