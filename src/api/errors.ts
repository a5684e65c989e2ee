/**
 * API errors with stable codes, and the one error handler that turns any error into
 * `{statusCode, code, error, message, problems?}` (fastify/demo's single setErrorHandler, Infisical's
 * error classes). 5xx messages are masked; 4xx messages name the field and the fix.
 */
import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** One problem of a rejected request: JSON pointer into the body and what is wrong there. */
export interface Problem {
  path: string;
  message: string;
}

/** Base class: an HTTP status and a stable code. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly problems?: Problem[],
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** 400: the payload breaks the schema or a data rule; `problems` lists the first 20. */
export class ValidationError extends ApiError {
  constructor(problems: Problem[], total = problems.length) {
    const shown = problems.slice(0, MAX_PROBLEMS);
    const more = total > shown.length ? ` (and ${total - shown.length} more)` : '';
    super(400, 'VALIDATION_FAILED', `invalid request: ${shown.map((p) => `${p.path} ${p.message}`).join('; ')}${more}`, shown);
  }
}

/** 404: unknown job or route. */
export class NotFoundError extends ApiError {
  constructor(message: string) {
    super(404, 'NOT_FOUND', message);
  }
}

/** 409: the request conflicts with the job's state (e.g. cancelling a finished job). */
export class ConflictError extends ApiError {
  constructor(code: string, message: string) {
    super(409, code, message);
  }
}

/** 503: Redis (the queue) is unreachable. */
export class ServiceUnavailableError extends ApiError {
  constructor(message = 'the job queue (Redis) is unreachable; retry later') {
    super(503, 'REDIS_UNAVAILABLE', message);
  }
}

export const MAX_PROBLEMS = 20;

interface AjvErrorLike {
  instancePath?: string;
  keyword?: string;
  message?: string;
  params?: Record<string, unknown>;
}

/**
 * ajv errors → problems with JSON pointers under `rootPath` (`/dataset/3/chosen is required`, ...).
 * `required` names the missing property in the path; `additionalProperties` names the unknown one.
 */
export function ajvProblems(errors: AjvErrorLike[], rootPath = ''): Problem[] {
  const out: Problem[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    let path = `${rootPath}${e.instancePath ?? ''}`;
    let message = e.message ?? 'is invalid';
    if (e.keyword === 'required' && typeof e.params?.missingProperty === 'string') {
      path = `${path}/${e.params.missingProperty}`;
      message = 'is required';
    } else if (e.keyword === 'additionalProperties' && typeof e.params?.additionalProperty === 'string') {
      path = `${path}/${e.params.additionalProperty}`;
      message = 'is not an allowed property';
    } else if (e.keyword === 'enum' && Array.isArray(e.params?.allowedValues)) {
      message = `must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    } else if (e.keyword === 'pattern') {
      message = `must match ${String(e.params?.pattern)}`;
    }
    const key = `${path}\0${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ path: path || '/', message });
  }
  return out;
}

/** Body of every error response. */
export interface ErrorBody {
  statusCode: number;
  code: string;
  error: string;
  message: string;
  problems?: Problem[];
}

function body(statusCode: number, code: string, message: string, problems?: Problem[]): ErrorBody {
  return { statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message, ...(problems ? { problems } : {}) };
}

/** Map any thrown error to a status, a stable code and a message a client can act on. */
export function toErrorBody(err: FastifyError | ApiError | Error, bodyLimit: number): ErrorBody {
  if (err instanceof ApiError) return body(err.statusCode, err.code, err.message, err.problems);
  const fe = err as FastifyError & { validation?: AjvErrorLike[]; validationContext?: string };
  if (fe.validation) {
    const root = fe.validationContext === 'body' ? '' : `/${fe.validationContext ?? ''}`;
    const v = new ValidationError(ajvProblems(fe.validation, root));
    return body(400, v.code, v.message, v.problems);
  }
  const code = fe.code ?? '';
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return body(413, 'BODY_TOO_LARGE', `request body is larger than ${bodyLimit} bytes (BODY_LIMIT_BYTES); send fewer rows`);
  }
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return body(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be JSON: send Content-Type: application/json');
  }
  if (code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
    return body(400, 'INVALID_JSON', 'the body is empty; send a JSON object');
  }
  if (code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (fe.statusCode === 400 && err instanceof SyntaxError)) {
    return body(400, 'INVALID_JSON', `the body is not valid JSON: ${err.message}`);
  }
  if (fe.statusCode === 429) return body(429, 'RATE_LIMITED', err.message);
  const status = typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 600 ? fe.statusCode : 500;
  if (status >= 500) return body(status, 'INTERNAL_ERROR', 'internal server error');
  return body(status, code || 'INVALID_REQUEST', err.message);
}

/** Install the error and 404 handlers on the root instance. */
export function installErrorHandlers(app: FastifyInstance, bodyLimit: number): void {
  app.setErrorHandler((err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const b = toErrorBody(err, bodyLimit);
    if (b.statusCode >= 500) {
      request.log.error({ err, request: { method: request.method, url: request.url } }, 'request failed');
    } else {
      request.log.info({ code: b.code, statusCode: b.statusCode }, b.message);
    }
    if (b.statusCode === 401) reply.header('www-authenticate', 'Bearer');
    const retry = (err as { retryAfterSeconds?: unknown }).retryAfterSeconds;
    if (typeof retry === 'number') reply.header('retry-after', String(retry));
    return reply.code(b.statusCode).send(b);
  });
  app.setNotFoundHandler((request, reply) => {
    const b = body(404, 'NOT_FOUND', `route ${request.method} ${request.url.split('?')[0]} does not exist`);
    return reply.code(404).send(b);
  });
}
