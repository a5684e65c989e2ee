/**
 * The `finetune` job processor: one job runs the stages sft → dpo (runTraining in a forked child) and
 * upload (Storage.putArtifact), reporting stage, step, fraction and the latest metrics to the job as it
 * goes. Cancellation (DELETE /jobs/:id sets a Redis flag; BullMQ's own abort signal too) and the job
 * timeout abort training; the job then fails with JOB_CANCELLED / JOB_TIMEOUT.
 *
 * At least once, finished once (src/queue/final-state.ts): a stored artifact is recorded in Redis at once, so a
 * run of a job whose earlier run stored its artifact and then lost the lock completes with that artifact (verified
 * in storage) instead of training and uploading again; the terminal event, statistics and webhook are written
 * only by the run that records the job's final state first.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { WaitingError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { cancelKey, liveJobsKey } from '../queue/connection.js';
import { FailureCodes, JobFailure } from '../queue/errors.js';
import { recordJobOutcome } from '../queue/stats.js';
import { QueueNames, type FinetuneResult, type QueueJobTypes, type Stage, type StageSpan } from '../queue/types.js';
import { JOB_ID } from '../queue/payload.js';
import { insideRoot, LocalStorage } from '../storage/local.js';
import type { Storage, UploadResult } from '../storage/storage.js';
import { JobEventLog, type NewJobEvent } from '../queue/events.js';
import { MANIFEST_NAME, sha256File, writeManifest } from '../storage/manifest.js';
import { finalStateKey, readArtifactRecord, readFinalState, writeArtifactRecord, type FinalState } from '../queue/final-state.js';
import type { WebhookPayload, WebhookQueue } from '../webhooks/delivery.js';
import { ChildFailure, trainInChild } from './child-process.js';
import type { TrainResult } from './ipc.js';
import { JobEventEmitter } from './job-events.js';
import { ProgressReporter, tokensPerSecond } from './job-progress.js';
import type { ValidJob } from './validate-job.js';

type FT = QueueJobTypes['finetune'];
export type FinetuneJob = Job<FT['data'], FT['result'], FT['name']>;

export interface ProcessorDeps {
  redis: Redis;
  prefix: string;
  storage: Storage;
  /** Scratch root; a job trains into `<workDir>/<communityId>/<jobId>`. */
  workDir: string;
  /** Validates a job read from Redis and fetches its rows (src/worker/validate-job.ts createJobValidator). */
  validate: (job: { id?: string | null; data: unknown }) => Promise<ValidJob>;
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
  /** Where job-outcome webhooks are queued (jobs with a callbackUrl); none: callbacks are not sent. */
  webhooks?: WebhookQueue;
  /** Seconds a job's event log lives (the job retention; default 7 days). */
  eventTtlSeconds?: number;
  /**
   * Test hook (off unless set): called right after the job's artifact is stored, before the job's final state
   * is recorded. The fault test uses it to SIGKILL the worker there (DPO_TEST_KILL_AFTER_UPLOAD=1 in main.ts).
   */
  afterArtifactStored?: () => void;
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

function storageRoot(storage: Storage): string | null {
  return storage instanceof LocalStorage ? storage.root : null;
}

/**
 * Replace server paths in a client-visible message: WORK_DIR and STORAGE_DIR by their names, the repository
 * and the process's working directory by `.`, any other absolute path by `<path>`.
 */
