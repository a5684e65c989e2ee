/** Pipeline phase backend-model: the backend starts, stories260K and its tokenizer load; a bad model name fails. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadBackendAndModel, parameterCount } from '../../src/training/pipeline/backend-model.js';
import { ModelNotFoundError } from '../../src/training/models/index.js';
import { silent, smallConfig } from './pipeline-helpers.js';

test('loads the backend, the policy and its tokenizer', async () => {
  const cfg = await smallConfig();
  const m = await loadBackendAndModel(cfg, silent);
  try {
    assert.equal(m.backend.name, 'wasm');
    assert.equal(m.policy.config.vocabSize, m.tokenizer.vocabSize);
    assert.ok(parameterCount(m.policy) > 200_000 && parameterCount(m.policy) < 400_000, `stories260K has ~260K parameters, got ${parameterCount(m.policy)}`);
    assert.match(m.source, /stories260K/);
    assert.ok(m.loadSeconds >= 0);
    assert.deepEqual(m.tokenizer.decode(m.tokenizer.encode('Once upon a time')).trim(), 'Once upon a time');
    assert.equal(m.policy.adaptersEnabled, true);
  } finally {
    m.policy.dispose();
  }
});

test('an unknown model fails with the model error', async () => {
  const cfg = await smallConfig(['model=/nonexistent/model-dir']);
  await assert.rejects(loadBackendAndModel(cfg, silent), (e: unknown) => e instanceof ModelNotFoundError);
});
