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

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * The manifest stored as `bytes` when they hash (sha256, hex) to `sha256` and parse as a manifest; else null
 * (a record that no longer matches its artifact, or a damaged file). Used to verify a recorded artifact.
 */
export function manifestIfDigest(bytes: Buffer, sha256: string): Manifest | null {
  if (createHash('sha256').update(bytes).digest('hex') !== sha256) return null;
  try {
    return parseManifest(bytes.toString('utf8'));
  } catch {
    return null;
  }
}

/**
 * Parse manifest.json text read from somewhere not trusted (storage read back, another process): `files` must be
 * an array of `{path, size, sha256}` with relative '/'-separated paths (no empty, `.` or `..` segment, no
 * backslash), integer sizes >= 0 and lowercase hex sha256, each path once.
 * @throws Error naming what is wrong.
 */
export function parseManifest(text: string): Manifest {
  const v = JSON.parse(text) as { files?: unknown };
  if (!v || typeof v !== 'object' || !Array.isArray(v.files)) throw new Error('manifest.json has no "files" array');
  const seen = new Set<string>();
  const files: StoredFile[] = [];
  for (const f of v.files as Array<Record<string, unknown>>) {
    const path = f?.path;
    if (
      typeof path !== 'string' ||
      path === '' ||
      path.length > 1000 ||
      path.startsWith('/') ||
      path.includes('\\') ||
      path.split('/').some((s) => s === '' || s === '.' || s === '..') ||
      path === MANIFEST_NAME ||
      seen.has(path)
    ) {
      throw new Error(`manifest.json lists an unsafe or repeated path ${JSON.stringify(String(path).slice(0, 200))}`);
    }
    if (!Number.isSafeInteger(f.size) || (f.size as number) < 0 || typeof f.sha256 !== 'string' || !SHA256_HEX.test(f.sha256)) {
      throw new Error(`manifest.json entry ${JSON.stringify(path)} needs an integer size and a hex sha256`);
    }
    seen.add(path);
    files.push({ path, size: f.size as number, sha256: f.sha256 });
  }
  return { files };
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
