/**
 * Local storage: the artifact tree `<STORAGE_DIR>/<communityId>/<jobId>/` on this machine's disk, and named
 * objects (datasets) under `<STORAGE_DIR>/<key>`. Files are copied to a temporary sibling, verified, then
 * renamed into place, so a reader never sees a half-written artifact or object. Every path is built from
 * checked ids and checked to stay under the root.
 */
import { cp, mkdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve, sep } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MANIFEST_NAME, type Manifest, manifestIfDigest, readManifest, verifyManifest } from './manifest.js';
import { StorageError } from './errors.js';
import { checkObjectKey, type ObjectStorage, type Storage, type UploadResult } from './storage.js';

const SAFE_SEGMENT = /^[A-Za-z0-9_-]{1,128}$/;

/** putObjectsIfAbsent writes entries of at most this many bytes in all with synchronous calls (256 KiB). */
export const SYNC_WRITE_MAX_BYTES = 256 * 1024;

/**
 * `join(root, ...parts)` when the result stays inside `root` (symbolic `..` and absolute parts refused).
 * @throws StorageError `code` when it would not.
 */
export function insideRoot(root: string, parts: string[], code: 'INVALID_ARTIFACT' | 'INVALID_OBJECT_KEY' = 'INVALID_ARTIFACT'): string {
  const base = resolve(root);
  const p = resolve(base, ...parts);
  const rel = relative(base, p);
  if (rel === '' || rel.startsWith('..') || rel.split(sep).includes('..') || resolve(base, rel) !== p) {
    throw new StorageError(code, `path ${JSON.stringify(parts.join('/'))} leaves the storage root`);
  }
  return p;
}

// temporary names: this process's random token and a counter (unique across processes and hosts sharing
// the directory, without a randomBytes call per write)
const TMP_TOKEN = randomBytes(6).toString('hex');
let tmpCounter = 0;

/** A temporary name beside `target`, unique to this call. */
function tmpName(target: string): string {
  return `${target}.tmp-${TMP_TOKEN}-${(tmpCounter++).toString(36)}`;
}

/** Stores artifacts and objects under a root directory. */
export class LocalStorage implements Storage, ObjectStorage {
  readonly kind = 'local';
  readonly root: string;
  // directories putObject made (or found) in this process: one mkdir per directory, not per object
  private readonly madeDirs = new Set<string>();

  /** @param root the STORAGE_DIR (created on first use). */
  constructor(root: string) {
    this.root = resolve(root);
  }

  /** Absolute directory of an artifact. @throws StorageError INVALID_ARTIFACT for unsafe ids. */
  artifactDir(communityId: string, jobId: string): string {
    for (const [name, v] of [
      ['communityId', communityId],
      ['jobId', jobId],
    ] as const) {
      if (typeof v !== 'string' || !SAFE_SEGMENT.test(v)) {
        throw new StorageError('INVALID_ARTIFACT', `${name} "${String(v).slice(0, 200)}" is not a safe path segment ([A-Za-z0-9_-]{1,128})`);
      }
    }
    return insideRoot(this.root, [communityId, jobId]);
  }

