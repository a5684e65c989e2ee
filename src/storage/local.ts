/**
 * Local storage: the artifact tree `<STORAGE_DIR>/<communityId>/<jobId>/` on this machine's disk.
 * Files are copied to a temporary sibling, verified against manifest.json, then renamed into place,
 * so a reader never sees a half-written artifact.
 */
import { cp, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readManifest, verifyManifest } from './manifest.js';
import { StorageError } from './errors.js';
import type { Storage, UploadResult } from './storage.js';

const SAFE_SEGMENT = /^[A-Za-z0-9_-]{1,128}$/;

/** Stores artifacts under a root directory. */
export class LocalStorage implements Storage {
  readonly kind = 'local';
  readonly root: string;

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
      if (!SAFE_SEGMENT.test(v)) {
        throw new StorageError('INVALID_ARTIFACT', `${name} "${v}" is not a safe path segment ([A-Za-z0-9_-]{1,128})`);
      }
    }
    return join(this.root, communityId, jobId);
  }

  /**
   * Copy `localDir` (which holds manifest.json) to `<root>/<communityId>/<jobId>/` and verify every file's
   * size and sha256 there. When `localDir` already is that directory, it is only verified. An existing
   * artifact at the target is replaced.
   * @returns `file://` URI of the directory and the manifest's files.
   * @throws StorageError INVALID_ARTIFACT without a manifest, STORAGE_UPLOAD_FAILED on copy or
   *   verification failure (the message lists the bad files).
   */
  async putArtifact(localDir: string, communityId: string, jobId: string): Promise<UploadResult> {
    const target = this.artifactDir(communityId, jobId);
    const source = resolve(localDir);
    let manifest;
    try {
      manifest = await readManifest(source);
    } catch (err) {
      throw new StorageError('INVALID_ARTIFACT', `artifact directory ${source} has no readable manifest.json (${(err as Error).message})`);
    }
    if (source !== target) {
      const tmp = `${target}.tmp-${process.pid}-${Date.now()}`;
      try {
        await mkdir(dirname(target), { recursive: true });
        await cp(source, tmp, { recursive: true, errorOnExist: false, force: true });
        const bad = await verifyManifest(tmp, manifest);
        if (bad.length > 0) throw new Error(`files differ after copy: ${bad.join(', ')}`);
        if (await exists(target)) await rm(target, { recursive: true, force: true });
        await rename(tmp, target);
      } catch (err) {
        await rm(tmp, { recursive: true, force: true }).catch(() => {});
        throw new StorageError('STORAGE_UPLOAD_FAILED', `could not store artifact in ${target}: ${(err as Error).message}`);
      }
    } else {
      const bad = await verifyManifest(target, manifest);
      if (bad.length > 0) {
        throw new StorageError('STORAGE_UPLOAD_FAILED', `artifact ${target} does not match its manifest: ${bad.join(', ')}`);
      }
    }
    return { uri: pathToFileURL(target).href, files: manifest.files };
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
