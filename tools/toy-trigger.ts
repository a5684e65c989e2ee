/**
 * `make toy-trigger`: the main job end to end, the way a client runs it.
 *  1. checks Redis; starts the API (`src/api/server.ts`) and a worker (`src/worker/main.ts`) when none is
 *     running (their logs go to <STORAGE_DIR>/.logs/),
 *  2. posts the toy preference data (data/toy/toy.json from `make toy-data`, else config/datasets/toy.json)
 *     to POST /trigger-finetune,
 *  3. polls GET /jobs/:jobId, printing stage and progress, until the job ends,
 *  4. prints where the artifact is, and stops what it started.
 *
 * Environment: the service variables (PORT, REDIS_URL, QUEUE_PREFIX, STORAGE_DIR, API_KEYS, ...), plus
 * API_URL (default http://127.0.0.1:$PORT), TOY_CONFIG (JSON training overrides for the request, e.g.
 * '{"n_epochs":1}'), TOY_TIMEOUT_SECONDS (default 900). Exit code 0 only when the job completed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { apiKeys, loadEnv } from '../src/config/env.js';
import type { JobStatus } from '../src/queue/types.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const env = loadEnv();
const apiUrl = (process.env.API_URL ?? `http://127.0.0.1:${env.PORT}`).replace(/\/+$/, '');
const key = apiKeys(env)[0];
const headers: Record<string, string> = { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) };
const started: Array<{ name: string; proc: ChildProcess }> = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function say(msg: string): void {
  console.log(`[toy-trigger] ${msg}`);
}

async function redisUp(): Promise<boolean> {
  const r = new Redis(env.REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

async function apiHealthy(): Promise<boolean> {
  try {
    const res = await fetch(`${apiUrl}/health`, { signal: AbortSignal.timeout(2000) });
    return res.status === 200;
  } catch {
    return false;
  }
}

async function workerCount(): Promise<number> {
  const q = new Queue('finetune', { connection: { url: env.REDIS_URL } as never, prefix: env.QUEUE_PREFIX });
  try {
    return await q.getWorkersCount();
  } finally {
    await q.close();
  }
}

function startProcess(name: string, entry: string): ChildProcess {
  const logDir = resolve(env.STORAGE_DIR, '.logs');
  mkdirSync(logDir, { recursive: true });
  const logFile = join(logDir, `${name}.log`);
  const out = createWriteStream(logFile, { flags: 'a' });
  const proc = spawn(process.execPath, ['--import', 'tsx', join(root, entry)], {
    cwd: root,
    env: { ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout!.pipe(out);
  proc.stderr!.pipe(out);
  started.push({ name, proc });
  say(`started the ${name} (pid ${proc.pid}); log: ${logFile}`);
  return proc;
}

async function stopStarted(): Promise<void> {
  for (const { name, proc } of started.reverse()) {
    if (proc.exitCode !== null) continue;
    proc.kill('SIGTERM');
    const exited = await Promise.race([new Promise((r) => proc.once('exit', () => r(true))), sleep(15_000).then(() => false)]);
    if (!exited) proc.kill('SIGKILL');
    say(`stopped the ${name}`);
  }
}

function toyRows(): unknown[] {
  const candidates = [join(root, 'data/toy/toy.json'), join(root, 'config/datasets/toy.json')];
  const file = candidates.find((f) => existsSync(f));
  if (!file) throw new Error('no toy data: run `make toy-data`');
  say(`dataset: ${file}`);
  return JSON.parse(readFileSync(file, 'utf8')) as unknown[];
}

async function main(): Promise<number> {
  if (!(await redisUp())) {
    say(`Redis does not answer at ${env.REDIS_URL}: run \`make redis\` (or set REDIS_URL)`);
    return 2;
  }
  if (!(await apiHealthy())) {
    const api = startProcess('api', 'src/api/server.ts');
    for (let i = 0; i < 120 && !(await apiHealthy()); i++) {
      if (api.exitCode !== null) throw new Error(`the API exited with code ${api.exitCode}; see its log`);
      await sleep(250);
    }
    if (!(await apiHealthy())) throw new Error(`the API did not become healthy at ${apiUrl}`);
  } else say(`using the API already running at ${apiUrl}`);
  if ((await workerCount()) === 0) startProcess('worker', 'src/worker/main.ts');
  else say('using the worker(s) already running');

  const config = process.env.TOY_CONFIG ? (JSON.parse(process.env.TOY_CONFIG) as Record<string, unknown>) : undefined;
  const t0 = Date.now();
  const res = await fetch(`${apiUrl}/trigger-finetune`, {
    method: 'POST',
    headers: { ...headers, 'idempotency-key': `toy-${Date.now()}` },
    body: JSON.stringify({ communityId: 'toy', dataset: toyRows(), ...(config ? { config } : {}) }),
  });
  const body = (await res.json()) as { jobId?: string; message?: string };
  if (res.status !== 202 && res.status !== 200) throw new Error(`POST /trigger-finetune: ${res.status} ${body.message}`);
  say(`job ${body.jobId} queued (${res.status}); status: ${apiUrl}/jobs/${body.jobId}`);

  const deadline = Date.now() + Number(process.env.TOY_TIMEOUT_SECONDS ?? 900) * 1000;
  let last = '';
  let status: JobStatus | null = null;
  while (Date.now() < deadline) {
    const r = await fetch(`${apiUrl}/jobs/${body.jobId}`, { headers });
    if (r.status !== 200) {
      const e = (await r.json().catch(() => ({}))) as { code?: string; message?: string };
      say(`GET /jobs: ${r.status} ${e.code ?? ''} ${e.message ?? ''}`);
      await sleep(r.status === 429 ? 5000 : 1000);
      continue;
    }
    status = (await r.json()) as JobStatus;
    const p = status.progress;
    const m = status.stage === 'dpo' ? status.metrics.dpo : status.stage === 'sft' ? status.metrics.sft : {};
    const loss = typeof m?.loss === 'number' ? ` loss ${m.loss.toFixed(4)}` : '';
    const margin = typeof m?.['rewards/margins'] === 'number' ? ` rewards/margins ${m['rewards/margins'].toFixed(4)}` : '';
    const line = status.state === 'active' && status.stage ? `active ${status.stage} ${p.step}/${p.totalSteps}${loss}${margin}` : status.state;
    if (line !== last) say(line);
    last = line;
    if (['completed', 'failed', 'cancelled'].includes(status.state)) break;
    await sleep(1000);
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  if (status?.state === 'completed' && status.artifact) {
    say(`completed in ${secs} s; stages: ${status.stages.map((s) => s.stage).join(' → ')}`);
    say(`artifact: ${status.artifact.uri} (${status.artifact.files.length} files)`);
    const d = status.metrics.dpo;
    say(`dpo: loss ${d.loss}, rewards/accuracies ${d['rewards/accuracies']}, rewards/margins ${d['rewards/margins']}`);
    return 0;
  }
  say(`job ended ${status?.state ?? 'unknown'} after ${secs} s: ${status?.error ? `${status.error.code}: ${status.error.message}` : 'timed out'}`);
  return 1;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  say(`error: ${(err as Error).message}`);
} finally {
  await stopStarted();
}
process.exit(code);
