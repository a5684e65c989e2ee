/**
 * Datasets uploaded once and trained on by id:
 * - POST /datasets?communityId=&format=&name=&model=: the file as the raw body (any content type:
 *   application/jsonl, application/json, application/gzip, application/octet-stream) or as the `file` part
 *   of a multipart/form-data body (with a `communityId` field when it is not in the query). Streamed to
 *   disk, at most MAX_DATASET_BYTES (413 above), checked with the data module (src/api/dataset-upload.ts),
 *   stored in the dataset store (src/storage/datasets.ts: the rows as canonical JSON, content-addressed, the
 *   same store inline rows go to) with its upload report beside it. 201 `{datasetId, format, rows, problems,
 *   stats: {tokens, truncated, duplicates}}`; 200 with the same body when the community stored these rows
 *   before; 400 with every problem when the data has errors (nothing stored).
 * - GET /datasets/:datasetId?communityId=, DELETE /datasets/:datasetId?communityId= (204); communityId may be
 *   left out when the key has a single community.
 * A dataset of another community answers 404, like a missing one.
 */
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { rm } from 'node:fs/promises';
import { resolveRequestConfig } from '../../config/index.js';
import { DATASET_ID, type DatasetStore } from '../../storage/datasets.js';
import { checkDatasetFile, receiveToFile } from '../dataset-upload.js';
import { ApiError, NotFoundError, ValidationError } from '../errors.js';
import { tokenizerOf } from '../plan.js';
import { errorResponses } from './common.js';

export interface DatasetsRouteOptions {
  store: DatasetStore;
  /** Where uploads are received before they are checked (a local scratch directory). */
  incomingDir: string;
  maxBytes: number;
  /** Whether the request may use `communityId`'s resources. */
  canAccess: (request: FastifyRequest, communityId: string) => boolean;
  /** The communities the request may use ('*' = all). */
  communitiesOf: (request: FastifyRequest) => '*' | string[];
}

/** What GET /datasets/:id answers: the store's reference plus the upload report. */
export interface DatasetMeta {
  datasetId: string;
  communityId: string;
  name: string | null;
  format: string | null;
  container: string | null;
  gzip: boolean;
  /** Bytes as uploaded. */
  bytes: number;
  /** sha256 of the stored rows' canonical JSON (the id without `ds-`). */
  sha256: string;
  /** sha256 of the uploaded bytes. */
  uploadSha256: string;
  rows: number;
  problems: Array<{ where: string; code: string; message: string; level: 'error' | 'warning' }>;
  stats: { tokens: number; tokensExact: boolean; truncated: number; duplicates: number };
  tokenizer: string;
  createdAt: string;
}

function reportKey(store: DatasetStore, communityId: string, datasetId: string): string {
  return store.key(communityId, datasetId).replace(/\.json$/, '.report.json');
}

export const datasetSchema = {
  $id: 'Dataset',
  title: 'Dataset',
  type: 'object',
  required: ['datasetId', 'communityId', 'format', 'rows', 'problems', 'stats', 'bytes', 'sha256', 'createdAt'],
  properties: {
    datasetId: { type: 'string', description: 'ds- + 64 hex; pass as datasetId / evalDatasetId to POST /trigger-finetune' },
    communityId: { type: 'string' },
    name: { type: ['string', 'null'] },
    format: { type: ['string', 'null'], description: 'explicit, implicit, conversational, sharegpt, roll, paddle, grouped' },
    container: { type: ['string', 'null'], description: 'json, jsonl or json-object' },
    gzip: { type: 'boolean' },
    bytes: { type: 'integer', description: 'as uploaded' },
    sha256: { type: 'string', description: "of the stored rows' canonical JSON (the id without ds-)" },
    uploadSha256: { type: 'string', description: 'of the uploaded bytes' },
    rows: { type: 'integer', description: 'preference pairs' },
    problems: {
      type: 'array',
      description: 'warnings (duplicates, over-length pairs, empty prompts); at most 50 listed',
      items: {
        type: 'object',
        required: ['where', 'code', 'message', 'level'],
        properties: { where: { type: 'string' }, code: { type: 'string' }, message: { type: 'string' }, level: { type: 'string', enum: ['error', 'warning'] } },
      },
    },
    stats: {
      type: 'object',
      required: ['tokens', 'tokensExact', 'truncated', 'duplicates'],
      properties: {
        tokens: { type: 'integer', description: 'prompt + chosen and prompt + rejected tokens with the model tokenizer' },
        tokensExact: { type: 'boolean', description: 'false: counted on the first 20 M characters and extrapolated' },
        truncated: { type: 'integer', description: 'pairs longer than max_length (they will be truncated)' },
        duplicates: { type: 'integer' },
      },
    },
    tokenizer: { type: 'string' },
    createdAt: { type: 'string', format: 'date-time' },
  },
} as const;

