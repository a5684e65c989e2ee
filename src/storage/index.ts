/**
 * Storage factory: `STORAGE_BACKEND=local` (default) or `firebase` (src/storage/firebase.ts, configured
 * from the FIREBASE_* variables it documents).
 */
import type { Logger } from 'pino';
import type { ServiceEnv } from '../config/env.js';
import { LocalStorage } from './local.js';
import type { Storage } from './storage.js';

export type { Storage, StoredFile, UploadResult } from './storage.js';
export { LocalStorage } from './local.js';
export { StorageError } from './errors.js';

/**
 * Create the configured Storage.
 * @param env the validated service environment (STORAGE_BACKEND, STORAGE_DIR)
 * @param opts.rawEnv the variables firebase reads (default process.env); opts.logger for its logs
 * @throws StorageError INVALID_STORAGE_CONFIG when the firebase settings are wrong (names the variable).
 */
export async function createStorage(
  env: Pick<ServiceEnv, 'STORAGE_BACKEND' | 'STORAGE_DIR'>,
  opts: { rawEnv?: Record<string, string | undefined>; logger?: Logger } = {},
): Promise<Storage> {
  if (env.STORAGE_BACKEND === 'firebase') {
    // loaded lazily: firebase-admin is heavy and only this backend needs it
    const { FirebaseStorage, firebaseOptionsFromEnv } = await import('./firebase.js');
    return new FirebaseStorage({ ...firebaseOptionsFromEnv(opts.rawEnv ?? process.env), ...(opts.logger ? { logger: opts.logger } : {}) });
  }
  return new LocalStorage(env.STORAGE_DIR);
}
