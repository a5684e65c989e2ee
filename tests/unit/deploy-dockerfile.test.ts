/**
 * Dockerfile and Dockerfile.gpu, checked without a Docker engine: stages and targets, base images, the
 * non-root user, HEALTHCHECKs (their scripts run here against real HTTP servers), the lockfile installs
 * (identical to .ci/run's), no secrets, and that every COPY source exists in the repository.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  name: string;
  from: string;
  instructions: Instruction[];
}
interface Dockerfile {
  globalArgs: Record<string, string>;
  stages: Stage[];
}

/** Parse a Dockerfile: line continuations, comments, global ARG defaults, stages with their instructions. */
function parseDockerfile(path: string): Dockerfile {
  const logical: string[] = [];
  let cur = '';
  for (const raw of readFileSync(path, 'utf8').split('\n')) {
    const line = raw.trimEnd();
    if (cur === '' && /^\s*#/.test(line)) continue;
    if (cur !== '' && /^\s*#/.test(line)) continue; // comments inside a continuation
    if (line.endsWith('\\')) {
      cur += line.slice(0, -1) + ' ';
      continue;
    }
    cur += line;
    if (cur.trim()) logical.push(cur.trim());
    cur = '';
  }
  const df: Dockerfile = { globalArgs: {}, stages: [] };
  for (const l of logical) {
    const m = /^(\w+)\s+([\s\S]*)$/.exec(l);
    if (!m) continue;
    const op = m[1].toUpperCase();
    const args = m[2].replace(/\s+/g, ' ').trim();
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args.replace(/^--platform=\S+\s+/, ''));
      assert.ok(f, `FROM line parses: ${l}`);
      const from = f[1].replace(/\$\{(\w+)\}/g, (_, k: string) => df.globalArgs[k] ?? '');
      df.stages.push({ name: f[2] ?? String(df.stages.length), from, instructions: [] });
    } else if (df.stages.length === 0) {
      if (op === 'ARG') {
        const [k, v = ''] = args.split('=');
        df.globalArgs[k] = v;
      }
    } else {
      df.stages.at(-1)!.instructions.push({ op, args });
    }
  }
  return df;
}

function stage(df: Dockerfile, name: string): Stage {
  const s = df.stages.find((x) => x.name === name);
  assert.ok(s, `stage ${name} exists (have ${df.stages.map((x) => x.name).join(', ')})`);
  return s;
}

/** Stages from `name` up to its base image (the chain of FROM <stage>). */
function chain(df: Dockerfile, name: string): Stage[] {
  const out: Stage[] = [];
  for (let s: Stage | undefined = stage(df, name); s; s = df.stages.find((x) => x.name === s!.from)) out.push(s);
  return out;
}

/** The last value of an instruction along a stage chain (USER, HEALTHCHECK, CMD are inherited). */
function effective(df: Dockerfile, name: string, op: string): string | undefined {
  for (const s of chain(df, name)) {
    const hit = s.instructions.filter((i) => i.op === op).at(-1);
    if (hit) return hit.args;
  }
  return undefined;
}

function envOf(df: Dockerfile, name: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const s of chain(df, name).reverse()) {
    for (const i of s.instructions.filter((x) => x.op === 'ENV')) {
      for (const m of i.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]] = m[2].replace(/^"|"$/g, '');
    }
  }
  return env;
}

const runs = (s: Stage): string[] => s.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
const cpu = parseDockerfile(join(ROOT, 'Dockerfile'));
const gpu = parseDockerfile(join(ROOT, 'Dockerfile.gpu'));

