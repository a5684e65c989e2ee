/**
 * Firebase Storage (a Google Cloud Storage bucket) backend of the Storage contract (src/storage/storage.ts).
 *
 * Every file listed in the artifact's manifest.json is uploaded to `gs://<bucket>/<prefix><communityId>/<jobId>/<path>`
 * through firebase-admin 13 (`getStorage(app).bucket(name)`) and @google-cloud/storage 7:
 * - multipart upload for small files, resumable upload at or above `resumableThresholdBytes`;
 * - a content type per file and the local MD5 + CRC32C sent with the object metadata (GCS rejects the write
 *   when the bytes it received do not hash to them);
 * - after each upload the object's metadata is read back and its size, `md5Hash` and `crc32c` compared with
 *   the local file (the library's own validation is turned off so that this check is the one that decides);
 * - each file is retried with exponential backoff (`maxAttempts`) on network errors, HTTP 408/429/5xx and
 *   hash mismatches; 400/401/403/404 fail at once with the fix in the message;
 * - manifest.json is uploaded last, so a bucket prefix without it is an incomplete artifact;
 * - the local directory is deleted only after every file is verified, and only with `deleteLocalAfterUpload`.
 *
 * Credentials are the standard ones: GOOGLE_APPLICATION_CREDENTIALS (a service-account JSON) or the
 * application default credentials of the machine. `FIREBASE_STORAGE_EMULATOR_HOST=host:port` (no scheme)
 * points every request at an emulator or fake and skips authentication (firebase-admin copies it into
 * STORAGE_EMULATOR_HOST, which @google-cloud/storage reads when the client is constructed).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { getApp, getApps, initializeApp, type App } from 'firebase-admin/app';
import { getStorage } from 'firebase-admin/storage';
import { CRC32C } from '@google-cloud/storage';
import { contentType as mimeContentType, lookup as mimeLookup } from 'mime-types';
import pRetry, { AbortError } from 'p-retry';
import { pino, type Logger } from 'pino';
import { MANIFEST_NAME, manifestIfDigest, readManifest, type Manifest } from './manifest.js';
import { StorageError } from './errors.js';
import { checkObjectKey, type ObjectStorage, type Storage, type StoredFile, type UploadResult } from './storage.js';

export { StorageError } from './errors.js';

/**
 * The bucket handle firebase-admin returns (its CommonJS copy of @google-cloud/storage's Bucket; the ESM
 * declaration of the same class is a distinct type to TypeScript).
 */
export type GcsBucket = ReturnType<ReturnType<typeof getStorage>['bucket']>;
type GcsFile = ReturnType<GcsBucket['file']>;

/** Settings of {@link FirebaseStorage}. Only `bucket` is required. */
export interface FirebaseStorageOptions {
  /** Bucket name (`my-project.appspot.com` / `my-project.firebasestorage.app`); a leading `gs://` is accepted. */
  bucket: string;
  /** Google Cloud project id (optional; the credentials usually carry it). */
  projectId?: string;
  /** Object-name prefix in front of `<communityId>/<jobId>/`, e.g. `models/` (default none). */
  prefix?: string;
  /** Upload attempts per file, the first included (default 5). */
  maxAttempts?: number;
  /** First backoff delay, ms; doubles per attempt with ±20 % jitter (default 500). */
  backoffBaseMs?: number;
  /** Largest backoff delay, ms (default 30000). */
  backoffMaxMs?: number;
  /** Files of at least this many bytes use a resumable upload (default 8 MiB). */
  resumableThresholdBytes?: number;
  /** Resumable chunk size in bytes, a multiple of 256 KiB; unset = one request per file (default unset). */
  chunkSizeBytes?: number;
  /** Files uploaded at the same time (default 4). */
  parallelUploads?: number;
  /** Per-request timeout of multipart uploads, ms (default 120000). */
  requestTimeoutMs?: number;
  /** Add V4 signed read URLs to the result (needs a signing identity: a service-account key or signBlob). */
  signedUrls?: boolean;
  /** Lifetime of signed URLs, seconds, at most 604800 (default 3600). */
  signedUrlTtlSeconds?: number;
  /** Delete the local artifact directory after every file is uploaded and verified (default false). */
  deleteLocalAfterUpload?: boolean;
  /** pino logger (default: a pino logger named storage.firebase at LOG_LEVEL or info). */
  logger?: Logger;
  /** Use this bucket handle instead of building one through firebase-admin (tests, custom clients). */
  bucketHandle?: GcsBucket;
  /** Use this firebase-admin app instead of the module's own named app. */
  app?: App;
}

