/**
 * The JSON Schemas of the API (repo `schemas/`), loaded once, and the ajv instance that validates
 * request bodies: all errors, no type coercion, no defaults injected, so a client sees every problem
 * of its payload and nothing is silently changed. The webhook's `config` `$ref`s
 * schemas/config.schema.json (the training config schema, owned by the trainer).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import { pino } from 'pino';
import addFormatsModule from 'ajv-formats';
import { schemasDir } from '../config/paths.js';

// ajv-formats is CJS with a default export
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

export type JsonSchema = Record<string, unknown> & { $id?: string };

function load(name: string): JsonSchema {
  return JSON.parse(readFileSync(join(schemasDir(), name), 'utf8')) as JsonSchema;
}

export interface ApiSchemas {
  triggerRequest: JsonSchema;
  triggerResponse: JsonSchema;
  jobStatus: JsonSchema;
  config: JsonSchema;
}

let cached: ApiSchemas | null = null;

/** The API's schemas, read from disk once. */
export function apiSchemas(): ApiSchemas {
  cached ??= {
    triggerRequest: load('trigger-finetune.request.json'),
    triggerResponse: load('trigger-finetune.response.json'),
    jobStatus: load('job-status.json'),
    config: load('config.schema.json'),
  };
  return cached;
}

// ajv's messages as pino JSON on stderr (never console), without its start-up notice that the `unicode`
// option is deprecated (it is honoured)
const ajvLog = pino({ name: 'ajv', level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
const AJV_LOGGER = {
  log: (...args: unknown[]) => ajvLog.debug(args.map(String).join(' ')),
  warn: (...args: unknown[]) => {
    if (!(typeof args[0] === 'string' && args[0].startsWith('DEPRECATED: option unicode'))) ajvLog.warn(args.map(String).join(' '));
  },
  error: (...args: unknown[]) => ajvLog.error(args.map(String).join(' ')),
};

/**
 * A fresh ajv for request validation with the shared schemas registered by `$id`.
 * Options: allErrors (every problem reported), coerceTypes false, useDefaults false (bodies; query strings
 * and params pass both true), unicode false (lengths in UTF-16 code units), strict false
 * (schemas carry annotations such as `description`).
 */
export function createRequestAjv(opts: { coerceTypes?: boolean; useDefaults?: boolean } = {}): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    coerceTypes: opts.coerceTypes ?? false,
    useDefaults: opts.useDefaults ?? false,
    strict: false,
    // string lengths as UTF-16 code units (String.length), not code points: minLength 1 (every row string)
    // means the same, a maxLength is stricter only for characters outside the BMP (two units each), and the
    // row check no longer walks every character (ajv's ucs2length: ~125 of ~160 us per 120-row body)
    unicode: false,
    logger: AJV_LOGGER,
  });
  addFormats(ajv);
  const s = apiSchemas();
  ajv.addSchema(s.config);
  return ajv;
}

/** Compile (or reuse, by `$id`) a schema on `ajv`. */
export function compileOn(ajv: Ajv, schema: JsonSchema): ValidateFunction {
  if (schema.$id) {
    const existing = ajv.getSchema(schema.$id);
    if (existing) return existing;
  }
  return ajv.compile(schema);
}
