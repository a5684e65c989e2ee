/**
 * docker-compose.yml and .env.example.
 * - Static: the YAML's services, Redis persistence/eviction, healthchecks, depends_on healthy, the gpu profile
 *   with its NVIDIA reservation, volumes, build targets that exist in the Dockerfiles.
 * - `docker-compose config` (Debian package `docker-compose`, no engine needed) validates and resolves the
 *   file with .env.example as .env, and rejects a broken file. Skipped, with the reason, without the binary.
 * - .env.example's values pass the service's env schema and the Firebase option parser.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { loadEnv } from '../../src/config/env.js';
import { firebaseOptionsFromEnv } from '../../src/storage/firebase.js';

const ROOT = join(import.meta.dirname, '..', '..');

type Service = {
  image?: string;
  build?: { context?: string; dockerfile?: string; target?: string; args?: Record<string, string> };
  command?: string[];
  env_file?: string | string[];
  environment?: Record<string, string>;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  profiles?: string[];
  deploy?: { resources?: { reservations?: { devices?: { driver: string; count?: number | string; capabilities: string[] }[] } } };
};
type Compose = { services: Record<string, Service>; volumes: Record<string, unknown> };

/** Parse a dotenv file (KEY=VALUE lines; # comments). */
function parseDotenv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** Check the structure both the raw YAML and `docker-compose config`'s output must have. */
function checkStructure(c: Compose, label: string): void {
  assert.deepEqual(Object.keys(c.services).sort(), ['api', 'redis', 'worker', 'worker-gpu'], label);
  const redis = c.services.redis;
  const cmd = (redis.command ?? []).join(' ');
  assert.match(cmd, /--appendonly yes/, `${label}: redis append-only persistence`);
  assert.match(cmd, /--maxmemory-policy noeviction/, `${label}: redis noeviction (BullMQ)`);
  assert.match((redis.healthcheck?.test ?? []).join(' '), /redis-cli ping/);
  assert.ok(
    redis.volumes?.some((v) => v.startsWith('redis-data:/data')),
    `${label}: redis data volume`,
  );

  for (const name of ['api', 'worker', 'worker-gpu']) {
    const s = c.services[name];
    assert.equal(s.depends_on?.redis?.condition, 'service_healthy', `${label}: ${name} waits for a healthy redis`);
    assert.ok(s.healthcheck?.test?.length, `${label}: ${name} healthcheck`);
    assert.ok(
      s.volumes?.some((v) => /^artifacts:\/app\/artifacts(:rw)?$/.test(v)),
      `${label}: ${name} shares the artifacts volume`,
    );
    assert.equal(s.environment?.REDIS_URL, 'redis://redis:6379');
  }
  assert.match(c.services.api.healthcheck!.test.join(' '), /\/health/);
  assert.equal(c.services.api.build?.target, 'api');
  assert.equal(c.services.worker.build?.target, 'worker');
  assert.equal(c.services.api.profiles, undefined, 'api runs without a profile');
  assert.equal(c.services.worker.profiles, undefined, 'worker runs without a profile');

  const g = c.services['worker-gpu'];
  assert.deepEqual(g.profiles, ['gpu']);
  assert.equal(g.build?.dockerfile, 'Dockerfile.gpu');
  assert.ok('TFJS_NODE_BASE_URI' in (g.build?.args ?? {}), 'the libtensorflow location is a build arg');
  const dev = g.deploy?.resources?.reservations?.devices?.[0];
  assert.equal(dev?.driver, 'nvidia');
  assert.ok(dev?.capabilities.includes('gpu'));
  assert.equal(g.environment?.WORKER_GPU, 'true');
  assert.equal(g.environment?.TF_FORCE_GPU_ALLOW_GROWTH, 'true');
  const cache = g.environment?.CUDA_CACHE_PATH;
  assert.ok(cache && g.volumes?.some((v) => v.startsWith(`cuda-cache:${cache}`)), `${label}: CUDA JIT cache volume at CUDA_CACHE_PATH`);
  for (const v of ['redis-data', 'artifacts', 'cuda-cache']) assert.ok(v in c.volumes, `${label}: volume ${v}`);
}

/** Build targets named by the compose file must be stages of the Dockerfiles. */
function stageNames(file: string): string[] {
  return [...readFileSync(join(ROOT, file), 'utf8').matchAll(/^FROM\s+\S+\s+AS\s+(\S+)/gim)].map((m) => m[1]);
}

