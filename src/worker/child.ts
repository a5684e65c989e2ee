/**
 * The training child process. The worker forks one per job so that tensor work never blocks the worker's
 * event loop (BullMQ renews the job lock from it, every lockDuration / 2; a blocked loop lets the lock
 * expire and the job is taken as stalled: docs.bullmq.io "Stalled Jobs") and so that a job's memory is
 * returned to the OS when it ends.
 *
 * IPC protocol (parent → child): `{type:'train', request}` once, then optionally `{type:'abort', reason}`;
 * or `{type:'probe', backend}` to report which tfjs backend loads.
 * Child → parent: `{type:'progress', event}`, then `{type:'result', result}` or `{type:'error', code, message}`;
 * `{type:'backend', info}` for a probe. The child exits when done or when the parent goes away.
 */
import { existsSync, readFileSync } from 'node:fs';
import pino from 'pino';
import { abortFile, describeError, type ChildMessage, type ParentMessage, type TrainRequest } from './ipc.js';

/** The worker's pid; `process.ppid` changes (re-parenting) when the worker dies. */
const parentPid = process.ppid;

function send(msg: ChildMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(msg, undefined, {}, () => resolve());
  });
}

async function train(req: TrainRequest, controller: AbortController): Promise<void> {
  // synchronous writes: a line is on stdout when the call returns, although each training step blocks the
  // event loop for its whole duration (the loop yields only between steps, trainer/stage.ts)
  const logger = pino(
    { level: req.logLevel, base: { jobId: req.jobId, communityId: req.communityId, proc: 'train' } },
    pino.destination({ dest: 1, sync: true }),
  );
  try {
    // loaded here, not at the top: a probe child must not pay for the config and training stack
    const [{ loadConfig }, { runTraining }] = await Promise.all([import('../config/index.js'), import('../training/run.js')]);
    // never trust the IPC message: the config is validated again, once in this process; the worker's
    // backend travels as data (the config's `backend`), not through process.env
    const config = loadConfig({ object: { ...req.config, backend: req.backend } });
    const result = await runTraining({
      config,
      dataset: req.dataset,
      outputDir: req.outputDir,
      signal: controller.signal,
      logger,
      onEvent: (event) => void send({ type: 'event', event }),
      onProgress: (event) => {
        // the worker died (SIGKILL, OOM): its job will run again elsewhere, so stop now rather than train on
        if (process.ppid !== parentPid) process.exit(1);
        // The training loop yields to the event loop only once per step (trainer/stage.ts), so the IPC
        // `abort` message waits for the current step; the abort file is a second channel, checked
        // synchronously at every reported step.
        if (!controller.signal.aborted && existsSync(abortFile(req.outputDir))) {
          controller.abort(new Error(readFileSync(abortFile(req.outputDir), 'utf8') || 'aborted'));
        }
        void send({ type: 'progress', event });
      },
    });
    await send({ type: 'result', result });
  } catch (err) {
    const d = describeError(err, controller.signal.aborted);
    logger.warn({ code: d.code }, `training stopped: ${d.message}`);
    await send({ type: 'error', ...d });
  }
}

async function probe(backend: string): Promise<void> {
  try {
    const { initBackend } = await import('../training/engine/backend.js');
    const info = await initBackend(backend as Parameters<typeof initBackend>[0]);
    await send({ type: 'backend', info: { name: info.name, package: info.package, gpu: info.gpu } });
  } catch (err) {
    await send({ type: 'error', ...describeError(err, false) });
  }
}

function main(): void {
  if (!process.send) {
    process.stderr.write('src/worker/child.ts is started by the worker (IPC), not by hand\n');
    process.exit(2);
  }
  const controller = new AbortController();
  // the worker went away (crash, SIGKILL, shutdown timeout): stop at once
  process.on('disconnect', () => process.exit(0));
  process.on('message', (msg: ParentMessage) => {
    if (msg.type === 'abort') controller.abort(new Error(msg.reason));
    else if (msg.type === 'train') void train(msg.request, controller).then(() => process.exit(0));
    else if (msg.type === 'probe') void probe(msg.backend).then(() => process.exit(0));
  });
}

main();
