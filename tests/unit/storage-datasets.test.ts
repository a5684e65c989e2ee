/**
 * The trigger path's dataset store shortcuts keep their contract:
 * - canonicalStringRows (one native JSON.stringify with sorted keys) gives exactly the canonical JSON of
 *   safe-stable-stringify for string-valued rows (fast-check, fixed seed: any keys in any order, any unicode
 *   including lone surrogates, quotes, backslashes and control characters), and declines anything else;
 * - LocalStorage.putObjectsIfAbsent writes every entry when the first key is absent and nothing when it exists
 *   (no temporary file left), and DatasetStore stores rows once with their meta, read back by sha256.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { canonicalJson as trainingCanonicalJson } from '../../src/training/data/hash.js';
import { canonicalStringRows, DatasetStore, prepareDataset } from '../../src/storage/datasets.js';
import { LocalStorage } from '../../src/storage/local.js';

const dir = mkdtempSync(join(tmpdir(), 'dpo-ds-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('canonicalStringRows equals the canonical JSON of string rows, and declines other rows', () => {
  const text = fc.string({ unit: 'binary', maxLength: 40 });
  const row = fc.dictionary(fc.oneof(text, fc.constantFrom('prompt', 'chosen', 'rejected', '__proto__', '10', '2', 'a"b')), text, { maxKeys: 6 });

  const key = fc.oneof(text, fc.constantFrom('prompt', 'chosen', 'rejected', '__proto__', 'constructor', '10', '2', 'a"b'));
  // rows with one key set, in any key order: the fast path answers, with the canonical text
  const sameKeys = fc.uniqueArray(key, { maxLength: 6 }).chain((keys) =>
    fc.array(
      fc.tuple(fc.array(text, { minLength: keys.length, maxLength: keys.length }), fc.boolean()).map(([values, reversed]) => {
        const entries = keys.map((k, i) => [k, values[i]!] as const);
        return Object.fromEntries(reversed ? entries.reverse() : entries);
      }),
      { minLength: 1, maxLength: 20 },
    ),
  );
  // through JSON as a request body arrives (own data properties, also for "__proto__")
  const viaJson = (rows: unknown[]) => JSON.parse(JSON.stringify(rows)) as unknown[];
  fc.assert(
    fc.property(sameKeys, (rows) => {
      const parsed = viaJson(rows);
      assert.equal(canonicalStringRows(parsed), trainingCanonicalJson(parsed));
    }),
    { seed: 1414, numRuns: 400 },
  );
  // any string rows: the fast path answers the canonical text or declines (never another text)
  fc.assert(
    fc.property(fc.array(row, { minLength: 1, maxLength: 20 }), (rows) => {
      const parsed = viaJson(rows);
      const fast = canonicalStringRows(parsed);
      if (fast !== null) assert.equal(fast, trainingCanonicalJson(parsed));
      assert.equal(prepareDataset(parsed).text, trainingCanonicalJson(parsed));
    }),
    { seed: 1414, numRuns: 400 },
  );
  const typical = [
    { rejected: 'r\u0000\ud800', prompt: 'p "q"', chosen: 'c\\n' },
    { prompt: 'x', chosen: 'y', rejected: 'z' },
  ];
  assert.equal(canonicalStringRows(typical), trainingCanonicalJson(typical));
  assert.equal(prepareDataset(typical).text, trainingCanonicalJson(typical));
  for (const other of [[{ prompt: 1 }], [{ prompt: { a: 'b' } }], [['a']], [null], ['s'], [Object.create({ inherited: 'x' })], [new Map()]]) {
    assert.equal(canonicalStringRows(other), null, JSON.stringify(other));
  }
  // other rows still get the canonical JSON (the general path)
  const mixed = [{ prompt: 'p', messages: [{ role: 'user', content: 'x' }] }];
  assert.equal(prepareDataset(mixed).text, trainingCanonicalJson(mixed));
});

test('putObjectsIfAbsent: all entries when the first key is absent, nothing when it exists', async () => {
  const storage = new LocalStorage(join(dir, 'objects'));
  assert.equal(
    await storage.putObjectsIfAbsent([
      { key: 'a/one.json', data: '1' },
      { key: 'a/one.meta.json', data: 'm1' },
    ]),
    true,
  );
  assert.equal((await storage.getObject('a/one.json'))?.toString(), '1');
  assert.equal((await storage.getObject('a/one.meta.json'))?.toString(), 'm1');
  // present: nothing written, the meta keeps its first content, no temporary files
  assert.equal(
    await storage.putObjectsIfAbsent([
      { key: 'a/one.json', data: '2' },
      { key: 'a/one.meta.json', data: 'm2' },
    ]),
    false,
  );
  assert.equal((await storage.getObject('a/one.json'))?.toString(), '1');
  assert.equal((await storage.getObject('a/one.meta.json'))?.toString(), 'm1');
  assert.deepEqual(readdirSync(join(dir, 'objects', 'a')).sort(), ['one.json', 'one.meta.json']);
  await assert.rejects(storage.putObjectsIfAbsent([{ key: '../x', data: '1' }]), /INVALID_OBJECT_KEY|relative name/);

  const store = new DatasetStore(storage);
  const rows = [{ prompt: 'p', chosen: 'a', rejected: 'b' }];
  const p = prepareDataset(rows);
  await store.putPrepared('acme', p);
  const info = await store.info('acme', p.ref.datasetId);
  assert.equal(info?.sha256, p.ref.sha256);
  assert.equal(info?.rows, 1);
  assert.deepEqual(await store.get('acme', p.ref), rows);
  // stored once: a second put leaves the meta (its createdAt) as it was
  const metaPath = join(dir, 'objects', '.datasets', 'acme', `${p.ref.sha256}.meta.json`);
  const before = readFileSync(metaPath, 'utf8');
  await store.putPrepared('acme', prepareDataset(rows));
  assert.equal(readFileSync(metaPath, 'utf8'), before);
  assert.deepEqual(readdirSync(join(dir, 'objects', '.datasets', 'acme')).sort(), [`${p.ref.sha256}.json`, `${p.ref.sha256}.meta.json`]);
});
