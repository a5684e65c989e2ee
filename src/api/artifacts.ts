/**
 * Read access to stored artifacts for the API's file routes: a local artifact tree is read straight from
 * `<STORAGE_DIR>/<communityId>/<jobId>/`; a remote one (Firebase Storage) is never proxied — the API
 * answers a redirect to a fresh signed URL instead, and reads small text files (metrics.jsonl) through
 * the backend.
 *
 * Paths are checked strictly: a requested path must be one of the artifact manifest's file paths (so
 * nothing outside the artifact can be named) and match SAFE_ARTIFACT_PATH; the resolved file must stay
 * under the artifact directory.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';

/** `a/b.c` of [A-Za-z0-9_.-] segments, no `.`/`..` segment, at most 8 deep. */
export const SAFE_ARTIFACT_PATH = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(\/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,7}$/;

export function isSafeArtifactPath(p: string): boolean {
  return SAFE_ARTIFACT_PATH.test(p) && !p.split('/').some((s) => s === '.' || s === '..');
}

export interface ArtifactAccess {
  readonly kind: 'local' | 'remote';
  /** Open a byte range [start, end] (inclusive) of a stored file; null when it is missing. Local only. */
  open?(communityId: string, jobId: string, path: string, range?: { start: number; end: number }): Promise<{ size: number; stream: Readable } | null>;
  /** Size of a stored file, null when missing. Local only. */
  size?(communityId: string, jobId: string, path: string): Promise<number | null>;
  /** A fresh signed HTTPS URL for the file. Remote only. */
  signedUrl?(communityId: string, jobId: string, path: string): Promise<string>;
  /** The file as UTF-8 text, null when missing (small files: metrics.jsonl, samples.jsonl). */
  readText(communityId: string, jobId: string, path: string): Promise<string | null>;
}

const SEGMENT = /^[A-Za-z0-9_-]{1,128}$/;

/** What {@link RemoteArtifacts} needs of a remote backend (src/storage/firebase.ts FirebaseStorage). */
export interface SignedArtifactStore {
  /** A fresh signed HTTPS read URL of `<communityId>/<jobId>/<path>`. @throws StorageError */
  signedArtifactUrl(communityId: string, jobId: string, path: string): Promise<string>;
  /** The bytes of an object key (`<communityId>/<jobId>/<path>`), null when missing. */
  getObject(key: string): Promise<Buffer | null>;
}

/**
 * Artifacts in a remote bucket (STORAGE_BACKEND=firebase): files are never proxied — {@link signedUrl} gives a
 * fresh signed URL per request (the route answers 302 to it); small text files are read through the backend.
 */
export class RemoteArtifacts implements ArtifactAccess {
  readonly kind = 'remote' as const;
  constructor(private readonly store: SignedArtifactStore) {}

  /** @throws Error for an unsafe id or path; StorageError URL_SIGNING_FAILED when the credentials cannot sign */
  async signedUrl(communityId: string, jobId: string, path: string): Promise<string> {
    if (!SEGMENT.test(communityId) || !SEGMENT.test(jobId) || !isSafeArtifactPath(path)) throw new Error(`unsafe artifact path ${JSON.stringify(path)}`);
    return this.store.signedArtifactUrl(communityId, jobId, path);
  }

  async readText(communityId: string, jobId: string, path: string): Promise<string | null> {
    if (!SEGMENT.test(communityId) || !SEGMENT.test(jobId) || !isSafeArtifactPath(path)) return null;
    const buf = await this.store.getObject(`${communityId}/${jobId}/${path}`);
    return buf ? buf.toString('utf8') : null;
  }
}

/**
 * The artifact access of a storage backend: {@link RemoteArtifacts} for one that signs URLs (Firebase), else
 * the local tree under `storageDir`.
 */
export function artifactAccessFor(backend: unknown, storageDir: string): ArtifactAccess {
  const b = backend as Partial<SignedArtifactStore> | null;
  if (b && typeof b.signedArtifactUrl === 'function' && typeof b.getObject === 'function') return new RemoteArtifacts(b as SignedArtifactStore);
  return new LocalArtifacts(storageDir);
}

/** Local artifact tree under `root` (STORAGE_DIR). */
export class LocalArtifacts implements ArtifactAccess {
  readonly kind = 'local' as const;
  private readonly root: string;
  constructor(root: string) {
    this.root = resolve(root);
  }

  /**
   * Absolute path of `path` in the artifact, or null when an id or the path is unsafe.
   */
  file(communityId: string, jobId: string, path: string): string | null {
    if (!SEGMENT.test(communityId) || !SEGMENT.test(jobId) || !isSafeArtifactPath(path)) return null;
    const dir = join(this.root, communityId, jobId);
    const full = resolve(dir, path);
    return full.startsWith(dir + sep) ? full : null;
  }

  async size(communityId: string, jobId: string, path: string): Promise<number | null> {
    const f = this.file(communityId, jobId, path);
    if (!f) return null;
    try {
      const st = await stat(f);
      return st.isFile() ? st.size : null;
    } catch {
      return null;
    }
  }

  async open(communityId: string, jobId: string, path: string, range?: { start: number; end: number }): Promise<{ size: number; stream: Readable } | null> {
    const size = await this.size(communityId, jobId, path);
    if (size === null) return null;
    const f = this.file(communityId, jobId, path)!;
    return { size, stream: createReadStream(f, range ? { start: range.start, end: range.end } : {}) };
  }

  async readText(communityId: string, jobId: string, path: string): Promise<string | null> {
    const f = this.file(communityId, jobId, path);
    if (!f) return null;
    try {
      return await readFile(f, 'utf8');
    } catch {
      return null;
    }
  }
}

/**
 * Parse a `Range: bytes=...` header for a file of `size` bytes (one range; RFC 9110 §14.1.2).
 * @returns the inclusive range, 'unsatisfiable' (answer 416), or null (no or unsupported header: send all).
 */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'unsatisfiable';
  return { start, end };
}