const COMMUNITY = /^[A-Za-z0-9_-]{1,64}$/;

interface UploadQuery {
  communityId?: string;
  format?: string;
  name?: string;
  model?: string;
}

export async function datasetsRoutes(app: FastifyInstance, opts: DatasetsRouteOptions): Promise<void> {
  // this plugin's bodies are streams: no JSON parsing, no body limit (the upload enforces MAX_DATASET_BYTES)
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null));
  await app.register(multipart, { limits: { fileSize: opts.maxBytes, files: 1, fields: 4 } });

  app.post<{ Querystring: UploadQuery }>(
    '/datasets',
    {
      bodyLimit: opts.maxBytes,
      schema: {
        tags: ['datasets'],
        summary: 'Upload a dataset (raw body or multipart), checked and stored for training by id',
        description:
          'Send the file as the body (JSON, JSONL or gzip of either) with ?communityId=, or multipart/form-data with a `file` ' +
          'part. Streamed to storage, never held in memory; at most MAX_DATASET_BYTES (default 512 MB).',
        security: [{ bearerAuth: [] }],
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            communityId: { type: 'string', pattern: COMMUNITY.source },
            format: { type: 'string', maxLength: 32, description: 'force a format instead of detecting it' },
            name: { type: 'string', maxLength: 128, description: 'a label for people' },
            model: { type: 'string', maxLength: 128, description: 'registered model whose tokenizer counts the tokens (default: the default model)' },
          },
        },
        response: { 200: { $ref: 'Dataset#' }, 201: { $ref: 'Dataset#' }, ...errorResponses(400, 401, 404, 413, 429, 503) },
      },
    },
    async (request, reply) => {
      // a large upload is checked after it is received; no bytes flow meanwhile, so the socket's idle timeout
      // (connectionTimeout) must not cut it
      request.raw.socket.setTimeout(0);
      let communityId = request.query.communityId;
      let body: Readable = request.raw;
      if (request.isMultipart()) {
        const part = await request.file();
        if (!part) throw new ValidationError([{ path: '/file', message: 'is required: send the dataset as the `file` part' }]);
        const field = part.fields.communityId as { value?: unknown } | undefined;
        if (!communityId && typeof field?.value === 'string') communityId = field.value;
        body = part.file;
      }
      if (!communityId || !COMMUNITY.test(communityId)) {
        throw new ValidationError([{ path: '/querystring/communityId', message: 'is required: 1-64 of A-Z a-z 0-9 _ - (or a communityId form field)' }]);
      }
      if (!opts.canAccess(request, communityId)) throw new NotFoundError(`community ${communityId} does not exist`);
      const resolved = resolveRequestConfig(request.query.model ? { model: request.query.model } : {}, '/querystring');
      if (!resolved.config)
        throw new ValidationError(resolved.problems.map((p) => ({ path: p.path.replace('/querystring/model', '/querystring/model'), message: p.message })));
      const cfg = resolved.config;
      let received: Awaited<ReturnType<typeof receiveToFile>>;
      try {
        received = await receiveToFile(body, opts.incomingDir, opts.maxBytes);
      } catch (err) {
        // the rest of the body is not read: the connection cannot be reused
        if (err instanceof ApiError && err.statusCode === 413) reply.header('connection', 'close');
        throw err;
      }
      if ((body as Readable & { truncated?: boolean }).truncated) {
        await rm(received.path, { force: true });
        throw new ApiError(413, 'DATASET_TOO_LARGE', `the dataset is larger than ${opts.maxBytes} bytes (MAX_DATASET_BYTES)`);
      }
      try {
        const tokenizer = await tokenizerOf(cfg);
        const check = await checkDatasetFile(received.path, {
          tokenizer,
          maxLength: cfg.max_length,
          maxPromptLength: cfg.max_prompt_length,
          format: request.query.format,
        });
        if (!check.ok) {
          const errs = check.problems.filter((p) => p.level === 'error');
          throw new ValidationError(
            errs.map((p) => ({ path: `/file${p.where ? ` (${p.where})` : ''}`, message: `${p.message} (${p.code})` })),
            check.errorCount,
          );
        }
        // the rows, converted by the data module as they stream, into the store (one row in memory at a time)
        const { iteratePreferenceExamples } = await import('../../training/data/index.js');
        const path = received.path;
        const format = request.query.format;
        const rows = (async function* () {
          for await (const b of iteratePreferenceExamples(path, { format })) {
            for (const ex of b.examples) yield ex.sftTarget !== undefined ? ex : { prompt: ex.prompt, chosen: ex.chosen, rejected: ex.rejected };
          }
        })();
        const ref = await opts.store.putStream(communityId, rows);
        const existing = await readReport(opts.store, communityId, ref.datasetId);
        if (existing) return reply.code(200).send(existing);
        const meta: DatasetMeta = {
          datasetId: ref.datasetId,
          communityId,
          name: request.query.name ?? null,
          format: check.format,
          container: check.container,
          gzip: check.gzip,
          bytes: received.bytes,
          sha256: ref.sha256,
          uploadSha256: received.sha256,
          rows: ref.rows,
          problems: check.problems,
          stats: { tokens: check.stats.tokens, tokensExact: check.stats.tokensExact, truncated: check.stats.truncated, duplicates: check.stats.duplicates },
          tokenizer: cfg.model.tokenizer_name_or_path ?? cfg.model.name_or_path,
          createdAt: new Date().toISOString(),
        };
        await opts.store.objects.putObject(reportKey(opts.store, communityId, ref.datasetId), JSON.stringify(meta));
        request.log.info({ datasetId: ref.datasetId, communityId, bytes: received.bytes, rows: meta.rows }, 'dataset stored');
        return reply.code(201).send(meta);
      } finally {
        await rm(received.path, { force: true });
      }
    },
  );

  const params = { type: 'object', required: ['datasetId'], properties: { datasetId: { type: 'string', pattern: DATASET_ID.source } } } as const;
  const query = { type: 'object', additionalProperties: false, properties: { communityId: { type: 'string', pattern: COMMUNITY.source } } } as const;
  const load = async (request: FastifyRequest, id: string, communityId: string | undefined): Promise<DatasetMeta> => {
    let c = communityId;
    if (!c) {
      const mine = opts.communitiesOf(request);
      if (mine !== '*' && mine.length === 1) c = mine[0];
      else throw new ValidationError([{ path: '/querystring/communityId', message: 'is required (the dataset ids of different communities are separate)' }]);
    }
    if (!c || !opts.canAccess(request, c)) throw new NotFoundError(`dataset ${id} does not exist`);
    const meta = await readReport(opts.store, c, id);
    if (meta) return meta;
    // stored by an inline trigger (no upload report): the store's own reference
    const info = await opts.store.info(c, id);
    if (!info) throw new NotFoundError(`dataset ${id} does not exist`);
    return {
      datasetId: info.datasetId,
      communityId: c,
      name: null,
      format: 'explicit',
      container: 'json',
      gzip: false,
      bytes: info.bytes,
      sha256: info.sha256,
      uploadSha256: info.sha256,
      rows: info.rows,
      problems: [],
      stats: { tokens: 0, tokensExact: false, truncated: 0, duplicates: 0 },
      tokenizer: '',
      createdAt: info.createdAt,
    };
  };
  app.get<{ Params: { datasetId: string }; Querystring: { communityId?: string } }>(
    '/datasets/:datasetId',
    {
      schema: {
        tags: ['datasets'],
        summary: "A dataset's format, rows, problems and token stats",
        security: [{ bearerAuth: [] }],
        params,
        querystring: query,
        response: { 200: { $ref: 'Dataset#' }, ...errorResponses(400, 401, 404, 429) },
      },
    },
    async (request) => load(request, request.params.datasetId, request.query.communityId),
  );
  app.delete<{ Params: { datasetId: string }; Querystring: { communityId?: string } }>(
    '/datasets/:datasetId',
    {
      schema: {
        tags: ['datasets'],
        summary: 'Delete a dataset (jobs already queued with it fail when they start)',
        security: [{ bearerAuth: [] }],
        params,
        querystring: query,
        response: { 204: { type: 'null', description: 'deleted' }, ...errorResponses(400, 401, 404, 429) },
      },
    },
    async (request, reply) => {
      const meta = await load(request, request.params.datasetId, request.query.communityId);
      await opts.store.objects.deleteObject(reportKey(opts.store, meta.communityId, meta.datasetId));
      await opts.store.delete(meta.communityId, meta.datasetId);
      return reply.code(204).send();
    },
  );
}

async function readReport(store: DatasetStore, communityId: string, datasetId: string): Promise<DatasetMeta | null> {
  const buf = await store.objects.getObject(reportKey(store, communityId, datasetId));
  if (!buf) return null;
  try {
    const m = JSON.parse(buf.toString('utf8')) as DatasetMeta;
    return m && m.datasetId === datasetId && m.communityId === communityId ? m : null;
  } catch {
    return null;
  }
}
