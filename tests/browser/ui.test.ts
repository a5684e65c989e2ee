/**
 * The job page (GET /ui) in a real browser: Debian's chromium driven by playwright-core (its own browser
 * download cannot work here; `executablePath: /usr/bin/chromium`, or CHROMIUM_PATH). Against the real
 * Redis, a real worker and a listening API: the page lists the running toy job, its loss chart gains
 * points while it trains (fed by the event stream), the progress bar moves, and it shows `completed`
 * with the artifact's files at the end. Skipped, with the reason, when no chromium is installed
 * (`apt-get install -y chromium`). UPDATE_SCREENSHOT=1 writes docs/ui-job-page.png.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const haveChromium = existsSync(chromium);
const skip = haveChromium ? false : `no chromium at ${chromium}: install it (apt-get install -y chromium) or set CHROMIUM_PATH`;

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('ui');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-ui-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
/** Long enough (~tens of steps) that the page sees the job running. */
const RUN = {
  max_steps: 40,
  sft: { max_steps: 15 },
  batch_size: 2,
  eval_split_fraction: 0.25,
  eval_every: 16,
  sample_during_eval: true,
  n_eval_model_samples: 1,
  sample_max_new_tokens: 12,
  tensorboard: false,
  plot: false,
};

let app: FastifyInstance | undefined;
let base = '';
let worker: ChildProcess | undefined;
let workerLog = '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  if (!haveChromium) return;
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir }), surface: { eventsPollMs: 100 } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
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
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) await sleep(100);
});

after(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    const kill = setTimeout(() => worker!.kill('SIGKILL'), 20_000);
    await new Promise((r) => worker!.once('exit', r));
    clearTimeout(kill);
  }
  await app?.close();
  if (haveChromium) await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

test('GET /ui: a running toy job, its loss chart updating from the event stream, then completed with its files', { skip, timeout: 240_000 }, async () => {
  const { chromium: pw } = await import('playwright-core');
  const res = await app!.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'ui-demo', dataset: toy, config: RUN, suffix: 'kind-endings' },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  const browser = await pw.launch({ executablePath: chromium, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${base}/ui#job=${jobId}`);
    // the list shows the job
    await page.locator(`#jobs tr[data-job-id="${jobId}"]`).waitFor({ timeout: 30_000 });
    // the loss chart gains points while the job is active
    const points = async () => Number(await page.locator('#chart-loss').getAttribute('data-points'));
    await page.waitForFunction(() => Number(document.querySelector('#chart-loss')?.getAttribute('data-points')) >= 3, null, { timeout: 120_000 });
    const first = await points();
    const stateWhile = await page.locator('#job-state').textContent();
    await page.waitForFunction((n) => Number(document.querySelector('#chart-loss')?.getAttribute('data-points')) > n, first, { timeout: 120_000 });
    const second = await points();
    assert.ok(second > first, `chart points ${first} -> ${second}`);
    assert.ok(['active', 'completed'].includes(String(stateWhile)), String(stateWhile));
    // the uPlot canvas is drawn
    assert.ok((await page.locator('#chart-loss canvas').count()) > 0);
    // completion: state, a full progress bar, events, files
    await page.waitForFunction(() => document.querySelector('#job-state')?.textContent === 'completed', null, { timeout: 180_000 });
    await page.locator('#files tbody tr').first().waitFor({ timeout: 30_000 });
    const filePaths = await page.locator('#files tbody td:first-child').allTextContents();
    assert.ok(filePaths.includes('model/model.safetensors'), filePaths.join(', '));
    assert.equal(await page.locator('#bar').evaluate((el) => (el as HTMLElement).style.width), '100%');
    const evTypes = await page.locator('#events li').evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.type));
    for (const t of ['job.queued', 'stage.started', 'job.succeeded']) assert.ok(evTypes.includes(t), `${t} in ${evTypes.join(', ')}`);
    // the DPO charts got their points too
    const accLines = await page.evaluate(() => document.querySelectorAll('#chart-acc canvas').length);
    assert.ok(accLines > 0);
    await page.locator('#samples pre').first().waitFor({ timeout: 30_000 });
    assert.deepEqual(errors, []);
    const shot = join(storageDir, 'ui.png');
    await page.screenshot({ path: shot, fullPage: true });
    if (process.env.UPDATE_SCREENSHOT === '1') copyFileSync(shot, join(root, 'docs/ui-job-page.png'));
  } finally {
    await browser.close();
  }
  const final = (await app!.inject({ method: 'GET', url: `/jobs/${jobId}` })).json();
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog.slice(-2000)}`);
});
