/** The fast engine ops against the plain reference on the pure-JS `cpu` backend (every op must run there). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend } from '../../src/training/engine/backend.js';
import { runAllOpChecks } from './engine-ops-helpers.js';

test('fast ops equal the reference ops (values and gradients) on cpu', async () => {
  const info = await initBackend('cpu');
  assert.equal(info.name, 'cpu');
  runAllOpChecks();
});
