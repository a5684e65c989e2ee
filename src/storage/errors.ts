/**
 * Typed errors of the storage layer (src/storage/storage.ts contract). The worker turns them into a job
 * failure `{code, message}`; the local artifact is kept whenever one of these is thrown.
 */

/** Stable codes a storage backend throws. */
export type StorageErrorCode =
  /** A file could not be stored or its stored copy could not be verified (after every retry). */
  | 'STORAGE_UPLOAD_FAILED'
  /** The local artifact directory is missing files, or a file differs from manifest.json. */
  | 'INVALID_ARTIFACT'
  /** The backend's settings are wrong (bucket name, emulator host, credentials); fix the environment. */
  | 'INVALID_STORAGE_CONFIG'
  /** An object key (src/storage/storage.ts ObjectStorage) is not a safe relative name. */
  | 'INVALID_OBJECT_KEY'
  /** A signed URL could not be made (the credentials cannot sign: no service-account key, no signBlob). */
  | 'URL_SIGNING_FAILED';

/** A storage failure with a stable `code`; `file` names the artifact file (relative path) when one is at fault. */
export class StorageError extends Error {
  override readonly name = 'StorageError';

  constructor(
    readonly code: StorageErrorCode,
    message: string,
    readonly details: { file?: string; attempts?: number; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
  }

  /** The artifact file at fault, if any (path relative to the artifact directory). */
  get file(): string | undefined {
    return this.details.file;
  }
}