  /**
   * Copy `localDir` (which holds manifest.json) to `<root>/<communityId>/<jobId>/` and verify every file's
   * size and sha256 there. When `localDir` already is that directory, it is only verified. An existing
   * artifact at the target that already matches the manifest is kept as it is (a second upload of the same
   * job, e.g. after a lost lock, is a no-op); one that differs is replaced.
   * @returns `uri` = `<communityId>/<jobId>` (relative to STORAGE_DIR) and the manifest's files.
   * @throws StorageError INVALID_ARTIFACT without a manifest, STORAGE_UPLOAD_FAILED on copy or
   *   verification failure (the message lists the bad files; paths relative to the roots).
   */
  async putArtifact(localDir: string, communityId: string, jobId: string): Promise<UploadResult> {
    const target = this.artifactDir(communityId, jobId);
    const uri = `${communityId}/${jobId}`;
    const source = resolve(localDir);
    let manifest: Manifest;
    try {
      manifest = await readManifest(source);
    } catch {
      throw new StorageError('INVALID_ARTIFACT', `the trained artifact of ${uri} has no readable manifest.json`);
    }
    if (source !== target) {
      if ((await exists(target)) && (await verifyManifest(target, manifest)).length === 0) {
        return { uri, files: manifest.files };
      }
      const tmp = tmpName(target);
      try {
        await mkdir(dirname(target), { recursive: true });
        await cp(source, tmp, { recursive: true, errorOnExist: false, force: true });
        const bad = await verifyManifest(tmp, manifest);
        if (bad.length > 0) throw new Error(`files differ after copy: ${bad.join(', ')}`);
        if (await exists(target)) await rm(target, { recursive: true, force: true });
        await rename(tmp, target);
      } catch (err) {
        await rm(tmp, { recursive: true, force: true }).catch(() => {});
        const msg = (err as Error).message.split(this.root).join('STORAGE_DIR');
        throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store artifact ${uri}: ${msg}`);
      }
    } else {
      const bad = await verifyManifest(target, manifest);
      if (bad.length > 0) {
        throw new StorageError('STORAGE_UPLOAD_FAILED', `artifact ${uri} does not match its manifest: ${bad.join(', ')}`);
      }
    }
    return { uri, files: manifest.files };
  }

  /**
   * The stored artifact `<root>/<communityId>/<jobId>/` when its manifest.json hashes to `manifestSha256` and
   * every listed file verifies (size and sha256 read from disk); else null.
   * @throws StorageError INVALID_ARTIFACT for unsafe ids.
   */
  async verifyArtifact(communityId: string, jobId: string, manifestSha256: string): Promise<UploadResult | null> {
    const target = this.artifactDir(communityId, jobId);
    let bytes: Buffer;
    try {
      bytes = await readFile(insideRoot(target, [MANIFEST_NAME]));
    } catch {
      return null;
    }
    const manifest = manifestIfDigest(bytes, manifestSha256);
    if (!manifest) return null;
    if ((await verifyManifest(target, manifest)).length > 0) return null;
    return { uri: `${communityId}/${jobId}`, files: manifest.files };
  }

  /** Absolute path of object `key`. @throws StorageError INVALID_OBJECT_KEY */
  objectPath(key: string): string {
    return insideRoot(this.root, checkObjectKey(key).split('/'), 'INVALID_OBJECT_KEY');
  }

  async putObject(key: string, data: Buffer | string): Promise<void> {
    const target = this.objectPath(key);
    const tmp = tmpName(target);
    const dir = dirname(target);
    try {
      if (!this.madeDirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        this.madeDirs.add(dir);
      }
      try {
        await writeFile(tmp, data);
      } catch (err) {
        // the directory was removed since: make it again, once
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        await mkdir(dir, { recursive: true });
        await writeFile(tmp, data);
      }
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store object ${key}: ${(err as NodeJS.ErrnoException).code ?? 'write failed'}`);
    }
  }