/** The `npm ci ...` command .ci/run executes, e.g. `npm ci --no-fund --no-audit`. */
function ciNpmCi(): string {
  const m = /^\s*(npm ci[^\n#]*)$/m.exec(readFileSync(join(ROOT, '.ci', 'run'), 'utf8'));
  assert.ok(m, '.ci/run runs npm ci');
  return m[1].trim();
}
/** The path has files tracked by git (a clean clone has it), or, outside a git checkout, exists. */
function tracked(path: string): boolean {
  const r = spawnSync('git', ['ls-files', '--', path], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) return existsSync(join(ROOT, path));
  return r.stdout.trim().length > 0;
}
const sortedFlags = (cmd: string): string[] =>
  cmd
    .split(/\s+/)
    .filter((w) => w.startsWith('--'))
    .sort();

describe('Dockerfile (CPU api and worker)', () => {
  it('has a build stage and api/worker targets on a Node LTS slim image', () => {
    assert.deepEqual(
      cpu.stages.map((s) => s.name),
      ['build', 'deps', 'runtime', 'api', 'worker'],
    );
    for (const s of ['build', 'deps', 'runtime']) assert.match(stage(cpu, s).from, /^node:(20|22|24)-[a-z]+-slim$/);
    assert.equal(stage(cpu, 'api').from, 'runtime');
    assert.equal(stage(cpu, 'worker').from, 'runtime');
  });

  it('installs from the lockfile exactly as .ci/run does, production-only in the runtime', () => {
    const ci = ciNpmCi();
    const buildCi = runs(stage(cpu, 'build')).find((r) => r.includes('npm ci'));
    assert.ok(buildCi);
    assert.deepEqual(sortedFlags(buildCi.slice(buildCi.indexOf('npm ci'))), sortedFlags(ci));
    const depsCi = runs(stage(cpu, 'deps')).find((r) => r.includes('npm ci'));
    assert.ok(depsCi);
    assert.deepEqual(sortedFlags(depsCi.slice(depsCi.indexOf('npm ci'))), [...sortedFlags(ci), '--omit=dev'].sort());
    assert.ok(stage(cpu, 'runtime').instructions.some((i) => i.op === 'COPY' && /--from=deps \S*\s*\/app\/node_modules/.test(i.args)));
    assert.ok(!runs(stage(cpu, 'runtime')).some((r) => /npm (i|install|ci)\b/.test(r)), 'the runtime installs nothing itself');
  });

  it('runs as the non-root node user with a HEALTHCHECK and the right command per target', () => {
    for (const t of ['api', 'worker']) {
      assert.equal(effective(cpu, t, 'USER'), 'node', `${t} user`);
      assert.match(effective(cpu, t, 'HEALTHCHECK') ?? '', /^--interval=\S+ .*CMD \[/);
    }
    assert.match(effective(cpu, 'api', 'HEALTHCHECK')!, /\/health/);
    assert.match(effective(cpu, 'api', 'CMD')!, /"src\/api\/server\.ts"\]$/);
    assert.match(effective(cpu, 'worker', 'CMD')!, /"src\/worker\/main\.ts"\]$/);
    assert.equal(envOf(cpu, 'api').HOST, '0.0.0.0');
  });
});

describe('Dockerfile.gpu (GPU worker)', () => {
  it('builds on a published CUDA 11.8 + cuDNN 8 runtime with Node LTS', () => {
    assert.equal(stage(gpu, 'base').from, 'nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04');
    assert.match(stage(gpu, 'node').from, /^node:(20|22|24)-[a-z]+-slim$/);
    assert.equal(chain(gpu, 'worker-gpu').at(-1)!.from, 'nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04');
    assert.equal(gpu.stages.at(-1)!.name, 'worker-gpu', 'the default target is the GPU worker');
  });

  it('installs the same lockfile, then tfjs-node-gpu@4.22.0 with a configurable libtensorflow location', () => {
    const deps = stage(gpu, 'deps');
    const depsCi = runs(deps).find((r) => r.includes('npm ci'));
    assert.ok(depsCi);
    assert.deepEqual(sortedFlags(depsCi.slice(depsCi.indexOf('npm ci'))), [...sortedFlags(ciNpmCi()), '--omit=dev'].sort());
    assert.ok(deps.instructions.some((i) => i.op === 'ARG' && i.args === 'TFJS_NODE_GPU_VERSION=4.22.0'));
    assert.ok(deps.instructions.some((i) => i.op === 'ARG' && /^TFJS_NODE_BASE_URI=?$/.test(i.args)));
    const install = runs(deps).find((r) => r.includes('@tensorflow/tfjs-node-gpu@'));
    assert.ok(install && /TFJS_NODE_BASE_URI/.test(install) && /vendor|\/tmp\/libtensorflow/.test(install));
    assert.ok(install.includes('tfjs#8742'), 'the failure message points at the upstream issue');
  });

  it('sets GPU memory growth and a CUDA JIT cache, runs as node with a HEALTHCHECK', () => {
    const env = envOf(gpu, 'worker-gpu');
    assert.equal(env.TF_FORCE_GPU_ALLOW_GROWTH, 'true');
    assert.equal(env.CUDA_CACHE_PATH, '/var/cache/cuda');
    assert.equal(env.WORKER_GPU, 'true');
    assert.equal(env.TFJS_BACKEND, 'tensorflow-gpu');
    assert.equal(effective(gpu, 'worker-gpu', 'USER'), 'node');
    assert.ok(effective(gpu, 'worker-gpu', 'HEALTHCHECK'));
    assert.match(effective(gpu, 'worker-gpu', 'CMD')!, /"src\/worker\/main\.ts"\]$/);
  });
});

