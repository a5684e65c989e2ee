/**
 * `npm run bench:webhook-models [-- --rows smollm2-135m,qwen2.5-0.5b-lora,qwen2.5-1.5b-lora] [--sft-steps 1]
 *  [--dpo-steps 2] [--pairs 4] [--max-length 512]`
 *
 * The rows of `npm run bench:models` (bench/models.ts: the same model shapes, random-weight BF16 checkpoints in
 * `<tmpdir>/dpo-bench-models/`, the same memory and LoRA settings) through the service instead of the CLI. Per
 * row: a temporary config dir (a copy of config/ plus `model/<row>.yaml` registering the checkpoint under the
 * row's name), the API (src/api/server.ts) and one worker (src/worker/main.ts) as child processes on a unique
 * BullMQ prefix with their own STORAGE_DIR / WORK_DIR and a tenant key, then POST /trigger-finetune with the
 * first `--pairs` HH-RLHF pairs (../shared/data/hh-rlhf, split into {prompt, chosen, rejected}) and GET
 * /jobs/:id until the job ends. Prints one JSON line per row: status, failure code, wall seconds (trigger to
 * end), SFT/DPO steps done (the artifact's metrics.jsonl, else the last progress seen), last DPO loss, the
 * peak RSS (VmHWM, MB) of the worker and of its training child (sampled every 250 ms from /proc: the child's
 * last growth before it exits can be missed, so a lower bound), and the artifact URI. The dataset's text is
 * never printed. The processes' logs stay in `<tmpdir>/dpo-bench-models/<row>-webhook.log` (JSON lines).
 *
 * Each epoch is one batch of all `--pairs` rows (batch_size = pairs, n_epochs = steps, no eval split), so every
 * step trains the same `pairs` x up to `max-length` tokens; bench:models instead draws batches from the whole
 * shuffled HH split.
 *
 * The checkpoint is registered without a `name_or_path` (so the resolved name_or_path is the row's registered
 * name) and the API and worker run in a scratch cwd holding a `<row>` symlink to the checkpoint: the worker
 * re-validates the queued, resolved config and accepts only a registered *name* as `model.name_or_path`
 * (src/queue/payload.ts resolvedConfigProblems), so a `config/model/<row>.yaml` with `name_or_path: /abs/dir`
 * passes the API and is then failed by the worker with INVALID_JOB_PAYLOAD. Not a test: numbers depend on load.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseOverride } from '../src/config/index.js';
import { loadPreferenceExamples } from '../src/training/data/index.js';
import { buildCheckpoint, parseRowArgs, ROWS, type Row, type RowArgs, root, shared } from './models.js';

type Args = RowArgs;

function parseArgs(argv: string[]): Args {
  return parseRowArgs(argv, { rows: ROWS.map((r) => r.name), sftSteps: 1, dpoSteps: 2, pairs: 4, maxLength: 512 }, {}, 'bench/webhook-models.ts');
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Deep-set `value` at the dotted `keys` of `o`. */
function setPath(o: Obj, keys: string[], value: unknown): void {
  let cur = o;
  for (const k of keys.slice(0, -1)) {
    if (!isObj(cur[k])) cur[k] = {};
    cur = cur[k] as Obj;
  }
  cur[keys[keys.length - 1]!] = value;
}

/**
 * The request's `config` for a row: the row's CLI overrides (`a.b=v`, values parsed as the CLI does) as nested
 * keys (the API's config schema uses the same names as the CLI: schemas/config.schema.json), plus the step and
 * batch settings. `datasets`, `output_dir` and `progress_bar` are the worker's (a request may not send them).
 */
export function requestConfig(row: Row, a: Args): Obj {
  const c: Obj = {
    model: row.name,
    batch_size: a.pairs,
    eval_batch_size: a.pairs,
    max_length: a.maxLength,
    max_prompt_length: Math.floor(a.maxLength / 2),
    n_epochs: a.dpoSteps,
    max_steps: a.dpoSteps,
    sft: { n_epochs: a.sftSteps, max_steps: a.sftSteps },
    eval_split_fraction: 0,
    sample_during_eval: false,
    log_every: 1,
    log_logit_stats: false,
    tensorboard: false,
    plot: false,
  };
  for (const o of row.overrides) {
    const { path: keys, value } = parseOverride(o);
    setPath(c, keys, value);
  }
  return c;
}

