import { StorageError } from './errors.js';

/**
 * The Storage contract: where a finished artifact directory goes. Implementations: local (a directory
 * tree) and firebase (a Firebase Storage / GCS bucket).
 */

/** One stored file, path relative to the artifact root. */
export interface StoredFile {
  path: string;
  size: number;
  sha256: string;
}

export interface UploadResult {
  /** Where the artifact now lives: `<communityId>/<jobId>` relative to STORAGE_DIR (local; no server path is
   *  ever shown to a client) or `gs://bucket/prefix` (firebase). */
  uri: string;
  files: StoredFile[];
  /** Optional signed HTTPS URLs by relative path (firebase). */
  signedUrls?: Record<string, string>;
}

export interface Storage {
  /** `local` | `firebase` */
  readonly kind: string;
  /**
   * Store every file of `localDir` (which holds a manifest.json) under `<communityId>/<jobId>/`.
   * @throws StorageError (code STORAGE_UPLOAD_FAILED) when a file cannot be stored or verified.
   */
  putArtifact(localDir: string, communityId: string, jobId: string): Promise<UploadResult>;
  /**
   * Check the stored artifact of `<communityId>/<jobId>/` against a manifest digest recorded elsewhere (Redis,
   * which is not trusted): its stored manifest.json must hash to `manifestSha256` (sha256 hex of the file's
   * bytes) and every file it lists must be stored with that size and sha256.
   * @returns what {@link putArtifact} returned for it (`uri` and the stored manifest's files), or null when
   *   there is no such artifact or it does not match.
   * @throws StorageError for unsafe ids; the backend's error when it cannot be read (network, permissions).
   */
  verifyArtifact(communityId: string, jobId: string, manifestSha256: string): Promise<UploadResult | null>;
}

/**
 * Named objects beside the artifacts (datasets: src/storage/datasets.ts). Keys are `/`-separated relative names
 * of `[A-Za-z0-9_.-]` segments (never `.` or `..`), e.g. `.datasets/acme/<sha256>.json`.
 */
export interface ObjectStorage {
  readonly kind: string;
  /** Store `data` as `key`, replacing an existing object atomically. @throws StorageError STORAGE_UPLOAD_FAILED, INVALID_OBJECT_KEY */
  putObject(key: string, data: Buffer | string): Promise<void>;
  /** Store the local file `localPath` as `key` (streamed). @throws StorageError STORAGE_UPLOAD_FAILED, INVALID_OBJECT_KEY */
  putObjectFile(key: string, localPath: string): Promise<void>;
  /** The bytes of `key`, or null when there is no such object. @throws StorageError INVALID_OBJECT_KEY */
  getObject(key: string): Promise<Buffer | null>;
  /** Whether `key` exists. */
  hasObject(key: string): Promise<boolean>;
  /** Delete `key`; false when it did not exist. */
  deleteObject(key: string): Promise<boolean>;
  /**
   * Optional: the size (bytes) and the time the object was stored (ISO 8601), without reading it; null when
   * there is no such object. @throws StorageError INVALID_OBJECT_KEY
   */
  statObject?(key: string): Promise<{ bytes: number; storedAt: string } | null>;
  /**
   * Optional: store `entries` only when the first entry's key does not exist yet, each becoming visible only
   * after the ones before it (a reader that sees entry i sees entries 0..i-1). Callers without it do
   * `hasObject` then `putObject` in order.
   * @returns false when the first key existed (nothing written).
   * @throws StorageError STORAGE_UPLOAD_FAILED, INVALID_OBJECT_KEY
   */
  putObjectsIfAbsent?(entries: Array<{ key: string; data: Buffer | string }>): Promise<boolean>;
}

const OBJECT_KEY = /^[A-Za-z0-9_.-]{1,128}(\/[A-Za-z0-9_.-]{1,128}){0,7}$/;

/**
 * Check an object key: relative, `/`-separated safe segments, no `.`/`..` segment.
 * @throws StorageError INVALID_OBJECT_KEY naming the key.
 */
export function checkObjectKey(key: string): string {
  if (typeof key !== 'string' || !OBJECT_KEY.test(key) || key.split('/').some((s) => s === '.' || s === '..')) {
    throw new StorageError('INVALID_OBJECT_KEY', `object key ${JSON.stringify(String(key).slice(0, 200))} is not a relative name of [A-Za-z0-9_.-] segments`);
  }
  return key;
}