/** Local hashes of one file, computed in one pass. `md5` and `crc32c` are base64, as GCS reports them. */
export interface LocalHashes {
  size: number;
  sha256: string;
  md5: string;
  crc32c: string;
}

const APP_NAME = 'dpo-service-storage';
const SEGMENT = /^[A-Za-z0-9_.-]{1,128}$/;
const BUCKET_NAME = /^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/;

/** Artifact extensions mime-db does not know (everything else is looked up with mime-types). */
const EXTRA_CONTENT_TYPES: Record<string, string> = { '.jsonl': 'application/x-ndjson' };

/**
 * Content type of an artifact file by extension (mime-types; text types with `charset=utf-8`;
 * `application/octet-stream` when unknown, e.g. `.safetensors`, tfevents).
 */
export function contentTypeFor(path: string): string {
  const type = EXTRA_CONTENT_TYPES[extname(path).toLowerCase()] ?? mimeLookup(path);
  if (!type) return 'application/octet-stream';
  return type.startsWith('text/') ? mimeContentType(type) || type : type;
}

/**
 * Size, sha256 (hex), MD5 and CRC32C (base64, big-endian, as in GCS object metadata) of a file, in one read.
 * @throws the fs error when the file cannot be read.
 */
export async function hashFile(path: string): Promise<LocalHashes> {
  const sha = createHash('sha256');
  const md5 = createHash('md5');
  const crc = new CRC32C();
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    const b = chunk as Buffer;
    sha.update(b);
    md5.update(b);
    crc.update(b);
    size += b.length;
  }
  return { size, sha256: sha.digest('hex'), md5: md5.digest('base64'), crc32c: crc.toString() };
}

/**
 * Delay before retry number `attempt` (1 = the first retry): `min(max, base * 2^(attempt-1))` scaled by a
 * jitter factor in [0.8, 1.2]. Units: ms.
 */
export function backoffDelayMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const raw = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(raw * (0.8 + 0.4 * random()));
}

/** HTTP status carried by an error of @google-cloud/storage / gaxios / teeny-request, if any. */
function httpStatusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; status?: unknown; response?: { status?: unknown } } | null;
  if (!e || typeof e !== 'object') return undefined;
  for (const v of [e.code, e.status, e.response?.status]) {
    if (typeof v === 'number' && v >= 100 && v < 600) return v;
  }
  return undefined;
}

function describe(err: unknown): string {
  const status = httpStatusOf(err);
  const msg = err instanceof Error ? err.message : String(err);
  return status !== undefined && !msg.includes(String(status)) ? `HTTP ${status}: ${msg}` : msg;
}

/** A verification failure of one stored object (retryable: the upload is repeated). */
class VerificationError extends Error {
  override readonly name = 'VerificationError';
}

/** The credentials could not be loaded or were refused by the token endpoint (google-auth-library messages). */
function isCredentialError(err: unknown): boolean {
  const msg = err instanceof Error ? err.message : String(err);
  return /default credentials|does not exist, or it is not a file|invalid_grant|invalid_client|unauthorized_client|private key/i.test(msg);
}

/** Errors that repeating the request cannot fix. */
function isPermanent(err: unknown): boolean {
  if (err instanceof StorageError) return true;
  if (isCredentialError(err)) return true;
  const status = httpStatusOf(err);
  return status === 400 || status === 401 || status === 403 || status === 404 || status === 412;
}