export function redactPaths(message: string, roots: Array<string | null>): string {
  let out = message;
  const named: Array<[string, string]> = [];
  const [work, store] = roots;
  if (work) named.push([resolve(work), 'WORK_DIR']);
  if (store) named.push([resolve(store), 'STORAGE_DIR']);
  named.push([process.cwd(), '.']);
  named.sort((a, b) => b[0].length - a[0].length);
  for (const [p, name] of named) if (p.length > 1) out = out.split(p).join(name);
  return out.replace(/(^|[\s"'(=,:])(?:file:\/\/)?(?:\/[\w.@+~-]+){2,}\/?/g, (_m, lead: string) => `${lead}<path>`);
}

/** Abort code of a job stopped by worker shutdown (it is handed back to the queue, not failed). */
const SHUTDOWN = 'WORKER_SHUTDOWN';

/**
 * Drop intermediate checkpoints from a finished artifact (they are about 4x the model each) unless the
 * job asked to keep them, and rewrite its manifest.
 */
async function dropCheckpoints(artifactDir: string): Promise<boolean> {
  const dir = join(artifactDir, 'checkpoints');
  if (!existsSync(dir)) return false;
  await rm(dir, { recursive: true, force: true });
  await writeManifest(artifactDir);
  return true;
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
    // nothing from Redis is used (not even for a log line or a path) before it is validated
    let valid: ValidJob;
    try {
      valid = await deps.validate(job);
    } catch (err) {
      const failure = err instanceof JobFailure ? err : new JobFailure(FailureCodes.unknown, 'could not read the job dataset; see the worker log');
      deps.logger.warn({ code: failure.code, err: err instanceof JobFailure ? undefined : (err as Error).message }, `finetune job refused: ${failure.message}`);
      await recordJobOutcome(deps.redis, deps.prefix, { durations: {}, tokensPerSecond: {}, failureCode: failure.code }).catch(() => {});
      // the event log of a job the service made (a valid id) records the refusal
      if (typeof job.id === 'string' && JOB_ID.test(job.id)) {
        await new JobEventLog(deps.redis, deps.prefix, { ttlSeconds: deps.eventTtlSeconds })
          .append(job.id, {
            type: 'job.failed',
            level: 'error',
            message: failure.message.slice(failure.code.length + 2),
            data: { code: failure.code, stage: null },
          })
          .catch(() => {});
      }
      throw failure;
    }
    const { jobId, communityId } = valid;
    const log = deps.logger.child({ jobId, communityId });
    const reporter = new ProgressReporter(job, deps.progressIntervalMs ?? 250, log, { sft: valid.config.sft.enabled !== false, dpo: valid.config.dpo.enabled });
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
    const outputDir = insideRoot(resolve(deps.workDir), [communityId, jobId]);
    const eventLog = new JobEventLog(deps.redis, deps.prefix, { ttlSeconds: deps.eventTtlSeconds });
    const events = new JobEventEmitter(eventLog, jobId, outputDir, log);
    const outcome = async (type: WebhookPayload['type'], state: WebhookPayload['data']['state'], extra: Partial<WebhookPayload['data']>): Promise<void> => {
      const url = valid.payload.callbackUrl;
      if (!url || !deps.webhooks) return;
      const payload: WebhookPayload = {
        type,
        timestamp: new Date().toISOString(),
        data: { jobId, communityId, state, error: null, artifact: null, metrics: null, statusUrl: `/jobs/${jobId}`, ...extra },
      };
      await deps.webhooks.enqueue(url, payload).catch((err: Error) => log.warn({ err: err.message }, 'could not queue the webhook'));
    };
    const retention = deps.eventTtlSeconds ?? 7 * 24 * 3600;
    /**
     * The result of an earlier run of this job whose artifact is recorded and verified in storage, or null.
     * Nothing from Redis is used unless the record is well-formed and storage holds exactly that artifact.
     */
    const storedResult = async (): Promise<{ result: FinetuneResult; trainedTokens: number } | null> => {
      const rec = await readArtifactRecord(deps.redis, deps.prefix, jobId, communityId);
      if (rec.kind === 'none') return null;
      if (rec.kind === 'invalid') {
        log.warn({ why: rec.why }, 'ignoring a malformed artifact record in Redis');
        return null;
      }
      let verified: UploadResult | null;
      try {
        verified = await deps.storage.verifyArtifact(communityId, jobId, rec.value.manifestSha256);
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'could not check the recorded artifact in storage; the job runs again');
        return null;
      }
      if (!verified) {
        log.warn('the recorded artifact is missing from storage or differs from its record; the job runs again');
        return null;
      }
      const { metrics, stages, durations, trainedTokens } = rec.value;
      return { result: { artifact: verified, metrics, stages, durations }, trainedTokens };
    };
    /**
     * Record the job's final state with its terminal event, atomically and once (JobEventLog.appendOnce).
     * @returns true when this run recorded it (it then also records statistics and sends the webhook).
     */
    const recordFinal = async (state: Omit<FinalState, 'at'>, e: NewJobEvent): Promise<boolean> => {
      const value: FinalState = { ...state, at: new Date().toISOString() };
      try {
        const r = await eventLog.appendOnce(jobId, finalStateKey(deps.prefix, jobId), JSON.stringify(value), retention, e);
        if (!r.first) log.info({ outcome: state.outcome }, 'the final state of this job was already recorded by another run; not recording it again');
        return r.first;
      } catch (err) {
        // Redis is gone: BullMQ cannot record the state either; the job will run again and record it then
        log.warn({ err: (err as Error).message }, 'could not record the final state of the job');
        return false;
      }
    };
    /** Complete with the result of a stored artifact (the final state, event, statistics and webhook once). */
    const completeWith = async (result: FinetuneResult, trainedTokens: number, tps: Partial<Record<'sft' | 'dpo', number>>): Promise<FinetuneResult> => {
      const { durations, metrics } = result;
      const first = await recordFinal(
        { outcome: 'completed', code: null, message: null },
        { type: 'job.succeeded', message: 'the job completed', data: { durations, trainedTokens, metrics } },
      );
      if (first) {
        await recordJobOutcome(deps.redis, deps.prefix, { durations, tokensPerSecond: tps, failureCode: null }).catch(() => {});
        await outcome('job.succeeded', 'completed', { artifact: { uri: result.artifact.uri, files: result.artifact.files.length }, metrics });
      }
      log.info({ uri: result.artifact.uri, files: result.artifact.files.length, durations }, 'finetune job completed');
      return result;
    };
    let lastTps: Partial<Record<'sft' | 'dpo', number>> = {};
    let handedBack = false;
    try {
      if ((await deps.redis.exists(flag)) === 1) throw new JobFailure(FailureCodes.cancelled, 'cancelled by request before it started');
      // an earlier run of this job may have finished it and lost the lock before BullMQ recorded it
      const final = await readFinalState(deps.redis, deps.prefix, jobId);
      if (final.kind === 'invalid') log.warn({ why: final.why }, 'ignoring a malformed final-state record in Redis');
      if (final.kind === 'ok' && final.value.outcome !== 'completed') {
        log.info({ code: final.value.code }, 'an earlier run of this job already failed it; failing it the same way');
        throw new JobFailure(final.value.code!, final.value.message!);
      }
      const earlier = await storedResult();
      if (earlier) {
        log.info(
          { attempt: job.attemptsStarted },
          'the artifact of an earlier run of this job is stored and verified: completing with it (no training, no upload)',
        );
        events.emit({
          type: 'job.started',
          message: 'the artifact of an earlier run is stored: completing the job with it',
          data: { attempt: job.attemptsStarted ?? 1, resume: false, storedArtifact: true },
        });
        await events.flush();
        const done = await completeWith(earlier.result, earlier.trainedTokens, {});
        await rm(outputDir, { recursive: true, force: true }).catch(() => {});
        return done;
      }
      // A re-run of this job (a worker died or handed it back) resumes from its last checkpoint, if any;
      // a first run starts from an empty directory.
      const resume = (job.attemptsStarted ?? 1) > 1 && (await hasCheckpoint(outputDir));
      log.info({ rows: valid.rows.length, outputDir, attempt: job.attemptsStarted, resume }, 'finetune job started');
      events.emit({
        type: 'job.started',
        message: resume ? 'resumed from the last checkpoint' : 'started',
        data: { attempt: job.attemptsStarted ?? 1, resume },
      });
      if (!resume) await rm(outputDir, { recursive: true, force: true });
      await mkdir(outputDir, { recursive: true });
      // an uploaded eval set (evalDatasetId) reaches the data phase as a file beside the output (not in the artifact)
      const evalFile = valid.evalRows ? `${outputDir}.eval.json` : null;
      if (evalFile) await writeFile(evalFile, JSON.stringify(valid.evalRows));
      // the SFT stage starts with loading the base model and tokenizer
      reporter.startStage('sft');
      let trained: TrainResult;
      try {
        trained = await train({
          request: {
            jobId,
            communityId,
            config: { ...(resume ? { ...valid.config, resume_from_checkpoint: 'latest' } : valid.config), ...(evalFile ? { eval_dataset: evalFile } : {}) },
            dataset: valid.rows,
            outputDir,
            backend: deps.backend,
            logLevel: deps.logLevel,
          },
          signal: controller.signal,
          onEvent: (e) => {
            events.fromChild(e);
            reporter.onTrainingEvent(e);
          },
          onProgress: (e) => {
            reporter.onTraining(e);
            events.onProgress(e);
            const tps = tokensPerSecond(e.metrics);
            if (tps !== undefined) lastTps = { ...lastTps, [e.stage]: tps };
          },
        });
      } catch (err) {
        if (abortCode === SHUTDOWN && token) {
          await job.moveToWait(token);
          handedBack = true;
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
      events.endTraining();
      reporter.startStage('upload');
      events.emit({ type: 'stage.started', message: 'upload started', data: { stage: 'upload', storage: deps.storage.kind } });
      // a run that lost its lock while training may have stored this job's artifact meanwhile: keep that one
      const racer = await storedResult();
      if (racer) {
        log.info('another run of this job stored its artifact meanwhile: completing with it (not uploading again)');
        reporter.endStage();
        await reporter.flush();
        await events.flush();
        await rm(outputDir, { recursive: true, force: true }).catch(() => {});
        return await completeWith(racer.result, racer.trainedTokens, lastTps);
      }
      if (valid.config.keep_checkpoints !== true && (await dropCheckpoints(trained.artifactDir))) {
        log.info('intermediate checkpoints left out of the artifact (keep_checkpoints is not true)');
      }
      let uploaded;
      let manifestSha256: string;
      try {
        manifestSha256 = await sha256File(join(trained.artifactDir, MANIFEST_NAME));
        uploaded = await deps.storage.putArtifact(trained.artifactDir, communityId, jobId);
      } catch (err) {
        const e = err as { code?: string; message: string };
        throw new JobFailure(
          typeof e.code === 'string' && /^STORAGE_/.test(e.code) ? e.code : FailureCodes.storage,
          `${e.message} (the trained artifact is kept in WORK_DIR/${communityId}/${jobId})`,
        );
      }
      reporter.endStage();
      await reporter.flush();
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
      const trainedTokens = reporter.state.trainedTokens ?? 0;
      // record the stored artifact first: a run after a lost lock completes with it instead of training again
      await writeArtifactRecord(
        deps.redis,
        deps.prefix,
        {
          v: 1,
          jobId,
          communityId,
          manifestSha256,
          uri: uploaded.uri,
          metrics,
          stages: reporter.state.stages,
          durations,
          trainedTokens,
          recordedAt: new Date().toISOString(),
        },
        retention,
      ).catch((err: Error) => log.warn({ err: err.message }, 'could not record the stored artifact in Redis'));
      deps.afterArtifactStored?.();
      const bytes = uploaded.files.reduce((a, f) => a + f.size, 0);
      events.emit({
        type: 'upload.completed',
        message: `${uploaded.files.length} files stored (${bytes} bytes)`,
        data: { files: uploaded.files.length, bytes, storage: deps.storage.kind },
      });
      events.emit({ type: 'stage.completed', message: 'upload finished', data: { stage: 'upload' } });
      // local: the artifact was copied into STORAGE_DIR, free the scratch copy. Remote backends decide
      // themselves (firebase: FIREBASE_DELETE_LOCAL).
      const storedPath = deps.storage instanceof LocalStorage ? deps.storage.artifactDir(communityId, jobId) : null;
      if (deps.storage.kind === 'local' && storedPath !== outputDir) await rm(outputDir, { recursive: true, force: true });
      await events.flush();
      return await completeWith(result, trainedTokens, lastTps);
    } catch (err) {
      if (err instanceof WaitingError) throw err;
      reporter.endStage();
      await reporter.flush();
      const raw = err instanceof JobFailure ? err : new JobFailure(FailureCodes.training, (err as Error).message ?? String(err));
      // the message reaches clients (GET /jobs): no server path in it
      const failure = new JobFailure(raw.code, redactPaths(raw.message.slice(raw.code.length + 2), [deps.workDir, storageRoot(deps.storage)]));
      log.warn({ code: failure.code }, `finetune job failed: ${failure.message}`);
      const message = failure.message.replace(/^[A-Z][A-Z0-9_]{2,63}: /, '');
      events.scan();
      await events.flush();
      const cancelled = failure.code === FailureCodes.cancelled;
      const first = await recordFinal(
        { outcome: cancelled ? 'cancelled' : 'failed', code: failure.code, message },
        cancelled
          ? { type: 'job.cancelled', level: 'warn', message, data: { code: failure.code } }
          : { type: 'job.failed', level: 'error', message, data: { code: failure.code, stage: reporter.state.stage } },
      );
      if (first) {
        await recordJobOutcome(deps.redis, deps.prefix, {
          durations: spanSeconds(reporter.state.stages),
          tokensPerSecond: lastTps,
          failureCode: failure.code,
        }).catch(() => {});
        await outcome(cancelled ? 'job.cancelled' : 'job.failed', cancelled ? 'cancelled' : 'failed', { error: { code: failure.code, message } });
      }
      if (failure.code === FailureCodes.cancelled) await rm(outputDir, { recursive: true, force: true }).catch(() => {});
      throw failure;
    } finally {
      if (!handedBack) await deps.redis.zrem(liveJobsKey(deps.prefix, QueueNames.finetune, communityId), jobId).catch(() => {});
      await rm(`${outputDir}.eval.json`, { force: true }).catch(() => {});
      clearInterval(poll);
      clearTimeout(timeout);
      bullSignal?.removeEventListener('abort', onBullAbort);
      deps.shutdownSignal?.removeEventListener('abort', onShutdown);
    }
  };
}
