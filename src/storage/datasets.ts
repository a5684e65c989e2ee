/**
 * Datasets out of Redis: a job's rows live in storage (the same backend as the artifacts, ObjectStorage),
 * content-addressed by the sha256 of their canonical JSON (safe-stable-stringify: object keys sorted, no
 * whitespace), under `.datasets/<communityId>/<sha256>.json`. The queue holds only the reference
 * `{datasetId, sha256, rows}`; the worker reads the rows back and checks the hash before training.
 *
 * The object is the canonical JSON text itself, so its sha256 is the id: anyone can check an object against
 * its name. `.datasets` cannot clash with a community directory (community ids never start with a dot).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { canonicalJson as canonical } from '../training/data/hash.js';
import type { ObjectStorage } from './storage.js';

/** What a job (or a client) holds instead of the rows. */
export interface DatasetRef {
  /** `ds-<sha256 hex>` */
  datasetId: string;
  /** sha256 hex of the canonical JSON of the rows array */
  sha256: string;
  /** number of rows */
  rows: number;
}

/** A dataset failure with a stable code. */
export class DatasetError extends Error {
  constructor(
    readonly code: 'UNKNOWN_DATASET' | 'INVALID_DATASET' | 'CORRUPT_DATASET',
    message: string,
  ) {
    super(message);
    this.name = 'DatasetError';
  }
}

const COMMUNITY = /^[A-Za-z0-9_-]{1,64}$/;
export const DATASET_ID = /^ds-[0-9a-f]{64}$/;

/** Canonical JSON of a value: sorted keys, no whitespace (src/training/data/hash.ts, safe-stable-stringify). */
export function canonicalJson(v: unknown): string {
  return canonical(v);
}

/**
 * The canonical JSON of rows that are plain objects of strings with one key set (what the webhook's row schema
 * admits): one native `JSON.stringify(rows, sortedKeys)` after a check of every row, the same text as
 * {@link canonicalJson} (keys sorted by code unit, strings escaped as JSON.stringify escapes them) at a fraction
 * of the cost. null when a row is anything else or the rows' keys differ (the caller then uses canonicalJson:
 * a replacer key a row lacks would be looked up on its prototype, e.g. `__proto__`).
 */
export function canonicalStringRows(rows: readonly unknown[]): string | null {
  const first = rows[0];
  if (!isPlainRecord(first)) return null;
  const keys = Object.keys(first);
  const keySet = new Set(keys);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (!isPlainRecord(r)) return null;
    // for-in walks own keys here (a plain object's prototype, Object.prototype or null, has no enumerable
    // keys): no key array per row
    let n = 0;
    for (const k in r) {
      if (!keySet.has(k) || typeof r[k] !== 'string') return null;
      n++;
    }
    if (n !== keys.length) return null;
  }
  // with a replacer array JSON.stringify writes exactly these keys, in this order (every row has all of them);
  // measured faster than building the text from JSON.stringify of each value
  return JSON.stringify(rows, keys.sort());
}

function isPlainRecord(r: unknown): r is Record<string, unknown> {
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return false;
  const proto = Object.getPrototypeOf(r);
  return proto === Object.prototype || proto === null;
}

/** sha256 hex of a string or bytes. */
export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function sanitize(communityId: string, datasetId: string): string {
  if (!COMMUNITY.test(communityId))
    throw new DatasetError('INVALID_DATASET', `communityId ${JSON.stringify(String(communityId).slice(0, 80))} is not 1-64 of A-Z a-z 0-9 _ -`);
  if (!DATASET_ID.test(datasetId)) throw new DatasetError('UNKNOWN_DATASET', `datasetId ${JSON.stringify(String(datasetId).slice(0, 80))} is not ds-<64 hex>`);
  return `.datasets/${communityId}/${datasetId.slice(3)}.json`;
}

/** Rows already turned into canonical JSON and hashed (by prepareDataset, once per request). */
export interface PreparedDataset {
  readonly text: string;
  readonly ref: DatasetRef;
}

// prepared by this module: their text is known to hash to their ref (no second sha256 on write)
const prepared = new WeakSet<PreparedDataset>();

/**
 * Canonical JSON and sha256 of in-memory rows, once: the queue needs the hash for idempotency before it
 * stores the rows, and the store then writes the same text without hashing it again.
 * @throws DatasetError INVALID_DATASET for an empty or non-array value.
 */