function hint(err: unknown, bucket: string): string {
  if (isCredentialError(err)) {
    return 'the Google credentials could not be loaded: set GOOGLE_APPLICATION_CREDENTIALS to a readable service-account JSON (in docker compose: ./secrets/service-account.json, readable by uid 1000), or leave it empty where application default credentials exist';
  }
  switch (httpStatusOf(err)) {
    case 401:
    case 403:
      return `the credentials may not write to bucket "${bucket}": give the service account of GOOGLE_APPLICATION_CREDENTIALS the Storage Object Admin role (roles/storage.objectAdmin) on it`;
    case 404:
      return `bucket "${bucket}" was not found: set FIREBASE_BUCKET to the name the Firebase console shows under Storage (without gs://)`;
    default:
      return 'check FIREBASE_BUCKET, the credentials (GOOGLE_APPLICATION_CREDENTIALS) and network access to storage.googleapis.com, or raise FIREBASE_UPLOAD_MAX_ATTEMPTS';
  }
}

/**
 * Firebase Storage implementation of {@link Storage}.
 *
 * Construction does no I/O. The first {@link putArtifact} initialises a firebase-admin app named
 * `dpo-service-storage` (application default credentials, `storageBucket` = the bucket) unless `app` or
 * `bucketHandle` was given.
 */
export class FirebaseStorage implements Storage, ObjectStorage {
  readonly kind = 'firebase';
  readonly bucketName: string;
  private readonly opts: Required<
    Pick<
      FirebaseStorageOptions,
      | 'prefix'
      | 'maxAttempts'
      | 'backoffBaseMs'
      | 'backoffMaxMs'
      | 'resumableThresholdBytes'
      | 'parallelUploads'
      | 'requestTimeoutMs'
      | 'signedUrls'
      | 'signedUrlTtlSeconds'
      | 'deleteLocalAfterUpload'
    >
  > &
    Pick<FirebaseStorageOptions, 'chunkSizeBytes' | 'projectId' | 'app'>;
  private readonly log: Logger;
  private bucketHandle: GcsBucket | undefined;

