/**
 * Storage factory: `STORAGE_BACKEND=local` (default) or `firebase` (src/storage/firebase.ts, DEPLOY's).
 */
import type { ServiceEnv } from '../config/env.js';
import { LocalStorage } from './local.js';
import type { Storage } from './storage.js';

export type { Storage, StoredFile, UploadResult } from './storage.js';
export { LocalStorage, StorageError } from './local.js';

/**
 * Create the configured Storage.
 * @throws Error when STORAGE_BACKEND=firebase and src/storage/firebase.ts cannot be loaded or configured.
 */
export async function createStorage(
  env: Pick<ServiceEnv, 'STORAGE_BACKEND' | 'STORAGE_DIR'> & Partial<ServiceEnv>,
): Promise<Storage> {
  if (env.STORAGE_BACKEND === 'firebase') {
    // Loaded lazily: firebase-admin is heavy and only the firebase backend needs it.
    // (a variable specifier keeps tsc from requiring the module while it is being written)
    const specifier = './firebase.js';
    const mod = (await import(specifier)) as Record<string, unknown>;
    const factory = mod.createFirebaseStorage as ((e: typeof env) => Storage | Promise<Storage>) | undefined;
    if (typeof factory === 'function') return factory(env);
    const Ctor = mod.FirebaseStorage as (new (e: typeof env) => Storage) | undefined;
    if (typeof Ctor === 'function') return new Ctor(env);
    throw new Error('STORAGE_BACKEND=firebase but src/storage/firebase.ts exports neither createFirebaseStorage(env) nor FirebaseStorage');
  }
  return new LocalStorage(env.STORAGE_DIR);
}
