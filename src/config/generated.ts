/** The files of schemas/ generated from TypeBox sources, as their exact text (tools/gen-schemas.ts writes them). */
import { ConfigInputSchema, toJsonSchema } from './schema.js';

/** File name → JSON text (2-space indent, final newline). */
export function generatedSchemas(): Record<string, string> {
  return { 'config.schema.json': `${JSON.stringify(toJsonSchema(ConfigInputSchema), null, 2)}\n` };
}