export function prepareDataset(rows: unknown[]): PreparedDataset {
  if (!Array.isArray(rows) || rows.length === 0) throw new DatasetError('INVALID_DATASET', 'a dataset is a non-empty array of rows');
  const text = canonicalStringRows(rows) ?? canonicalJson(rows);
  const sha256 = sha256Hex(text);
  const p: PreparedDataset = Object.freeze({ text, ref: Object.freeze({ datasetId: `ds-${sha256}`, sha256, rows: rows.length }) });
  prepared.add(p);
  return p;
}

/** put/get/has/delete of content-addressed datasets per community, over an ObjectStorage. */
export class DatasetStore {
  constructor(readonly objects: ObjectStorage) {}

  /** The object key of a dataset. @throws DatasetError for an unsafe community or id. */
  key(communityId: string, datasetId: string): string {
    return sanitize(communityId, datasetId);
  }

  /**
   * Store rows already in memory (the webhook's inline `dataset`). Storing the same rows twice writes once.
   * @returns the reference the job keeps.
   * @throws DatasetError INVALID_DATASET for an empty or non-array value; StorageError from the backend.
   */
  async put(communityId: string, rows: unknown[]): Promise<DatasetRef & { bytes: number }> {
    const p = prepareDataset(rows);
    await this.putPrepared(communityId, p);
    return { ...p.ref, bytes: Buffer.byteLength(p.text) };
  }

  /**
   * Store rows made by prepareDataset (hashed there, not again): one write of the rows, to a temporary name
   * renamed into place (no fsync: the object is content-addressed and every reader checks its sha256, so a
   * write torn by a crash reads as CORRUPT_DATASET, never as other rows). The small `.meta.json` that
   * {@link info} reads is not written here: info makes it from the rows the first time it is asked (a
   * webhook's inline rows are rarely looked up by id, and a second file per trigger cost as much as the rows'
   * own). Storing the same rows twice writes once.
   * @throws DatasetError INVALID_DATASET for a value not made by prepareDataset; StorageError from the backend.
   */
  async putPrepared(communityId: string, p: PreparedDataset): Promise<void> {
    if (!prepared.has(p)) throw new DatasetError('INVALID_DATASET', 'putPrepared takes the value prepareDataset returned');
    await this.write(communityId, p.text, p.ref);
  }

  /**
   * Store rows whose canonical JSON the caller already made (the queue hashes it for idempotency first).
   * @throws DatasetError INVALID_DATASET when `text` does not hash to `ref.sha256`.
   */
  async putCanonical(communityId: string, text: string, ref: DatasetRef): Promise<void> {
    if (sha256Hex(text) !== ref.sha256 || ref.datasetId !== `ds-${ref.sha256}`)
      throw new DatasetError('INVALID_DATASET', 'the dataset text does not match its reference');
    await this.write(communityId, text, ref);
  }

  private async write(communityId: string, text: string, ref: DatasetRef): Promise<void> {
    const key = this.key(communityId, ref.datasetId);
    if (this.objects.putObjectsIfAbsent) {
      // nothing when the rows are already stored
      await this.objects.putObjectsIfAbsent([{ key, data: text }]);
      return;
    }
    if (!(await this.objects.hasObject(key))) await this.objects.putObject(key, text);
  }

  private metaJson(ref: DatasetRef, bytes: number, createdAt = new Date().toISOString()): string {
    return JSON.stringify({ ...ref, bytes, createdAt });
  }

  private metaKey(communityId: string, datasetId: string): string {
    return this.key(communityId, datasetId).replace(/\.json$/, '.meta.json');
  }

  private async putMeta(communityId: string, ref: DatasetRef, bytes: number): Promise<void> {
    await this.objects.putObject(this.metaKey(communityId, ref.datasetId), this.metaJson(ref, bytes));
  }

  /**
   * The reference and size of a stored dataset: from the small `.meta.json` beside the rows (an upload writes
   * it), or, when there is none yet (rows stored by {@link putPrepared}), from the rows themselves, read and
   * checked once (sha256, JSON array), after which the meta is written so the next call reads only it.
   * `createdAt` is when the rows were stored (the backend's object time; now when it has none).
   * @returns null when the community has no such dataset.
   * @throws DatasetError CORRUPT_DATASET when rows without a meta do not match their id; the backend's error
   *   when it cannot be read.
   */
  async info(communityId: string, datasetId: string): Promise<(DatasetRef & { bytes: number; createdAt: string }) | null> {
    const metaKey = this.metaKey(communityId, datasetId);
    const buf = await this.objects.getObject(metaKey);
    if (buf) {
      const m = JSON.parse(buf.toString('utf8')) as DatasetRef & { bytes: number; createdAt: string };
      return m.datasetId === datasetId && Number.isInteger(m.rows) ? m : null;
    }
    const key = this.key(communityId, datasetId);
    const stored = (await this.objects.statObject?.(key)) ?? null;
    if (this.objects.statObject && stored === null) return null;
    let rows: unknown[];
    try {
      rows = await this.get(communityId, datasetId);
    } catch (err) {
      if (err instanceof DatasetError && err.code === 'UNKNOWN_DATASET') return null;
      throw err;
    }
    const sha256 = datasetId.slice(3);
    const ref = { datasetId, sha256, rows: rows.length };
    const bytes = stored?.bytes ?? Buffer.byteLength(canonicalJson(rows));
    const json = this.metaJson(ref, bytes, stored?.storedAt);
    // a cache of what the rows say: when it cannot be written, the next call reads the rows again
    await this.objects.putObject(metaKey, json).catch(() => {});
    return JSON.parse(json) as DatasetRef & { bytes: number; createdAt: string };
  }

