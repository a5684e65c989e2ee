/** Shared pieces of route schemas. */

/** OpenAPI/serializer schema of the error body `{statusCode, code, error, message, problems?}`. */
export const errorBodySchema = {
  type: 'object',
  required: ['statusCode', 'code', 'error', 'message'],
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string', description: 'stable error code, e.g. VALIDATION_FAILED, NOT_FOUND, REDIS_UNAVAILABLE' },
    error: { type: 'string' },
    message: { type: 'string' },
    problems: {
      type: 'array',
      items: {
        type: 'object',
        required: ['path', 'message'],
        properties: { path: { type: 'string' }, message: { type: 'string' } },
      },
    },
  },
} as const;

/** `{ [status]: errorBodySchema }` for the given statuses. */
export function errorResponses(...statuses: number[]): Record<number, typeof errorBodySchema> {
  return Object.fromEntries(statuses.map((s) => [s, errorBodySchema]));
}