/** `docker-compose` (v1, Debian) or `docker compose` (v2), whichever works; undefined when neither. */
function composeCommand(): string[] | undefined {
  for (const argv of [['docker-compose'], ['docker', 'compose']]) {
    const r = spawnSync(argv[0], [...argv.slice(1), 'version'], { encoding: 'utf8', timeout: 20_000 });
    if (r.status === 0) return argv;
  }
  return undefined;
}

const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as Compose;
const example = parseDotenv(readFileSync(join(ROOT, '.env.example'), 'utf8'));

describe('docker-compose.yml (static)', () => {
  it('has redis, api, worker and a gpu-profile worker with healthchecks, volumes and the NVIDIA reservation', () => {
    checkStructure(compose, 'docker-compose.yml');
    for (const name of ['api', 'worker', 'worker-gpu']) assert.equal(compose.services[name].env_file, '.env', `${name} env from .env`);
  });

  it('builds targets that exist in the Dockerfiles', () => {
    const stages = stageNames('Dockerfile');
    for (const name of ['api', 'worker']) assert.ok(stages.includes(compose.services[name].build!.target!), name);
    assert.ok(stageNames('Dockerfile.gpu').length > 0);
    assert.equal(compose.services['worker-gpu'].build?.target, undefined, 'Dockerfile.gpu builds its last stage');
  });
});

describe('.env.example', () => {
  it('passes the service env schema as written, and with Firebase switched on', () => {
    const env = loadEnv(example);
    assert.equal(env.STORAGE_BACKEND, 'local');
    const fb = loadEnv({ ...example, STORAGE_BACKEND: 'firebase', FIREBASE_BUCKET: 'my-project.appspot.com' });
    assert.equal(fb.STORAGE_BACKEND, 'firebase');
    const opts = firebaseOptionsFromEnv({ ...example, FIREBASE_BUCKET: 'my-project.appspot.com' });
    assert.equal(opts.maxAttempts, Number(example.FIREBASE_UPLOAD_MAX_ATTEMPTS));
  });

  it('documents the settings the deployment relies on, and leaves CUDA_VISIBLE_DEVICES commented out', () => {
    for (const k of [
      'API_KEYS',
      'STORAGE_BACKEND',
      'FIREBASE_BUCKET',
      'GOOGLE_APPLICATION_CREDENTIALS',
      'FIREBASE_STORAGE_EMULATOR_HOST',
      'ALLOW_CPU_FALLBACK',
      'TFJS_NODE_BASE_URI',
      'COMPOSE_PROJECT_NAME',
    ]) {
      assert.ok(k in example, `${k} in .env.example`);
    }
    // An empty CUDA_VISIBLE_DEVICES hides every GPU from CUDA.
    assert.ok(!('CUDA_VISIBLE_DEVICES' in example));
    assert.ok(!/API_KEYS=\S/.test(readFileSync(join(ROOT, '.env.example'), 'utf8')), 'no real key in the example');
  });
});

describe('docker-compose config', () => {
  const cmd = composeCommand();
  const skip = cmd ? false : 'docker-compose is not installed (Debian: apt-get install -y docker-compose; .ci/run installs it)';
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'dpo-compose-'));
    copyFileSync(join(ROOT, 'docker-compose.yml'), join(dir, 'docker-compose.yml'));
    copyFileSync(join(ROOT, '.env.example'), join(dir, '.env'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const config = (file: string, extra: string[] = []) =>
    spawnSync(cmd![0], [...cmd!.slice(1), '-f', file, ...extra, 'config'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });

  it('validates and resolves the file with .env.example as .env', { skip }, () => {
    const r = config(join(dir, 'docker-compose.yml'), ['--profile', 'gpu']);
    assert.equal(r.status, 0, `docker-compose config failed:\n${r.stderr}`);
    const resolved = parse(r.stdout) as Compose;
    checkStructure(resolved, 'docker-compose config');
    // env_file entries are merged into each service's environment; compose's own settings win.
    assert.equal(resolved.services.api.environment?.STORAGE_BACKEND, example.STORAGE_BACKEND);
    assert.equal(resolved.services.worker.environment?.WORKER_METRICS_PORT, example.WORKER_METRICS_PORT);
    assert.equal(resolved.services.api.environment?.STORAGE_DIR, '/app/artifacts');
  });

  it('rejects a compose file with an invalid depends_on condition (the check can fail)', { skip }, () => {
    const bad = join(dir, 'bad.yml');
    writeFileSync(bad, readFileSync(join(dir, 'docker-compose.yml'), 'utf8').replace(/condition: service_healthy/, 'condition: when_ready'));
    const r = config(bad);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /condition|when_ready/);
  });
});
