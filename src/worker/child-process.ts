/**
 * Fork and drive the training child (src/worker/child.ts) from the worker: start it, relay progress,
 * abort it on cancel/timeout (SIGKILL if it does not stop in time), and settle with its result.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ProgressEvent, TrainingEvent } from '../training/types.js';
import { abortFile, type ChildMessage, type TrainRequest, type TrainResult } from './ipc.js';

/** The child entry next to this file (.ts under tsx, .js when compiled), and the node flags it needs. */
export function childEntry(): { file: string; execArgv: string[] } {
  const here = fileURLToPath(import.meta.url);
  const isTs = here.endsWith('.ts');
  const file = here.replace(/child-process\.(ts|js)$/, `child.${isTs ? 'ts' : 'js'}`);
  if (!existsSync(file)) throw new Error(`training child entry ${file} is missing`);
  // under tsx the child needs the tsx loader; resolve it absolutely so the cwd does not matter
  const execArgv = isTs ? ['--import', import.meta.resolve('tsx')] : [];
  return { file, execArgv };
}

/**
 * The child ended with an error message, or died. `code` is the child's error code when it reported one
 * (INVALID_CONFIG, ...), else set here: ABORTED (it exited after an abort), WORKER_CHILD_EXITED (it died or
 * could not start), BACKEND_PROBE_TIMEOUT.
 */
export class ChildFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ChildFailure';
  }
}

export interface RunChildOptions {
  request: TrainRequest;
  onProgress: (e: ProgressEvent) => void;
  /** Training milestones (model loading, data ready, warnings) for the job's event log. */
  onEvent?: (e: TrainingEvent) => void;
  /** Aborting sends `abort` to the child; it is killed if still alive `killAfterMs` later. */
  signal: AbortSignal;
  killAfterMs?: number;
  onSpawn?: (child: ChildProcess) => void;
}

/**
 * Train in a forked child.
 * @returns runTraining's result.
 * @throws ChildFailure with the child's code (ABORTED after an abort), or WORKER_CHILD_EXITED when the
 *   child died without a result (out of memory, killed).
 */
export function trainInChild(opts: RunChildOptions): Promise<TrainResult> {
  const { file, execArgv } = childEntry();
  const child = fork(file, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  opts.onSpawn?.(child);
  return new Promise<TrainResult>((resolve, reject) => {
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;
    const finish = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(killTimer);
      rmSync(abortFile(opts.request.outputDir), { force: true });
      opts.signal.removeEventListener('abort', onAbort);
      fn();
    };
    const onAbort = (): void => {
      const reason = opts.signal.reason instanceof Error ? opts.signal.reason.message : String(opts.signal.reason ?? 'aborted');
      // both channels: the IPC message is handled when the child's loop next yields (between steps), the
      // file at the child's next reported step
      try {
        writeFileSync(abortFile(opts.request.outputDir), reason);
      } catch {
        // the IPC message and the kill timer still apply
      }
      if (child.connected) child.send({ type: 'abort', reason });
      killTimer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, opts.killAfterMs ?? 15_000);
      killTimer.unref();
    };
    child.on('message', (msg: ChildMessage) => {
      if (msg.type === 'progress') opts.onProgress(msg.event);
      else if (msg.type === 'event') opts.onEvent?.(msg.event);
      else if (msg.type === 'result') finish(() => resolve(msg.result));
      else if (msg.type === 'error') finish(() => reject(new ChildFailure(msg.code, msg.message)));
    });
    child.on('error', (err) => finish(() => reject(new ChildFailure('WORKER_CHILD_EXITED', err.message))));
    child.on('exit', (code, sig) => {
      const aborted = opts.signal.aborted;
      finish(() =>
        reject(
          new ChildFailure(aborted ? 'ABORTED' : 'WORKER_CHILD_EXITED', `training process exited (${sig ? `signal ${sig}` : `code ${code}`}) without a result`),
        ),
      );
    });
    if (opts.signal.aborted) onAbort();
    else opts.signal.addEventListener('abort', onAbort, { once: true });
    child.send({ type: 'train', request: opts.request });
  });
}

/**
 * Load the tfjs backend in a short-lived child and report what runs (the worker's start-up check, without
 * initialising tfjs/CUDA in the worker process itself).
 */
export function probeBackend(backend: string, timeoutMs = 60_000): Promise<{ name: string; package: string; gpu: boolean }> {
  const { file, execArgv } = childEntry();
  const child = fork(file, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new ChildFailure('BACKEND_PROBE_TIMEOUT', `loading the tfjs backend took more than ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('message', (msg: ChildMessage) => {
      clearTimeout(timer);
      if (msg.type === 'backend') resolve(msg.info);
      else if (msg.type === 'error') reject(new ChildFailure(msg.code, msg.message));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new ChildFailure('WORKER_CHILD_EXITED', `backend probe exited with code ${code}`));
    });
    child.send({ type: 'probe', backend });
  });
}
