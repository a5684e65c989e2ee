/**
 * Where the native kernels can be built (a C compiler and Node's headers are present, DPO_NATIVE is not 0),
 * they must load: otherwise the engine falls back to tfjs-backend-wasm without a word, and every kernel test
 * that compares the native kernels with the tfjs composition compares that composition with itself and passes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadNativeAddon, nativeStatus } from '../../src/training/engine/addon.js';
import { engineSettings } from '../../src/training/engine/settings.js';

test('the native addon loads wherever it can be built', (t) => {
  const settings = engineSettings();
  const compiler = spawnSync(settings.cc, ['--version'], { encoding: 'utf8' });
  const headers = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'].some((d) =>
    existsSync(join(d, 'node_api.h')),
  );
  if (!settings.native || compiler.status !== 0 || !headers || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    t.skip(
      `no build here: DPO_NATIVE ${settings.native ? 'on' : 'off'}, ${settings.cc} ${compiler.status === 0 ? 'found' : 'missing'}, headers ${headers ? 'found' : 'missing'}`,
    );
    return;
  }
  const addon = loadNativeAddon();
  assert.ok(addon, `the addon did not load: ${nativeStatus().detail}`);
  assert.equal(nativeStatus().available, true);
  assert.equal(typeof addon.sgemm, 'function');
});
