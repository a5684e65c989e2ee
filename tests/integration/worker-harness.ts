/**
 * A real worker process (`src/worker/main.ts`) for integration tests: spawned on a queue prefix and a storage
 * directory, its stdout and stderr collected, ready once BullMQ sees it, stopped with SIGTERM (SIGKILL after
 * 20 s). Not a mock: the same entry point the service runs.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Queue } from 'bullmq';
import { closedPort, REDIS_URL } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(import.meta.url), '../../..');

export interface WorkerHandle {
  readonly process: ChildProcess;
  /** everything the worker wrote so far (stdout and stderr) */
  log(): string;
  /** SIGTERM, SIGKILL after 20 s; resolves when the process has exited */
  stop(): Promise<void>;
}

/**
 * Spawn a worker on `prefix` + `storageDir` (TFJS_BACKEND wasm, no backend check, metrics on a closed port) and
 * wait until `queue` counts it (up to 60 s).
 * @param env extra environment for the worker (overrides the defaults)
 * @throws AssertionError when the worker exits before it is ready
 */
export async function startWorker(queue: Queue, prefix: string, storageDir: string, env: Record<string, string> = {}): Promise<WorkerHandle> {
  let out = '';
  const proc = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'info',
      TFJS_BACKEND: 'wasm',
      WORKER_BACKEND_CHECK: 'false',
      WORKER_METRICS_PORT: String(await closedPort()),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 600 && (await queue.getWorkersCount()) === 0; i++) {
    assert.equal(proc.exitCode, null, `the worker exited:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    process: proc,
    log: () => out,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const kill = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(kill);
    },
  };
}
