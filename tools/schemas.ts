/** The files of schemas/ generated from TypeBox sources, as their exact text (tools/gen-schemas.ts writes them). */
import { TriggerRequestSchema } from '../src/api/request-schema.js';
import { ConfigInputSchema, toJsonSchema } from '../src/config/schema.js';

const text = (s: Parameters<typeof toJsonSchema>[0]) => `${JSON.stringify(toJsonSchema(s), null, 2)}\n`;

/** File name → JSON text (2-space indent, final newline). */
export function generatedSchemas(): Record<string, string> {
  return { 'config.schema.json': text(ConfigInputSchema), 'trigger-finetune.request.json': text(TriggerRequestSchema) };
}
