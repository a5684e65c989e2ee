/**
 * Storage factory: `STORAGE_BACKEND=local` (default) or `firebase` (src/storage/firebase.ts, configured
 * from the FIREBASE_* variables it documents). Artifacts and datasets (src/storage/datasets.ts) use the
 * same backend.
 */
import type { Logger } from 'pino';
import type { ServiceEnv } from '../config/env.js';
import { DatasetStore } from './datasets.js';
import { LocalStorage } from './local.js';
import type { ObjectStorage, Storage } from './storage.js';

export type { ObjectStorage, Storage, StoredFile, UploadResult } from './storage.js';
export { LocalStorage } from './local.js';
export { StorageError } from './errors.js';
export { DatasetStore, DatasetError, type DatasetRef } from './datasets.js';

/**
 * Create the configured Storage.
 * @param env the validated service environment (STORAGE_BACKEND, STORAGE_DIR)
 * @param opts.rawEnv the variables firebase reads (default process.env); opts.logger for its logs
 * @throws StorageError INVALID_STORAGE_CONFIG when the firebase settings are wrong (names the variable).
 */
export async function createStorage(
  env: Pick<ServiceEnv, 'STORAGE_BACKEND' | 'STORAGE_DIR'>,
  opts: { rawEnv?: Record<string, string | undefined>; logger?: Logger } = {},
): Promise<Storage & ObjectStorage> {
  if (env.STORAGE_BACKEND === 'firebase') {
    // loaded lazily: firebase-admin is heavy and only this backend needs it
    const { FirebaseStorage, firebaseOptionsFromEnv } = await import('./firebase.js');
    return new FirebaseStorage({ ...firebaseOptionsFromEnv(opts.rawEnv ?? process.env), ...(opts.logger ? { logger: opts.logger } : {}) });
  }
  return new LocalStorage(env.STORAGE_DIR);
}

/**
 * The dataset store of the configured backend.
 * @throws StorageError INVALID_STORAGE_CONFIG like createStorage.
 */
export async function createDatasetStore(
  env: Pick<ServiceEnv, 'STORAGE_BACKEND' | 'STORAGE_DIR'>,
  opts: { rawEnv?: Record<string, string | undefined>; logger?: Logger } = {},
): Promise<DatasetStore> {
  return new DatasetStore(await createStorage(env, opts));
}
