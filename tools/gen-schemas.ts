/**
 * Write the JSON Schemas of schemas/ that are generated from TypeBox sources (`npm run schemas`):
 * schemas/config.schema.json from src/config/schema.ts, schemas/trigger-finetune.request.json from src/api/request-schema.ts. tests/unit/config-schema.test.ts fails when the
 * committed file differs from what this writes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generatedSchemas } from './schemas.js';
import { schemasDir } from '../src/config/paths.js';

for (const [file, text] of Object.entries(generatedSchemas())) {
  writeFileSync(join(schemasDir(), file), text);
  process.stdout.write(`wrote schemas/${file}\n`);
}
