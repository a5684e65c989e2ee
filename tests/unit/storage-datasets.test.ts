/**
 * The trigger path's dataset store shortcuts keep their contract:
 * - canonicalStringRows (one native JSON.stringify with sorted keys) gives exactly the canonical JSON of
 *   safe-stable-stringify for string-valued rows (fast-check, fixed seed: any keys in any order, any unicode
 *   including lone surrogates, quotes, backslashes and control characters), and declines anything else;
 * - LocalStorage.putObjectsIfAbsent, on both its paths (synchronous for small entries, asynchronous for large
 *   ones), writes every entry when the first key is absent and nothing when it exists, remakes a removed
 *   directory, and fails with STORAGE_UPLOAD_FAILED leaving no temporary file;
 * - DatasetStore stores a trigger's rows once as one file, and info() makes their meta from the rows once.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { canonicalJson as trainingCanonicalJson } from '../../src/training/data/hash.js';
import { canonicalStringRows, DatasetStore, prepareDataset } from '../../src/storage/datasets.js';
import { LocalStorage, SYNC_WRITE_MAX_BYTES } from '../../src/storage/local.js';

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

// both write paths of putObjectsIfAbsent: synchronous for small entries, the promise API for large ones
for (const [path, size] of [
  ['small (synchronous)', 16],
  ['large (asynchronous)', SYNC_WRITE_MAX_BYTES + 1],
] as const) {
  test(`putObjectsIfAbsent, ${path} path: all entries when the first key is absent, nothing when it exists`, async () => {
    const root = join(dir, `objects-${size}`);
    const storage = new LocalStorage(root);
    const one = 'x'.repeat(size);
    assert.equal(
      await storage.putObjectsIfAbsent([
        { key: 'a/one.json', data: one },
        { key: 'a/one.meta.json', data: 'm1' },
      ]),
      true,
    );
    assert.equal((await storage.getObject('a/one.json'))?.toString(), one);
    assert.equal((await storage.getObject('a/one.meta.json'))?.toString(), 'm1');
    // present: nothing written, the meta keeps its first content, no temporary files
    assert.equal(
      await storage.putObjectsIfAbsent([
        { key: 'a/one.json', data: Buffer.from('y'.repeat(size)) },
        { key: 'a/one.meta.json', data: 'm2' },
      ]),
      false,
    );
    assert.equal((await storage.getObject('a/one.json'))?.toString(), one);
    assert.equal((await storage.getObject('a/one.meta.json'))?.toString(), 'm1');
    assert.deepEqual(readdirSync(join(root, 'a')).sort(), ['one.json', 'one.meta.json']);
    await assert.rejects(storage.putObjectsIfAbsent([{ key: '../x', data: one }]), /INVALID_OBJECT_KEY|relative name/);
    // a directory removed behind the store's back is made again
    rmSync(join(root, 'a'), { recursive: true });
    assert.equal(await storage.putObjectsIfAbsent([{ key: 'a/two.json', data: one }]), true);
    assert.deepEqual(readdirSync(join(root, 'a')), ['two.json']);
    // a write that fails (the directory is a file) is STORAGE_UPLOAD_FAILED naming the key, and leaves no temporary file
    writeFileSync(join(root, 'b'), 'not a directory');
    await assert.rejects(
      storage.putObjectsIfAbsent([{ key: 'b/three.json', data: one }]),
      (err: Error & { code?: string }) => err.code === 'STORAGE_UPLOAD_FAILED' && /b\/three\.json/.test(err.message),
    );
    const c = join(root, 'c');
    mkdirSync(join(c, 'four.meta.json', 'in-the-way'), { recursive: true }); // the second rename fails: a non-empty directory is there
    await assert.rejects(
      storage.putObjectsIfAbsent([
        { key: 'c/four.json', data: one },
        { key: 'c/four.meta.json', data: one },
      ]),
      (err: Error & { code?: string }) => err.code === 'STORAGE_UPLOAD_FAILED',
    );
    assert.ok(!readdirSync(c, { recursive: true }).some((f) => String(f).includes('.tmp-')), 'no temporary file is left');
  });
}

test('DatasetStore: rows stored once without a meta file; info makes the meta from the rows once', async () => {
  const root = join(dir, 'objects-store');
  const storage = new LocalStorage(root);
  const store = new DatasetStore(storage);
  const rows = [{ prompt: 'p', chosen: 'a', rejected: 'b' }];
  const p = prepareDataset(rows);
  await store.putPrepared('acme', p);
  const acme = join(root, '.datasets', 'acme');
  assert.deepEqual(readdirSync(acme), [`${p.ref.sha256}.json`], 'a trigger writes one file, the rows');
  const rowsMtime = statSync(join(acme, `${p.ref.sha256}.json`)).mtime.toISOString();
  const info = await store.info('acme', p.ref.datasetId);
  assert.deepEqual(info, { ...p.ref, bytes: Buffer.byteLength(p.text), createdAt: rowsMtime });
  assert.deepEqual(await store.get('acme', p.ref), rows);
  // the meta is now written, and read (not the rows) by the next call
  const metaPath = join(acme, `${p.ref.sha256}.meta.json`);
  const meta = readFileSync(metaPath, 'utf8');
  assert.deepEqual(JSON.parse(meta), info);
  writeFileSync(join(acme, `${p.ref.sha256}.json`), '[]');
  assert.deepEqual(await store.info('acme', p.ref.datasetId), info);
  // stored once: a second put leaves the rows and the meta as they were
  await store.putPrepared('acme', prepareDataset(rows));
  assert.equal(readFileSync(join(acme, `${p.ref.sha256}.json`), 'utf8'), '[]');
  assert.equal(readFileSync(metaPath, 'utf8'), meta);
  // no such dataset (or another community's): null; rows without a meta that do not match their id: CORRUPT_DATASET
  assert.equal(await store.info('globex', p.ref.datasetId), null);
  assert.equal(await store.info('acme', `ds-${'0'.repeat(64)}`), null);
  const q = prepareDataset([{ prompt: 'q', chosen: 'c', rejected: 'd' }]);
  await store.putPrepared('acme', q);
  writeFileSync(join(acme, `${q.ref.sha256}.json`), q.text.replace('"q"', '"Q"'));
  await assert.rejects(store.info('acme', q.ref.datasetId), (err: Error & { code?: string }) => err.code === 'CORRUPT_DATASET');
  assert.ok(!readdirSync(acme).includes(`${q.ref.sha256}.meta.json`), 'no meta is made for corrupt rows');
});