  /**
   * @throws StorageError INVALID_STORAGE_CONFIG naming the setting when a value is out of range
   *   (bucket name, prefix, attempts, sizes, TTL) or FIREBASE_STORAGE_EMULATOR_HOST contains a scheme.
   */
  constructor(options: FirebaseStorageOptions) {
    const bad = (setting: string, why: string): never => {
      throw new StorageError('INVALID_STORAGE_CONFIG', `${setting} ${why}`);
    };
    const bucket = (options.bucket ?? '')
      .trim()
      .replace(/^gs:\/\//, '')
      .replace(/\/+$/, '');
    if (!BUCKET_NAME.test(bucket) || bucket.includes('..')) {
      bad('FIREBASE_BUCKET', `"${options.bucket}" is not a bucket name: use e.g. my-project.appspot.com (the name the Firebase console shows under Storage)`);
    }
    const prefix = options.prefix ?? '';
    if (prefix !== '' && (!/^[A-Za-z0-9_./-]+\/$/.test(prefix) || prefix.startsWith('/') || prefix.split('/').includes('..'))) {
      bad('prefix', `"${prefix}" must be relative path segments ending in "/" (e.g. models/)`);
    }
    const int = (name: string, v: number | undefined, dflt: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
      const x = v ?? dflt;
      if (!Number.isInteger(x) || x < min || x > max) bad(name, `must be an integer in [${min}, ${max}], got ${String(v)}`);
      return x;
    };
    const chunk = options.chunkSizeBytes;
    if (chunk !== undefined && (!Number.isInteger(chunk) || chunk <= 0 || chunk % (256 * 1024) !== 0)) {
      bad('chunkSizeBytes', `must be a positive multiple of 262144 (256 KiB), got ${chunk}`);
    }
    const emu = process.env.FIREBASE_STORAGE_EMULATOR_HOST;
    if (emu && /^https?:\/\//.test(emu)) {
      bad('FIREBASE_STORAGE_EMULATOR_HOST', `"${emu}" must be host:port without http:// (e.g. 127.0.0.1:9199)`);
    }
    this.bucketName = bucket;
    this.opts = {
      prefix,
      maxAttempts: int('maxAttempts (FIREBASE_UPLOAD_MAX_ATTEMPTS)', options.maxAttempts, 5, 1, 100),
      backoffBaseMs: int('backoffBaseMs', options.backoffBaseMs, 500, 0),
      backoffMaxMs: int('backoffMaxMs', options.backoffMaxMs, 30_000, 0),
      resumableThresholdBytes: int('resumableThresholdBytes', options.resumableThresholdBytes, 8 * 1024 * 1024, 0),
      parallelUploads: int('parallelUploads', options.parallelUploads, 4, 1, 64),
      requestTimeoutMs: int('requestTimeoutMs', options.requestTimeoutMs, 120_000, 1),
      signedUrls: options.signedUrls ?? false,
      signedUrlTtlSeconds: int('signedUrlTtlSeconds (FIREBASE_SIGNED_URL_TTL_SECONDS)', options.signedUrlTtlSeconds, 3600, 1, 604_800),
      deleteLocalAfterUpload: options.deleteLocalAfterUpload ?? false,
      chunkSizeBytes: chunk,
      projectId: options.projectId,
      app: options.app,
    };
    this.log = options.logger ?? pino({ name: 'storage.firebase', level: process.env.LOG_LEVEL ?? 'info' });
    this.bucketHandle = options.bucketHandle;
  }

  /** `gs://` URI of the artifact root of one job. */
  artifactUri(communityId: string, jobId: string): string {
    return `gs://${this.bucketName}/${this.objectPrefix(communityId, jobId).replace(/\/$/, '')}`;
  }

  private objectPrefix(communityId: string, jobId: string): string {
    for (const [name, v] of [
      ['communityId', communityId],
      ['jobId', jobId],
    ] as const) {
      if (!SEGMENT.test(v) || v === '.' || v === '..') {
        throw new StorageError('STORAGE_UPLOAD_FAILED', `${name} "${v}" cannot be part of an object name: use letters, digits, _ . - only`);
      }
    }
    return `${this.opts.prefix}${communityId}/${jobId}/`;
  }

  private bucket(): GcsBucket {
    if (this.bucketHandle) return this.bucketHandle;
    try {
      const app =
        this.opts.app ??
        (getApps().some((a) => a.name === APP_NAME)
          ? getApp(APP_NAME)
          : initializeApp({ storageBucket: this.bucketName, ...(this.opts.projectId ? { projectId: this.opts.projectId } : {}) }, APP_NAME));
      this.bucketHandle = getStorage(app).bucket(this.bucketName);
    } catch (err) {
      throw new StorageError(
        'INVALID_STORAGE_CONFIG',
        `cannot create the Firebase Storage client for bucket "${this.bucketName}": ${describe(err)}; set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON or run where application default credentials exist`,
        { cause: err },
      );
    }
    return this.bucketHandle;
  }

  /**
   * Upload every file of `localDir`'s manifest.json, then manifest.json itself, under
   * `<prefix><communityId>/<jobId>/`, verifying each stored object's size, MD5 and CRC32C.
   *
   * @param localDir artifact directory holding manifest.json (src/storage/manifest.ts).
   * @returns `uri` = `gs://<bucket>/<prefix><communityId>/<jobId>`, `files` = the manifest's entries,
   *   `signedUrls` (path → HTTPS URL, manifest.json included) when enabled and signing works.
   * @throws StorageError INVALID_ARTIFACT when manifest.json is missing/unsafe or a local file differs
   *   from it; STORAGE_UPLOAD_FAILED naming the file when it cannot be uploaded and verified after
   *   `maxAttempts` (or at once on 400/401/403/404); INVALID_STORAGE_CONFIG when no client can be built.
   *   The local artifact is never deleted when anything throws.
   */
  async putArtifact(localDir: string, communityId: string, jobId: string): Promise<UploadResult> {
    const prefix = this.objectPrefix(communityId, jobId);
    let manifest: Manifest;
    try {
      manifest = await readManifest(localDir);
    } catch (err) {
      throw new StorageError('INVALID_ARTIFACT', `cannot read ${join(localDir, MANIFEST_NAME)}: ${describe(err)}; the worker writes it with writeManifest()`, {
        file: MANIFEST_NAME,
        cause: err,
      });
    }
    if (!Array.isArray(manifest?.files)) {
      throw new StorageError('INVALID_ARTIFACT', `${join(localDir, MANIFEST_NAME)} has no "files" array`, { file: MANIFEST_NAME });
    }
    for (const f of manifest.files) {
      const p = String(f?.path ?? '');
      if (p === '' || p.startsWith('/') || p.includes('\\') || p.split('/').some((s) => s === '' || s === '.' || s === '..')) {
        throw new StorageError('INVALID_ARTIFACT', `manifest.json lists an unsafe path "${p}": paths must be relative, '/'-separated, without . or ..`, {
          file: p,
        });
      }
    }
    const bucket = this.bucket();
    const started = Date.now();
    this.log.info({ bucket: this.bucketName, prefix, files: manifest.files.length + 1 }, 'uploading artifact to Firebase Storage');

    // Data files first (in parallel), the manifest last: its presence marks a complete artifact.
    await this.pool(manifest.files, (f) => this.uploadOne(bucket, localDir, f.path, prefix + f.path, f));
    await this.uploadOne(bucket, localDir, MANIFEST_NAME, prefix + MANIFEST_NAME);

    const result: UploadResult = { uri: this.artifactUri(communityId, jobId), files: manifest.files.map((f) => ({ ...f })) };
    if (this.opts.signedUrls) {
      const signed = await this.signAll(bucket, prefix, [...manifest.files.map((f) => f.path), MANIFEST_NAME]);
      if (signed) result.signedUrls = signed;
    }
    const bytes = manifest.files.reduce((s, f) => s + f.size, 0);
    this.log.info({ uri: result.uri, bytes, ms: Date.now() - started }, 'artifact uploaded and verified');
    if (this.opts.deleteLocalAfterUpload) {
      await rm(localDir, { recursive: true, force: true });
      this.log.info({ localDir }, 'local artifact deleted after verified upload');
    }
    return result;
  }

  /**
   * The stored artifact under `<prefix><communityId>/<jobId>/` when its manifest.json object hashes to
   * `manifestSha256` and every listed object is stored with the manifest's size and sha256 (the `sha256`
   * custom metadata putArtifact sets, read with getMetadata: nothing is downloaded but the manifest); else null.
   * A re-upload of the same artifact writes the same object names with the same bytes, so it is harmless.
   * @returns `uri` = the artifact's gs:// URI and the stored manifest's files (no signed URLs).
   * @throws StorageError STORAGE_UPLOAD_FAILED for unsafe ids; the client's error other than a 404.
   */
  async verifyArtifact(communityId: string, jobId: string, manifestSha256: string): Promise<UploadResult | null> {
    const prefix = this.objectPrefix(communityId, jobId);
    const bucket = this.bucket();
    let bytes: Buffer;
    try {
      [bytes] = await bucket.file(prefix + MANIFEST_NAME).download();
    } catch (err) {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    }
    const manifest = manifestIfDigest(bytes, manifestSha256);
    if (!manifest) return null;
    let ok = true;
    await this.pool(manifest.files, async (f) => {
      if (!ok) return;
      try {
        const [meta] = await bucket.file(prefix + f.path).getMetadata();
        const sha = (meta.metadata as Record<string, unknown> | undefined)?.sha256;
        if (Number(meta.size) !== f.size || sha !== f.sha256) ok = false;
      } catch (err) {
        if ((err as { code?: number }).code === 404) ok = false;
        else throw err;
      }
    });
    return ok ? { uri: this.artifactUri(communityId, jobId), files: manifest.files } : null;
  }

  /** Run `fn` over `items` with at most `parallelUploads` at once; after a failure start no more, then rethrow it. */
  /** Object `key` under the configured prefix (ObjectStorage, e.g. datasets). */
  private objectName(key: string): string {
    return `${this.opts.prefix}${checkObjectKey(key)}`;
  }

  async putObject(key: string, data: Buffer | string): Promise<void> {
    const name = this.objectName(key);
    try {
      await this.bucket()
        .file(name)
        .save(typeof data === 'string' ? Buffer.from(data) : data, { resumable: false, validation: 'md5', contentType: contentTypeFor(name) });
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store object ${key} in gs://${this.bucketName}: ${describe(err)}`, { cause: err });
    }
  }

  async putObjectFile(key: string, localPath: string): Promise<void> {
    const name = this.objectName(key);
    try {
      await this.bucket().upload(localPath, { destination: name, resumable: true, validation: 'md5', contentType: contentTypeFor(name) });
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store object ${key} in gs://${this.bucketName}: ${describe(err)}`, { cause: err });
    }
  }

  async getObject(key: string): Promise<Buffer | null> {
    const file = this.bucket().file(this.objectName(key));
    try {
      const [buf] = await file.download();
      return buf;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    }
  }

  async hasObject(key: string): Promise<boolean> {
    const [ok] = await this.bucket().file(this.objectName(key)).exists();
    return ok;
  }

  async statObject(key: string): Promise<{ bytes: number; storedAt: string } | null> {
    try {
      const [meta] = await this.bucket().file(this.objectName(key)).getMetadata();
      return { bytes: Number(meta.size ?? 0), storedAt: String(meta.timeCreated ?? new Date().toISOString()) };
    } catch (err) {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    }
  }

  async deleteObject(key: string): Promise<boolean> {
    const file = this.bucket().file(this.objectName(key));
    const [ok] = await file.exists();
    if (ok) await file.delete({ ignoreNotFound: true });
    return ok;
  }

  private async pool<T>(items: T[], fn: (x: T) => Promise<void>): Promise<void> {
    let next = 0;
    let failure: { err: unknown } | undefined;
    const lane = async (): Promise<void> => {
      while (!failure && next < items.length) {
        const item = items[next++];
        try {
          await fn(item);
        } catch (err) {
          failure ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.parallelUploads, items.length) }, lane));
    if (failure) throw failure.err;
  }

