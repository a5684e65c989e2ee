/**
 * schemas/ files generated from the TypeBox sources (src/config/schema.ts) are committed as generated: the
 * file on disk equals what `npm run schemas` writes, and the derived types match the resolved config.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { loadConfig } from '../../src/config/index.js';
import { generatedSchemas } from '../../tools/schemas.js';
import { schemasDir } from '../../src/config/paths.js';
import { ConfigInputSchema, TrainConfigSchema, toJsonSchema } from '../../src/config/schema.js';

test('schemas/*.json equal the schemas generated from src/config/schema.ts and src/api/request-schema.ts (run `npm run schemas` after editing it)', () => {
  const files = generatedSchemas();
  assert.deepEqual(Object.keys(files).sort(), ['config.schema.json', 'trigger-finetune.request.json']);
  for (const [file, text] of Object.entries(files)) {
    assert.equal(readFileSync(join(schemasDir(), file), 'utf8'), text, `schemas/${file} is stale: run npm run schemas`);
  }
});

test('the resolved config satisfies the resolved schema and is valid input again (re-validation is idempotent)', () => {
  const ajv = new Ajv({ strict: true, allErrors: true });
  const resolved = ajv.compile(toJsonSchema(TrainConfigSchema));
  const input = ajv.compile(toJsonSchema(ConfigInputSchema));
  for (const overrides of [[], ['loss=ipo', 'loss.beta=0.3'], ['loss=mpo'], ['model=stories260K', 'lora.enabled=true', 'sft.enabled=false']]) {
    const c = loadConfig({ overrides });
    assert.equal(resolved(c), true, JSON.stringify(resolved.errors));
    assert.equal(input(c), true, JSON.stringify(input.errors));
    assert.deepEqual(loadConfig({ object: c }), c, `re-resolving ${overrides.join(' ')} changes nothing`);
  }
});
