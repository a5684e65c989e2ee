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
 * Cost: about 1 s once per process.
 */
import * as tf from '@tensorflow/tfjs-core';
import { register } from 'node:module';

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
    register(`data:text/javascript,${encodeURIComponent(HOOK)}`);
    await import('@tensorflow/tfjs-core/dist/register_all_gradients.js' as string);
    if (!gradientsRegistered()) {
      throw new Error('tfjs gradient registration failed: @tensorflow/tfjs-core/dist/register_all_gradients.js loaded but Mean has no gradient');
    }
  })();
  return pending;
}