  /** Upload one file with retries and verify it; throws StorageError naming `relPath`. */
  private async uploadOne(bucket: GcsBucket, localDir: string, relPath: string, objectName: string, expected?: StoredFile): Promise<void> {
    const localPath = join(localDir, relPath);
    let local: LocalHashes;
    try {
      local = await hashFile(localPath);
    } catch (err) {
      throw new StorageError('INVALID_ARTIFACT', `artifact file "${relPath}" cannot be read at ${localPath}: ${describe(err)}`, {
        file: relPath,
        cause: err,
      });
    }
    if (expected && (local.size !== expected.size || local.sha256 !== expected.sha256)) {
      throw new StorageError(
        'INVALID_ARTIFACT',
        `artifact file "${relPath}" differs from manifest.json (size ${local.size} vs ${expected.size}, sha256 ${local.sha256.slice(0, 12)}… vs ${expected.sha256.slice(0, 12)}…); the artifact changed after writeManifest()`,
        { file: relPath },
      );
    }
    const uri = `gs://${this.bucketName}/${objectName}`;
    const file = bucket.file(objectName);
    let attempts = 0;
    let lastErr: unknown;
    try {
      // p-retry runs the attempts; the delay between them is backoffDelayMs (awaited in onFailedAttempt,
      // p-retry's own delay set to 0) so that the jitter stays the documented ±20 %
      await pRetry(
        async (attempt) => {
          attempts = attempt;
          try {
            await this.sendOnce(bucket, localPath, objectName, local);
            await this.verify(file, local);
          } catch (err) {
            if (err instanceof VerificationError) await file.delete({ ignoreNotFound: true }).catch(() => undefined);
            if (isPermanent(err) || !(err instanceof Error)) throw new AbortError(err instanceof Error ? err : new Error(String(err)));
            throw err;
          }
          this.log.debug({ uri, bytes: local.size, attempt }, 'file uploaded and verified');
        },
        {
          retries: this.opts.maxAttempts - 1,
          minTimeout: 0,
          maxTimeout: 0,
          onFailedAttempt: async (err) => {
            if (err.retriesLeft === 0) return;
            const delay = backoffDelayMs(err.attemptNumber, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
            this.log.warn(
              { uri, attempt: err.attemptNumber, maxAttempts: this.opts.maxAttempts, delayMs: delay, err: describe(err) },
              'upload attempt failed; retrying',
            );
            await sleep(delay);
          },
        },
      );
      return;
    } catch (err) {
      lastErr = err;
    }
    if (lastErr instanceof StorageError) throw lastErr;
    const how = isPermanent(lastErr) ? 'without retry (the error is permanent)' : `after ${attempts} attempt(s)`;
    throw new StorageError(
      'STORAGE_UPLOAD_FAILED',
      `upload of artifact file "${relPath}" to ${uri} failed ${how}: ${describe(lastErr)}. The local artifact is kept at ${localDir}; ${hint(lastErr, this.bucketName)}`,
      { file: relPath, attempts, cause: lastErr },
    );
  }

  /** One upload request (multipart) or session (resumable) of a whole file. */
  private async sendOnce(bucket: GcsBucket, localPath: string, objectName: string, local: LocalHashes): Promise<void> {
    const resumable = local.size >= this.opts.resumableThresholdBytes;
    const contentType = contentTypeFor(objectName);
    await bucket.upload(localPath, {
      destination: objectName,
      resumable,
      ...(resumable && this.opts.chunkSizeBytes ? { chunkSize: this.opts.chunkSizeBytes } : {}),
      ...(resumable ? {} : { timeout: this.opts.requestTimeoutMs }),
      // Our verify() decides; the library's stream validator would race it with its own delete.
      validation: false,
      contentType,
      metadata: {
        contentType,
        md5Hash: local.md5,
        crc32c: local.crc32c,
        metadata: { sha256: local.sha256 },
      },
    });
  }

  /** Read the stored object's metadata back and compare size and every hash the server reports. */
  private async verify(file: GcsFile, local: LocalHashes): Promise<void> {
    const [meta] = await file.getMetadata();
    const problems: string[] = [];
    if (meta.size !== undefined && Number(meta.size) !== local.size) problems.push(`size ${meta.size} != local ${local.size}`);
    if (!meta.md5Hash && !meta.crc32c) problems.push('the server reported neither md5Hash nor crc32c');
    if (meta.md5Hash && meta.md5Hash !== local.md5) problems.push(`MD5 mismatch: stored ${meta.md5Hash}, local ${local.md5}`);
    if (meta.crc32c && meta.crc32c !== local.crc32c) problems.push(`CRC32C mismatch: stored ${meta.crc32c}, local ${local.crc32c}`);
    if (problems.length > 0) throw new VerificationError(`stored object failed verification: ${problems.join('; ')}`);
  }

  /**
   * A fresh V4 signed read URL of one stored artifact file (object `<prefix><communityId>/<jobId>/<path>`),
   * valid for `signedUrlTtlSeconds` (FIREBASE_SIGNED_URL_TTL_SECONDS, default 3600 s); made locally from the
   * service-account key (or the signBlob API), whether or not FIREBASE_SIGNED_URLS adds URLs at upload.
   * @throws StorageError INVALID_OBJECT_KEY for an unsafe id or path; URL_SIGNING_FAILED when the credentials cannot sign
   */
  async signedArtifactUrl(communityId: string, jobId: string, path: string): Promise<string> {
    const name = this.objectName(`${communityId}/${jobId}/${path}`);
    try {
      const [url] = await this.bucket()
        .file(name)
        .getSignedUrl({ version: 'v4', action: 'read', ...this.signingWindow() });
      return url;
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError(
        'URL_SIGNING_FAILED',
        `cannot sign a URL for ${path}: ${describe(err)}; use a service-account key in GOOGLE_APPLICATION_CREDENTIALS or grant iam.serviceAccounts.signBlob`,
        { file: path, cause: err },
      );
    }
  }

  /**
   * The validity window of V4 signed URLs: `accessibleAt` is now, truncated to the whole second, and `expires`
   * exactly `signedUrlTtlSeconds` later. Passing both fixes `X-Goog-Expires` at the TTL; with `expires` alone the
   * library measures it from its own clock at signing, one second short whenever a second boundary passes between.
   */
  private signingWindow(): { accessibleAt: Date; expires: number } {
    const start = Math.floor(Date.now() / 1000) * 1000;
    return { accessibleAt: new Date(start), expires: start + this.opts.signedUrlTtlSeconds * 1000 };
  }

  /** V4 signed read URLs; on a signing failure logs why and returns undefined (the upload itself succeeded). */
  private async signAll(bucket: GcsBucket, prefix: string, paths: string[]): Promise<Record<string, string> | undefined> {
    const window = this.signingWindow();
    const out: Record<string, string> = {};
    try {
      for (const p of paths) {
        const [url] = await bucket.file(prefix + p).getSignedUrl({ version: 'v4', action: 'read', ...window });
        out[p] = url;
      }
      return out;
    } catch (err) {
      this.log.warn(
        { err: describe(err) },
        'signed URLs could not be created (the upload is complete): use a service-account key in GOOGLE_APPLICATION_CREDENTIALS or grant iam.serviceAccounts.signBlob, or set FIREBASE_SIGNED_URLS=false',
      );
      return undefined;
    }
  }
}

/** Environment variables read by {@link firebaseOptionsFromEnv}. */
export const FIREBASE_ENV_VARS = [
  'FIREBASE_BUCKET',
  'FIREBASE_PROJECT_ID',
  'FIREBASE_PREFIX',
  'FIREBASE_UPLOAD_MAX_ATTEMPTS',
  'FIREBASE_UPLOAD_BACKOFF_MS',
  'FIREBASE_RESUMABLE_THRESHOLD_BYTES',
  'FIREBASE_SIGNED_URLS',
  'FIREBASE_SIGNED_URL_TTL_SECONDS',
  'FIREBASE_DELETE_LOCAL',
] as const;

/**
 * Build {@link FirebaseStorageOptions} from environment variables (names in {@link FIREBASE_ENV_VARS};
 * empty = default). Booleans accept true/false/1/0.
 * @throws StorageError INVALID_STORAGE_CONFIG naming the variable when it is missing (FIREBASE_BUCKET) or malformed.
 */
export function firebaseOptionsFromEnv(env: Record<string, string | undefined> = process.env): FirebaseStorageOptions {
  const get = (k: string): string | undefined => {
    const v = env[k]?.trim();
    return v === undefined || v === '' ? undefined : v;
  };
  const num = (k: string): number | undefined => {
    const v = get(k);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new StorageError('INVALID_STORAGE_CONFIG', `${k} must be a non-negative integer, got "${v}"`);
    return Number(v);
  };
  const bool = (k: string): boolean | undefined => {
    const v = get(k)?.toLowerCase();
    if (v === undefined) return undefined;
    if (v === 'true' || v === '1') return true;
    if (v === 'false' || v === '0') return false;
    throw new StorageError('INVALID_STORAGE_CONFIG', `${k} must be true or false, got "${v}"`);
  };
  const bucket = get('FIREBASE_BUCKET');
  if (!bucket) throw new StorageError('INVALID_STORAGE_CONFIG', 'FIREBASE_BUCKET must be set when STORAGE_BACKEND=firebase (e.g. my-project.appspot.com)');
  return {
    bucket,
    projectId: get('FIREBASE_PROJECT_ID'),
    prefix: get('FIREBASE_PREFIX'),
    maxAttempts: num('FIREBASE_UPLOAD_MAX_ATTEMPTS'),
    backoffBaseMs: num('FIREBASE_UPLOAD_BACKOFF_MS'),
    resumableThresholdBytes: num('FIREBASE_RESUMABLE_THRESHOLD_BYTES'),
    signedUrls: bool('FIREBASE_SIGNED_URLS'),
    signedUrlTtlSeconds: num('FIREBASE_SIGNED_URL_TTL_SECONDS'),
    deleteLocalAfterUpload: bool('FIREBASE_DELETE_LOCAL'),
  };
}