describe('both Dockerfiles', () => {
  for (const [file, df] of [
    ['Dockerfile', cpu],
    ['Dockerfile.gpu', gpu],
  ] as const) {
    it(`${file}: no secrets in layers, no whole-context COPY, every COPY source exists`, () => {
      for (const s of df.stages) {
        for (const i of s.instructions) {
          if (i.op === 'ARG' || i.op === 'ENV') {
            assert.doesNotMatch(i.args, /(SECRET|PASSWORD|TOKEN|API_KEYS|PRIVATE_KEY|CREDENTIALS)\w*=/i, `${file} ${s.name}: ${i.op} ${i.args}`);
          }
          if (i.op !== 'COPY' || /--from=/.test(i.args)) continue;
          const parts = i.args.split(' ').filter((p) => !p.startsWith('--'));
          const sources = parts.slice(0, -1);
          for (const src of sources) {
            assert.notEqual(src, '.', `${file} ${s.name}: COPY . would send the whole context`);
            assert.doesNotMatch(src, /\.env|secrets|\.pem|credentials/i);
            assert.ok(
              tracked(src),
              `${file} ${s.name}: COPY source ${src} is in the repository (git ls-files; an empty or untracked directory is not in a clean clone)`,
            );
          }
        }
      }
      const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n');
      for (const p of ['.env', 'secrets/', 'node_modules/', '.git/']) assert.ok(ignore.includes(p), `.dockerignore lists ${p}`);
    });
  }
});

describe('entry points', () => {
  it('every CMD runs a TypeScript entry that is in the repository, through tsx', () => {
    for (const [df, target] of [
      [cpu, 'api'],
      [cpu, 'worker'],
      [gpu, 'worker-gpu'],
    ] as const) {
      const argv = JSON.parse(effective(df, target, 'CMD')!) as string[];
      assert.deepEqual(argv.slice(0, 3), ['node', '--import', 'tsx']);
      assert.ok(tracked(argv[3]), `${target}: ${argv[3]} is in the repository`);
    }
  });
});

describe('HEALTHCHECK scripts (run here against real HTTP servers)', () => {
  let server: Server;
  let port = 0;
  let healthStatus = 200;
  let metricsStatus = 200;
  before(async () => {
    server = createServer((req, res) => {
      if (req.url === '/health') res.writeHead(healthStatus).end('{}');
      else if (req.url === '/metrics') res.writeHead(metricsStatus).end('# metrics\n');
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  /** The `node -e <script>` of a HEALTHCHECK CMD [...] exec form. */
  function script(df: Dockerfile, target: string): string {
    const hc = effective(df, target, 'HEALTHCHECK')!;
    const argv = JSON.parse(hc.slice(hc.indexOf('CMD ') + 4)) as string[];
    assert.deepEqual(argv.slice(0, 2), ['node', '-e']);
    return argv[2];
  }
  /** Exit code of `node -e code` (async: the server answering it lives in this process). */
  const run = (code: string, env: Record<string, string>): Promise<number> =>
    new Promise((resolve) => {
      execFile(process.execPath, ['-e', code], { env: { ...process.env, ...env }, timeout: 15_000 }, (err) =>
        resolve(err ? Number((err as { code?: unknown }).code ?? 1) : 0),
      );
    });

  it('api: healthy on 200 from /health, unhealthy on 503 or nothing listening', async () => {
    const code = script(cpu, 'api');
    healthStatus = 200;
    assert.equal(await run(code, { PORT: String(port) }), 0);
    healthStatus = 503;
    assert.equal(await run(code, { PORT: String(port) }), 1);
    assert.equal(await run(code, { PORT: '1' }), 1);
  });

  it('worker: /metrics must answer 2xx when served; a process check when WORKER_METRICS_PORT=0 or nothing listens', async () => {
    // PID 1 here is not a worker, so the process check fails here (in the container it is `... worker/main.ts`).
    const pid1 = existsSync('/proc/1/cmdline') ? readFileSync('/proc/1/cmdline', 'utf8') : 'worker';
    const processCheck = pid1.includes('worker') ? 0 : 1;
    for (const df of [cpu, gpu]) {
      const code = script(df, df === cpu ? 'worker' : 'worker-gpu');
      metricsStatus = 200;
      assert.equal(await run(code, { WORKER_METRICS_PORT: String(port) }), 0);
      metricsStatus = 500;
      assert.equal(await run(code, { WORKER_METRICS_PORT: String(port) }), 1);
      assert.equal(await run(code, { WORKER_METRICS_PORT: '1' }), processCheck);
      assert.equal(await run(code, { WORKER_METRICS_PORT: '0' }), processCheck);
    }
  });
});
