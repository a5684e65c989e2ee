/**
 * `npm run bench:api`: load on POST /trigger-finetune with autocannon (not a test; numbers depend on the
 * machine and its load). Two servers on 127.0.0.1, each run RUNS times alternately, each run DURATION s:
 *
 * - bare: Fastify + BullMQ `queue.add` of the parsed body (no auth, no validation, rows in Redis): the
 *   reference figure;
 * - full: the service (buildApp) with a tenant key, a unique Idempotency-Key per request, schema + row +
 *   config validation, the compute budget, the job caps, and the rows stored in the dataset store.
 *
 * Every request has its own ~36 KB body (120 rows, a per-request tag), like distinct webhooks. The load
 * generator (autocannon, and the making of those bodies) runs in a child process, so it does not share the
 * servers' event loop: in one process it took CPU from whichever server was measured, and most from the cheaper
 * one. Reports req/s, p50 and p99 latency (ms) per run, min/median over runs, full/bare ratios, the CPU time
 * per request of the servers' process, of Redis and of the load generator (on a machine that runs all three,
 * their sum bounds req/s: cores / CPU per request), and Redis bytes per job (MEMORY USAGE of the job hash plus
 * the service's own keys, sampled). Env: BENCH_DURATION (s, default
 * 5), BENCH_RUNS (3), BENCH_CONNECTIONS (10), BENCH_WARMUP (s of load on each server first, 5), BENCH_STORAGE_DIR (where the full server's STORAGE_DIR is made; the OS temporary directory by
 * default: see below), BENCH_ONLY (`bare` or `full`: measure one server, e.g. under
 * `node --cpu-prof`).
 *
 * The full server writes one file per request (the rows). On ext4, creating a file in a block group where
 * many files were deleted in the last minutes is slow: the inode allocator skips recently deleted inodes one
 * by one (`recently_deleted` in perf), ~1-1.5 ms per file instead of ~60 us. A temporary directory that tests
 * and earlier bench runs have just emptied is such a place, so the figure depends on what ran before; a
 * STORAGE_DIR in production (a volume that datasets are added to, rarely deleted from) is not.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import Fastify, { type FastifyInstance } from 'fastify';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { buildApp } from '../src/api/app.js';
import { loadEnv } from '../src/config/env.js';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const DURATION = Number(process.env.BENCH_DURATION ?? 5);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 10);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 5);
const ONLY = process.env.BENCH_ONLY;
const KEY = 'bench-key';

let seq = 0;
function body(): string {
  const tag = `${process.pid}-${seq++}`;
  const rows = Array.from({ length: 120 }, (_, i) => ({
    prompt: `Tell a short story about a cat number ${i} (${tag}) who lives by the sea and likes the morning sun.`,
    chosen: ` The cat ${i} found a warm sunny spot near the harbour, purred softly and slept happily until noon, then went home.`,
    rejected: ` Cat ${i} sat. It was a cat. Nothing happened at all and the story ended.`,
  }));
  return JSON.stringify({ communityId: 'bench', dataset: rows, config: { n_epochs: 1 } });
}

async function bare(prefix: string): Promise<{ app: FastifyInstance; queue: Queue; redis: Redis }> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  const queue = new Queue('finetune', { connection: redis, prefix });
  const app = Fastify({ bodyLimit: 5 * 1024 * 1024 });
  let n = 0;
  app.post('/trigger-finetune', async (request, reply) => {
    const job = await queue.add('finetune', request.body as object, { jobId: `ft-bare-${n++}` });
    return reply.code(202).send({ jobId: job.id });
  });
  return { app, queue, redis };
}

type RunResult = { rps: number; p50: number; p99: number; non2xx: number; errors: number; n: number; serverUs?: number; redisUs?: number; clientUs?: number };
/** What the parent asks the load-generator child to do. */
type ClientTask = { url: string; headers: Record<string, string>; connections: number; duration?: number; amount?: number };

/** The load generator (in the child process): autocannon with a fresh body and Idempotency-Key per request. */
async function load(t: ClientTask): Promise<RunResult> {
  const c0 = process.cpuUsage();
  const r = await autocannon({
    url: `${t.url}/trigger-finetune`,
    method: 'POST',
    connections: t.connections,
    ...(t.amount ? { amount: t.amount } : { duration: t.duration }),
    headers: { 'content-type': 'application/json', ...t.headers },
    requests: [
      {
        setupRequest: (req: Record<string, unknown>) => ({
          ...req,
          body: body(),
          headers: { ...(req.headers as Record<string, string>), 'idempotency-key': `bench-${process.pid}-${seq}` },
        }),
      },
    ],
  });
  const c = process.cpuUsage(c0);
  const n = Math.max(1, r.requests.total);
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors,
    n: r.requests.total,
    clientUs: (c.user + c.system) / n,
  };
}

/** Run one load in a fresh child process (this file with --client) and return its figures. */
function run(url: string, headers: Record<string, string>, opts: { amount?: number; connections?: number; duration?: number } = {}): Promise<RunResult> {
  const child = fork(fileURLToPath(import.meta.url), ['--client'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m as RunResult));
    child.once('error', reject);
    child.once('exit', (code) => code !== 0 && reject(new Error(`the load generator exited with ${code}`)));
    const task: ClientTask = { url, headers, connections: opts.connections ?? CONNECTIONS, duration: opts.duration ?? DURATION, amount: opts.amount };
    child.send(task);
  });
}

/** Redis's own CPU time so far (INFO cpu: used_cpu_user + used_cpu_sys), microseconds. */
async function redisCpuUs(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const num = (k: string) => Number(new RegExp(`${k}:([0-9.]+)`).exec(info)?.[1] ?? 0);
  return (num('used_cpu_user') + num('used_cpu_sys')) * 1e6;
}

