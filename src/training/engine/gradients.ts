/**
 * Registers tfjs-core's gradient functions (Mean, RealDiv, MatMul, ... ; `register_all_gradients`).
 *
 * Why this exists: with `@tensorflow/tfjs-core` alone under Node, `import '@tensorflow/tfjs-core'` loads the
 * CommonJS bundle `dist/tf-core.node.js`, which contains no gradient configs (the `@tensorflow/tfjs` union
 * package and tfjs-node register them; we depend on neither). So `tf.grad` fails with "gradient function not
 * found for Mean". The gradient configs exist only in tfjs-core's ES-module tree (`dist/gradients/*.js`), whose
 * relative imports have no file extensions and therefore do not resolve under Node's ESM loader. This module
 * installs a resolve hook that adds `.js` (or `/index.js`) to such specifiers inside `@tensorflow/tfjs-core/dist/`
 * only, then imports `register_all_gradients.js`. The registries, the engine and the Tensor class are tfjs
 * globals, so the gradients registered by the ES-module copy serve the CommonJS copy the rest of the code uses.
 * That costs about 0.9 s per process (hundreds of small files through the hook), which every training job
 * paid in its child process. So first the tree is bundled once into one file with esbuild (a dependency, also
 * tsx's) and cached beside the native addon (env `DPO_NATIVE_CACHE`, default `<tmpdir>/dpo-native`), keyed by
 * the tfjs-core version: later processes import it in ~10 ms. The hook is the fallback when that fails.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire, register } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { engineSettings } from './settings.js';

const HOOK = `
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
export async function resolve(specifier, context, next) {
  const parent = context.parentURL || '';
  if ((specifier.startsWith('./') || specifier.startsWith('../')) && parent.includes('/@tensorflow/tfjs-core/dist/')) {
    const url = new URL(specifier, parent);
    const p = fileURLToPath(url);
    if (!existsSync(p) || statSync(p).isDirectory()) {
      if (existsSync(p + '.js')) return next(url.href + '.js', context);
      if (existsSync(p + '/index.js')) return next(url.href + '/index.js', context);
    }
  }
  return next(specifier, context);
}
`;

let pending: Promise<void> | null = null;

/** Import the cached one-file bundle of tfjs-core's gradient tree, building it first if needed; false on any failure. */
async function importBundled(): Promise<boolean> {
  try {
    const req = createRequire(import.meta.url);
    const entry = req.resolve('@tensorflow/tfjs-core/dist/register_all_gradients.js');
    const version = (req('@tensorflow/tfjs-core/package.json') as { version: string }).version;
    const key = createHash('sha256').update(entry).update(version).digest('hex').slice(0, 12);
    const dir = engineSettings().cacheDir;
    const out = path.join(dir, `tfjs-core-${version}-gradients-${key}.mjs`);
    if (!fs.existsSync(out)) {
      const esbuild = (await import('esbuild')) as typeof import('esbuild');
      const r = esbuild.buildSync({ entryPoints: [entry], bundle: true, format: 'esm', platform: 'node', write: false, logLevel: 'silent' });
      fs.mkdirSync(dir, { recursive: true });
      const tmp = `${out}.${process.pid}.${Date.now()}.tmp`;
      fs.writeFileSync(tmp, r.outputFiles[0]!.text);
      fs.renameSync(tmp, out); // atomic: concurrent processes never import a partial file
    }
    await import(pathToFileURL(out).href);
    return gradientsRegistered();
  } catch {
    return false;
  }
}

/** True when tfjs has a gradient for the `Mean` kernel (a proxy for "gradients are registered"). */
export function gradientsRegistered(): boolean {
  try {
    return tf.getGradient('Mean') !== undefined;
  } catch {
    return false;
  }
}

/**
 * Make sure tfjs's gradient functions are registered (idempotent; concurrent callers share one promise).
 * @throws Error when the ES-module gradient tree cannot be loaded (message names the cause).
 */
export function ensureGradients(): Promise<void> {
  if (gradientsRegistered()) return Promise.resolve();
  pending ??= (async () => {
    if (await importBundled()) return;
    register(`data:text/javascript,${encodeURIComponent(HOOK)}`);
    await import('@tensorflow/tfjs-core/dist/register_all_gradients.js' as string);
    if (!gradientsRegistered()) {
      throw new Error('tfjs gradient registration failed: @tensorflow/tfjs-core/dist/register_all_gradients.js loaded but Mean has no gradient');
    }
  })();
  return pending;
}
