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
  /** Where the artifact now lives: `file:///...` or `gs://bucket/prefix`. */
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
}
