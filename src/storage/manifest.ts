/**
 * manifest.json of an artifact directory: every other file with its size and sha256 (README "Artifacts").
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat, writeFile, readFile, rename } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import type { StoredFile } from './storage.js';

export const MANIFEST_NAME = 'manifest.json';

export interface Manifest {
  files: StoredFile[];
}

/** sha256 of a file, hex, streamed. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function listFiles(root: string, dir = root): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(root, p)));
    else if (e.isFile()) out.push(relative(root, p).split(sep).join('/'));
  }
  return out.sort();
}

/**
 * Write `<dir>/manifest.json` listing every other file (paths relative to dir, '/'-separated), atomically.
 * @returns the manifest written.
 */
export async function writeManifest(dir: string): Promise<Manifest> {
  const files: StoredFile[] = [];
  for (const path of await listFiles(dir)) {
    if (path === MANIFEST_NAME) continue;
    const full = join(dir, path);
    files.push({ path, size: (await stat(full)).size, sha256: await sha256File(full) });
  }
  const manifest: Manifest = { files };
  const tmp = join(dir, `.${MANIFEST_NAME}.tmp`);
  await writeFile(tmp, JSON.stringify(manifest, null, 2) + '\n');
  await rename(tmp, join(dir, MANIFEST_NAME));
  return manifest;
}

/** Read `<dir>/manifest.json`. */
export async function readManifest(dir: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(dir, MANIFEST_NAME), 'utf8')) as Manifest;
}

/**
 * Check every listed file's size and sha256.
 * @returns the relative paths that are missing or differ (empty when the artifact is intact).
 */
export async function verifyManifest(dir: string, manifest?: Manifest): Promise<string[]> {
  const m = manifest ?? (await readManifest(dir));
  const bad: string[] = [];
  for (const f of m.files) {
    const full = join(dir, f.path);
    try {
      if ((await stat(full)).size !== f.size || (await sha256File(full)) !== f.sha256) bad.push(f.path);
    } catch {
      bad.push(f.path);
    }
  }
  return bad;
}