  /**
   * Store `entries` unless the first key exists. Each entry is written to a temporary sibling, then the
   * temporary files are renamed into place in order (so entry i is visible only after 0..i-1).
   *
   * Two paths with one contract: entries of at most {@link SYNC_WRITE_MAX_BYTES} in all (a webhook's inline
   * dataset, typically tens of KB) are written with synchronous calls; larger ones with the promise API, the
   * existence check and the temporary writes at once. A small write blocks the event loop for about as long as
   * the thread-pool hand-off and the promise/FileHandle machinery of the asynchronous calls cost on their own
   * (measured on the trigger path: about a quarter less CPU per request), and a large one does not block it.
   * @returns false (and nothing stored, no temporary file left) when the first key existed.
   * @throws StorageError STORAGE_UPLOAD_FAILED (the message names the first key and the errno code),
   *   INVALID_OBJECT_KEY
   */
  async putObjectsIfAbsent(entries: Array<{ key: string; data: Buffer | string }>): Promise<boolean> {
    const targets = entries.map((e) => this.objectPath(e.key));
    if (targets.length === 0) return false;
    const tmps = targets.map(tmpName);
    const fail = (err: unknown): StorageError =>
      new StorageError('STORAGE_UPLOAD_FAILED', `could not store object ${entries[0]!.key}: ${(err as NodeJS.ErrnoException).code ?? 'write failed'}`);
    let bytes = 0;
    for (const e of entries) bytes += typeof e.data === 'string' ? Buffer.byteLength(e.data) : e.data.byteLength;
    if (bytes <= SYNC_WRITE_MAX_BYTES) {
      try {
        return this.putObjectsIfAbsentSync(targets, tmps, entries);
      } catch (err) {
        for (const t of tmps) {
          try {
            rmSync(t, { force: true });
          } catch {
            // its directory is gone or is not one: there is no temporary file to remove
          }
        }
        throw fail(err);
      }
    }
    try {
      for (const dir of new Set(targets.map((t) => dirname(t)))) {
        if (!this.madeDirs.has(dir)) {
          await mkdir(dir, { recursive: true });
          this.madeDirs.add(dir);
        }
      }
      const write = async (tmp: string, data: Buffer | string): Promise<void> => {
        try {
          await writeFile(tmp, data);
        } catch (err) {
          // the directory was removed since: make it again, once
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          await mkdir(dirname(tmp), { recursive: true });
          await writeFile(tmp, data);
        }
      };
      const [present] = await Promise.all([exists(targets[0]!), ...entries.map((e, i) => write(tmps[i]!, e.data))]);
      if (present) {
        await Promise.all(tmps.map((t) => rm(t, { force: true })));
        return false;
      }
      for (let i = 0; i < targets.length; i++) await rename(tmps[i]!, targets[i]!);
      return true;
    } catch (err) {
      await Promise.all(tmps.map((t) => rm(t, { force: true }).catch(() => {})));
      throw fail(err);
    }
  }

  /** The synchronous path of {@link putObjectsIfAbsent}: nothing is written when the first target exists. */
  private putObjectsIfAbsentSync(targets: string[], tmps: string[], entries: Array<{ key: string; data: Buffer | string }>): boolean {
    for (const dir of new Set(targets.map((t) => dirname(t)))) {
      if (!this.madeDirs.has(dir)) {
        mkdirSync(dir, { recursive: true });
        this.madeDirs.add(dir);
      }
    }
    if (existsSync(targets[0]!)) return false;
    for (let i = 0; i < entries.length; i++) {
      try {
        writeFileSync(tmps[i]!, entries[i]!.data);
      } catch (err) {
        // the directory was removed since: make it again, once
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        mkdirSync(dirname(tmps[i]!), { recursive: true });
        writeFileSync(tmps[i]!, entries[i]!.data);
      }
    }
    for (let i = 0; i < targets.length; i++) renameSync(tmps[i]!, targets[i]!);
    return true;
  }

  async putObjectFile(key: string, localPath: string): Promise<void> {
    const target = this.objectPath(key);
    const tmp = tmpName(target);
    try {
      await mkdir(dirname(target), { recursive: true });
      await cp(localPath, tmp, { force: true });
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store object ${key}: ${(err as NodeJS.ErrnoException).code ?? 'copy failed'}`);
    }
  }

  async getObject(key: string): Promise<Buffer | null> {
    try {
      return await readFile(this.objectPath(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async hasObject(key: string): Promise<boolean> {
    return exists(this.objectPath(key));
  }

  async statObject(key: string): Promise<{ bytes: number; storedAt: string } | null> {
    try {
      const st = await stat(this.objectPath(key));
      return { bytes: st.size, storedAt: st.mtime.toISOString() };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async deleteObject(key: string): Promise<boolean> {
    try {
      await unlink(this.objectPath(key));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