/** The first `n` HH-RLHF pairs as request rows (non-empty prompt, chosen != rejected, as the API requires). */
async function hhRows(n: number): Promise<{ prompt: string; chosen: string; rejected: string }[]> {
  const file = process.env.HH_RLHF_PATH ?? path.join(shared, 'data', 'hh-rlhf', 'harmless-base-test.jsonl.gz');
  const out: { prompt: string; chosen: string; rejected: string }[] = [];
  for (const ex of await loadPreferenceExamples(file)) {
    if (ex.prompt.trim() && ex.chosen.trim() && ex.rejected.trim() && ex.chosen !== ex.rejected)
      out.push({ prompt: ex.prompt, chosen: ex.chosen, rejected: ex.rejected });
    if (out.length === n) break;
  }
  if (out.length < n) throw new Error(`${file}: only ${out.length} usable pairs`);
  return out;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => res(p));
    });
  });
}

/** VmHWM (kB) of a live process, or null when it is gone. */
function vmHwmKb(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Pids whose parent is `ppid` (scanning /proc/<pid>/stat; /proc/<pid>/task/<tid>/children may be absent). */
function childrenOf(ppid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      // the fields after the parenthesised command: state ppid ...
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === ppid) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** SIGTERM, then SIGKILL after `graceMs` if it has not exited. */
async function stop(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface JobStatus {
  state: string;
  progress: { stage: string | null; step: number };
  metrics: { dpo?: Obj; sft?: Obj };
  artifact: { uri: string; files: { path: string }[] } | null;
  error: { code: string; message: string } | null;
}

/** One row through the service: the JSON line's fields. */
async function runRow(row: Row, a: Args, dataset: Awaited<ReturnType<typeof hhRows>>): Promise<Obj> {
  const ckpt = buildCheckpoint(row.name, row.model);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `dpo-bench-webhook-${row.name}-`));
  const logFile = path.join(os.tmpdir(), 'dpo-bench-models', `${row.name}-webhook.log`);
  const procs: ChildProcess[] = [];
  try {
    const configDir = path.join(tmp, 'config');
    fs.cpSync(path.join(root, 'config'), configDir, { recursive: true });
    fs.writeFileSync(
      path.join(configDir, 'model', `${row.name}.yaml`),
      `# bench/webhook-models.ts: ${row.name}, a random-weight checkpoint (cwd symlink ${row.name} -> ${ckpt})\nname: ${row.name}\ntokenizer_name_or_path: null\n`,
    );
    const cwd = path.join(tmp, 'cwd');
    fs.mkdirSync(cwd);
    fs.symlinkSync(ckpt, path.join(cwd, row.name));
    const key = randomBytes(16).toString('hex');
    const communityId = 'bench';
    const port = await freePort();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DPO_CONFIG_DIR: configDir,
      QUEUE_PREFIX: `bench-webhook-${process.pid}-${randomBytes(4).toString('hex')}`,
      STORAGE_BACKEND: 'local',
      STORAGE_DIR: path.join(tmp, 'storage'),
      WORK_DIR: path.join(tmp, 'work'),
      API_KEYS: `${key}:${communityId}`,
      PORT: String(port),
      HOST: '127.0.0.1',
      WORKER_CONCURRENCY: '1',
      WORKER_METRICS_PORT: '0',
      WORKER_BACKEND_CHECK: 'false',
      RATE_LIMIT_MAX: '0',
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
    };
    const log = fs.openSync(logFile, 'w');
    const tsx = import.meta.resolve('tsx');
    const start = (entry: string): ChildProcess => {
      const p = spawn(process.execPath, ['--import', tsx, path.join(root, entry)], { cwd, env, stdio: ['ignore', log, log] });
      procs.push(p);
      return p;
    };
    start('src/api/server.ts');
    const worker = start('src/worker/main.ts');
    const api = `http://127.0.0.1:${port}`;
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    for (let i = 0; ; i++) {
      if (procs.some((p) => p.exitCode !== null)) throw new Error(`a service process exited at start; see ${logFile}`);
      const ok = await fetch(`${api}/health`)
        .then((r) => r.ok)
        .catch(() => false);
      if (ok) break;
      if (i > 240) throw new Error(`the API did not answer /health within 120 s; see ${logFile}`);
      await sleep(500);
    }
    const t0 = Date.now();
    const res = await fetch(`${api}/trigger-finetune`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ communityId, dataset, config: requestConfig(row, a) }),
    });
    const body = (await res.json()) as { jobId?: string; code?: string; problems?: { path: string; message: string }[] };
    if (res.status !== 202 || !body.jobId) {
      // problems name fields (JSON pointers) and rules, not the rows' text
      return { status: `http_${res.status}`, error: body.code ?? null, problems: body.problems?.map((p) => `${p.path} ${p.message}`) ?? [] };
    }
    const hwm = { worker: 0, child: 0 };
    const seen = { sft: 0, dpo: 0 };
    let status: JobStatus | null = null;
    let nextPoll = 0;
    for (;;) {
      const w = vmHwmKb(worker.pid!);
      if (w !== null) hwm.worker = Math.max(hwm.worker, w);
      for (const c of childrenOf(worker.pid!)) hwm.child = Math.max(hwm.child, vmHwmKb(c) ?? 0);
      if (Date.now() >= nextPoll) {
        nextPoll = Date.now() + 1000;
        const r = await fetch(`${api}/jobs/${body.jobId}`, { headers: { authorization: headers.authorization } });
        status = (await r.json()) as JobStatus;
        const st = status.progress?.stage;
        if (st === 'sft' || st === 'dpo') seen[st] = Math.max(seen[st], status.progress.step);
        if (['completed', 'failed', 'cancelled'].includes(status.state)) break;
      }
      if (worker.exitCode !== null) throw new Error(`the worker exited (code ${worker.exitCode}); see ${logFile}`);
      await sleep(250);
    }
    const wall = (Date.now() - t0) / 1000;
    // steps from the stored artifact's metrics.jsonl when it has one (train rows carry step_seconds)
    const steps = { ...seen };
    let lastDpoLoss = typeof status.metrics?.dpo?.loss === 'number' ? status.metrics.dpo.loss : null;
    const metricsFile = path.join(env.STORAGE_DIR!, communityId, body.jobId);
    const stored = status.artifact ? findFile(metricsFile, 'metrics.jsonl') : null;
    if (stored) {
      const recs = fs
        .readFileSync(stored, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { stage?: string; step_seconds?: number; loss?: number });
      const train = (s: string) => recs.filter((x) => x.stage === s && typeof x.step_seconds === 'number');
      steps.sft = train('sft').length;
      steps.dpo = train('dpo').length;
      const last = train('dpo').pop();
      if (typeof last?.loss === 'number') lastDpoLoss = last.loss;
    }
    return {
      status: status.state,
      error: status.error?.code ?? null,
      wall_s: Math.round(wall * 10) / 10,
      sft_steps: steps.sft,
      dpo_steps: steps.dpo,
      last_dpo_loss: lastDpoLoss,
      peak_rss_mb: { worker: Math.round(hwm.worker / 1024), training_child: Math.round(hwm.child / 1024) },
      artifact: status.artifact?.uri ?? null,
    };
  } finally {
    await Promise.all(procs.map((p) => stop(p)));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The first file named `name` under `dir` (depth-first), or null. */
function findFile(dir: string, name: string): string | null {
  if (!fs.existsSync(dir)) return null;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isFile() && e.name === name) return p;
    if (e.isDirectory()) {
      const f = findFile(p, name);
      if (f) return f;
    }
  }
  return null;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const dataset = await hhRows(a.pairs);
  for (const name of a.rows) {
    const row = ROWS.find((r) => r.name === name)!;
    let result: Obj;
    try {
      result = await runRow(row, a, dataset);
    } catch (err) {
      result = { status: 'error', error: (err as Error).message };
    }
    process.stdout.write(`${JSON.stringify({ row: row.name, pairs: a.pairs, max_length: a.maxLength, settings: row.overrides, ...result })}\n`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`bench:webhook-models: ${err.message}\n`);
    process.exit(1);
  });
}