  /**
   * Store rows that arrive one by one (an upload parsed as it streams): the canonical JSON is written to a
   * temporary file while hashing, then stored; memory stays at one row.
   * @returns the reference. @throws DatasetError INVALID_DATASET when no row came.
   */
  async putStream(communityId: string, rows: AsyncIterable<unknown> | Iterable<unknown>): Promise<DatasetRef & { bytes: number }> {
    sanitize(communityId, `ds-${'0'.repeat(64)}`);
    const tmp = join(tmpdir(), `dpo-dataset-${process.pid}-${randomBytes(6).toString('hex')}.json`);
    const out = createWriteStream(tmp);
    const hash = createHash('sha256');
    let n = 0;
    let bytes = 0;
    const write = async (s: string): Promise<void> => {
      hash.update(s);
      bytes += Buffer.byteLength(s);
      if (!out.write(s)) await once(out, 'drain');
    };
    try {
      for await (const row of rows) {
        await write(n === 0 ? `[${canonicalJson(row)}` : `,${canonicalJson(row)}`);
        n++;
      }
      if (n === 0) throw new DatasetError('INVALID_DATASET', 'a dataset is a non-empty array of rows');
      await write(']');
      out.end();
      await once(out, 'finish');
      const sha256 = hash.digest('hex');
      const ref = { datasetId: `ds-${sha256}`, sha256, rows: n };
      const key = this.key(communityId, ref.datasetId);
      if (!(await this.objects.hasObject(key))) {
        await this.objects.putObjectFile(key, tmp);
        await this.putMeta(communityId, ref, bytes);
      }
      return { ...ref, bytes };
    } finally {
      out.destroy();
      await rm(tmp, { force: true }).catch(() => {});
    }
  }

  /**
   * The rows of a dataset, checked against its sha256 (and row count, when a reference is given).
   * @throws DatasetError UNKNOWN_DATASET (no such dataset for this community), CORRUPT_DATASET (the stored
   *   bytes do not hash to the id, or are not a JSON array of the expected length).
   */
  async get(communityId: string, ref: string | (Pick<DatasetRef, 'datasetId'> & Partial<DatasetRef>)): Promise<unknown[]> {
    const r = typeof ref === 'string' ? { datasetId: ref } : ref;
    const key = this.key(communityId, r.datasetId);
    const buf = await this.objects.getObject(key);
    if (!buf) throw new DatasetError('UNKNOWN_DATASET', `dataset ${r.datasetId} does not exist for community ${communityId}`);
    const sha = sha256Hex(buf);
    if (sha !== r.datasetId.slice(3) || (r.sha256 !== undefined && r.sha256 !== sha)) {
      throw new DatasetError('CORRUPT_DATASET', `dataset ${r.datasetId} does not match its sha256 (stored bytes changed)`);
    }
    let rows: unknown;
    try {
      rows = JSON.parse(buf.toString('utf8'));
    } catch {
      throw new DatasetError('CORRUPT_DATASET', `dataset ${r.datasetId} is not valid JSON`);
    }
    if (!Array.isArray(rows) || (r.rows !== undefined && rows.length !== r.rows)) {
      throw new DatasetError('CORRUPT_DATASET', `dataset ${r.datasetId} is not an array of ${r.rows ?? 'its'} rows`);
    }
    return rows;
  }

  /** Whether the community has this dataset. */
  async has(communityId: string, datasetId: string): Promise<boolean> {
    return this.objects.hasObject(this.key(communityId, datasetId));
  }

  /** Delete a community's dataset; false when it did not exist. */
  async delete(communityId: string, datasetId: string): Promise<boolean> {
    await this.objects.deleteObject(this.metaKey(communityId, datasetId));
    return this.objects.deleteObject(this.key(communityId, datasetId));
  }
}
