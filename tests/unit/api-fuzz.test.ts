/**
 * Property-based fuzz of POST /trigger-finetune (fast-check, fixed seed, bounded runs) against the real Redis:
 * hostile and random bodies — wrong types, traversal ids, prototype keys, huge numbers, bad unicode, unknown
 * and service-only config keys, random config values — never give a 5xx, every 4xx carries a stable code,
 * and nothing is queued for a body that was refused.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { dropPrefix, testEnv, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('fuzz');
const dir = mkdtempSync(join(tmpdir(), 'dpo-fuzz-'));
const SEED = 1414;
const RUNS = 300;
let app: FastifyInstance;

async function jobCount(): Promise<number> {
  const c = await app.queueService.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
  return Object.values(c).reduce((a, b) => a + b, 0);
}

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { API_KEYS: 'fuzz-key:*', STORAGE_DIR: dir, MAX_JOBS_PER_COMMUNITY: '0', BODY_LIMIT_BYTES: '65536' }) });
  await app.ready();
});

after(async () => {
  await app.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

const hostileString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom(
    '../../../../tmp/victim',
    '/etc/passwd',
    '..',
    '.',
    '~',
    'constructor',
    '__proto__',
    'toString',
    'README.md',
    'node_modules',
    '\u0000',
    '\ud800',
    'a'.repeat(300),
  ),
);
const anyValue = fc.oneof(
  hostileString,
  fc.integer(),
  fc.double(),
  fc.constantFrom(2 ** 53, -1, 0, 1e308, null, true, false),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.object({ maxDepth: 1 }),
);
const row = fc.oneof(
  fc.record({ prompt: hostileString, chosen: hostileString, rejected: hostileString }),
  fc.record({ prompt: anyValue, chosen: anyValue, rejected: anyValue }, { requiredKeys: [] }),
  anyValue,
);
const CONFIG_KEYS = [
  'model',
  'loss',
  'beta',
  'lr',
  'n_epochs',
  'max_steps',
  'batch_size',
  'gradient_accumulation_steps',
  'warmup_steps',
  'max_length',
  'max_prompt_length',
  'output_dir',
  'datasets',
  'resume_from_checkpoint',
  'backend',
  'lora',
  'sft',
  'constructor',
  '__proto__',
  'unknown_key',
];
const config = fc.oneof(
  fc.dictionary(fc.constantFrom(...CONFIG_KEYS), anyValue, { maxKeys: 4 }),
  fc.record({ model: fc.record({ name_or_path: hostileString, tokenizer_name_or_path: hostileString }) }),
  fc.record({ lora: fc.record({ r: fc.oneof(fc.integer(), fc.constant(2 ** 53)), enabled: fc.boolean() }) }),
  anyValue,
);
const body = fc.oneof(
  fc.record(
    { communityId: fc.oneof(hostileString, fc.constantFrom('acme', 'fuzz_ok')), dataset: fc.array(row, { maxLength: 4 }), config },
    { requiredKeys: ['communityId'] },
  ),
  fc.record({
    communityId: fc.constantFrom('acme'),
    dataset: fc.array(
      fc.record({
        prompt: fc.string({ minLength: 1, maxLength: 20 }),
        chosen: fc.string({ minLength: 1, maxLength: 20 }),
        rejected: fc.string({ minLength: 1, maxLength: 20 }),
      }),
      { minLength: 1, maxLength: 3 },
    ),
  }),
  fc.object({ maxDepth: 2 }),
  anyValue,
);

test(`POST /trigger-finetune: ${RUNS} random bodies (seed ${SEED}): no 5xx, stable codes, nothing queued when refused`, async () => {
  const counts: Record<number, number> = {};
  await fc.assert(
    fc.asyncProperty(body, fc.option(hostileString, { nil: undefined }), async (payload, idem) => {
      const before = await jobCount();
      const headers: Record<string, string> = { authorization: 'Bearer fuzz-key', 'content-type': 'application/json' };
      if (idem !== undefined && /^[\x20-\x7e]*$/.test(idem)) headers['idempotency-key'] = idem;
      const res = await app.inject({ method: 'POST', url: '/trigger-finetune', headers, payload: JSON.stringify(payload) });
      counts[res.statusCode] = (counts[res.statusCode] ?? 0) + 1;
      assert.ok(res.statusCode < 500, `${res.statusCode} for ${JSON.stringify(payload).slice(0, 300)}: ${res.body}`);
      const b = res.json();
      if (res.statusCode >= 400) {
        assert.match(b.code, /^[A-Z][A-Z0-9_]+$/);
        assert.equal(await jobCount(), before, `a refused body queued a job: ${JSON.stringify(payload).slice(0, 300)}`);
      } else assert.match(b.jobId, /^ft-[0-9a-f]{24}$/);
    }),
    { seed: SEED, numRuns: RUNS },
  );
  // the generator reaches both outcomes (else the property says little)
  assert.ok((counts[400] ?? 0) > RUNS / 3, JSON.stringify(counts));
  assert.ok((counts[202] ?? 0) + (counts[200] ?? 0) > 5, JSON.stringify(counts));
  process.stdout.write(`# fuzz status counts (seed ${SEED}, ${RUNS} runs): ${JSON.stringify(counts)}\n`);
});