/** One load run with the CPU time it cost this process (the servers) and Redis, per request. */
async function measured(redis: Redis, url: string, headers: Record<string, string>): Promise<RunResult> {
  const c0 = process.cpuUsage();
  const r0 = await redisCpuUs(redis);
  const r = await run(url, headers);
  const c = process.cpuUsage(c0);
  const r1 = await redisCpuUs(redis);
  const n = Math.max(1, r.n);
  return { ...r, serverUs: (c.user + c.system) / n, redisUs: (r1 - r0) / n };
}

async function bytesPerJob(redis: Redis, prefix: string): Promise<number> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:finetune:ft-*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch.filter((k) => !/:(lock|logs|events)$/.test(k)));
  } while (cursor !== '0' && keys.length < 200);
  const sample = keys.slice(0, 100);
  if (sample.length === 0) return 0;
  let total = 0;
  for (const k of sample) total += Number((await redis.call('MEMORY', 'USAGE', k)) ?? 0);
  // the service's own per-job keys (idempotency record, live-set entry) counted on average
  const own: string[] = [];
  cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:finetune:dpo-idem:*`, 'COUNT', 1000);
    cursor = next;
    own.push(...batch);
  } while (cursor !== '0' && own.length < 100);
  for (const k of own.slice(0, 100)) total += (Number((await redis.call('MEMORY', 'USAGE', k)) ?? 0) * sample.length) / Math.min(100, own.length);
  return total / sample.length;
}

async function drop(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await redis.del(...keys);
  } while (cursor !== '0');
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const redis = new Redis(REDIS_URL);
  const dir = mkdtempSync(join(process.env.BENCH_STORAGE_DIR ?? tmpdir(), 'dpo-bench-api-'));
  const bp = `bench-bare-${process.pid}`;
  const fp = `bench-full-${process.pid}`;
  const b = await bare(bp);
  await b.app.listen({ port: 0, host: '127.0.0.1' });
  const env = loadEnv({
    REDIS_URL,
    QUEUE_PREFIX: fp,
    LOG_LEVEL: 'silent',
    API_KEYS: `${KEY}:bench`,
    STORAGE_DIR: dir,
    RATE_LIMIT_MAX: '100000000',
    MAX_JOBS_PER_COMMUNITY: '100000000',
    MAX_QUEUED_JOBS: '100000000',
  });
  const full = await buildApp({ env });
  await full.listen({ port: 0, host: '127.0.0.1' });
  const urlOf = (a: FastifyInstance) => `http://127.0.0.1:${(a.server.address() as { port: number }).port}`;
  const results: Record<'bare' | 'full', Array<Awaited<ReturnType<typeof run>>>> = { bare: [], full: [] };
  try {
    // warm-up of both (JIT, schema compile, first dataset directory): the full path's code takes a few
    // thousand requests to reach its steady state (in-process, its CPU per request fell by a third between
    // the first 300 and the next 2,000), so both get WARMUP seconds of the same load first
    if (ONLY !== 'bare') await run(urlOf(full), { authorization: `Bearer ${KEY}` }, { duration: WARMUP });
    if (ONLY !== 'full') await run(urlOf(b.app), {}, { duration: WARMUP });
    for (let i = 0; i < RUNS; i++) {
      if (ONLY !== 'full') results.bare.push(await measured(redis, urlOf(b.app), {}));
      if (ONLY !== 'bare') results.full.push(await measured(redis, urlOf(full), { authorization: `Bearer ${KEY}` }));
    }
    const bareBytes = await bytesPerJob(redis, bp);
    const fullBytes = await bytesPerJob(redis, fp);
    const load = (await import('node:os')).loadavg()[0]!.toFixed(1);
    const show = (name: string, rs: typeof results.bare) => {
      for (const [i, r] of rs.entries())
        console.log(
          `${name} run ${i + 1}: ${r.rps.toFixed(0)} req/s, p50 ${r.p50} ms, p99 ${r.p99} ms (${r.n} requests, ${r.non2xx} non-2xx, ${r.errors} errors); CPU per request: server ${r.serverUs?.toFixed(0)} us, Redis ${r.redisUs?.toFixed(0)} us, load generator ${r.clientUs?.toFixed(0)} us`,
        );
      const rps = rs.map((r) => r.rps);
      const p99 = rs.map((r) => r.p99);
      console.log(`${name}: req/s min ${Math.min(...rps).toFixed(0)} median ${median(rps).toFixed(0)}; p99 min ${Math.min(...p99)} median ${median(p99)} ms`);
    };
    console.log(
      `# POST /trigger-finetune, ~${(body().length / 1024).toFixed(0)} KB bodies, ${CONNECTIONS} connections, ${DURATION} s x ${RUNS} runs each; load average ${load} (shared machine)`,
    );
    if (results.bare.length) show('bare', results.bare);
    if (results.full.length) show('full', results.full);
    if (results.bare.length && results.full.length) {
      const ratio = median(results.full.map((r) => r.rps)) / median(results.bare.map((r) => r.rps));
      console.log(`full/bare req/s (medians): ${(ratio * 100).toFixed(0)}%  (target >= 80% at p99 <= 20 ms)`);
    }
    console.log(`Redis bytes per job: bare ${bareBytes.toFixed(0)}, full ${fullBytes.toFixed(0)} (rows in storage, not Redis)`);
  } finally {
    await full.close();
    await b.app.close();
    await b.queue.close();
    b.redis.disconnect();
    await drop(redis, bp);
    await drop(redis, fp);
    redis.disconnect();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--client')) {
  process.once('message', (t) => {
    load(t as ClientTask).then(
      (r) => process.send!(r, () => process.exit(0)),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
