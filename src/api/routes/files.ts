/**
 * The trained files of a job:
 * - GET /jobs/:jobId/files: the artifact's files (manifest paths, sizes, sha256) with download URLs;
 * - GET /jobs/:jobId/files/*: one file. Local storage streams it (Range requests for large safetensors:
 *   206 with Content-Range, 416 for an unsatisfiable range); Firebase answers 302 to a fresh signed URL.
 *   Only paths listed in the manifest (and manifest.json itself) can be fetched;
 * - GET /jobs/:jobId/checkpoints: the checkpoints the job saved (from its `checkpoint.saved` events: stage,
 *   step, metrics at that step) and whether each is in the artifact (`keep_checkpoints: true`).
 */
import type { FastifyInstance } from 'fastify';
import { lookup as mimeLookup } from 'mime-types';
import type { JobEventLog } from '../../queue/events.js';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { JobStatus } from '../../queue/types.js';
import { ApiError, NotFoundError } from '../errors.js';
import { isSafeArtifactPath, parseRange, type ArtifactAccess } from '../artifacts.js';
import { errorResponses } from './common.js';
import { jobForRequest, jobParams, redisRead } from './job-access.js';

export interface FilesRouteOptions {
  queue: FinetuneQueueService;
  events: JobEventLog;
  artifacts: ArtifactAccess;
}

export const artifactFileListSchema = {
  $id: 'ArtifactFileList',
  title: 'ArtifactFileList',
  type: 'object',
  required: ['jobId', 'complete', 'data'],
  properties: {
    jobId: { type: 'string' },
    complete: { type: 'boolean', description: 'false until the job completed (then data is empty)' },
    uri: { type: ['string', 'null'] },
    data: {
      type: 'array',
      items: {
        type: 'object',
        required: ['path', 'size', 'sha256', 'url'],
        properties: {
          path: { type: 'string' },
          size: { type: 'integer', description: 'bytes' },
          sha256: { type: 'string' },
          url: { type: 'string', description: 'GET it (with the same key) to download' },
        },
      },
    },
  },
} as const;

export const checkpointListSchema = {
  $id: 'CheckpointList',
  title: 'CheckpointList',
  type: 'object',
  required: ['jobId', 'data'],
  properties: {
    jobId: { type: 'string' },
    data: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'stage', 'step', 'metrics', 'inArtifact'],
        properties: {
          name: { type: 'string', description: 'directory under checkpoints/' },
          stage: { type: 'string', enum: ['sft', 'dpo'] },
          step: { type: 'integer' },
          savedAt: { type: ['string', 'null'] },
          metrics: { type: 'object', additionalProperties: true, description: 'the train (and eval) metrics saved with the checkpoint' },
          inArtifact: { type: 'boolean', description: 'true when kept in the artifact (keep_checkpoints: true)' },
        },
      },
    },
  },
} as const;

function filesOf(status: JobStatus): Array<{ path: string; size: number; sha256: string }> {
  return status.state === 'completed' && status.artifact ? status.artifact.files : [];
}

export async function filesRoutes(app: FastifyInstance, opts: FilesRouteOptions): Promise<void> {
  app.get<{ Params: { jobId: string } }>(
    '/jobs/:jobId/files',
    {
      schema: {
        tags: ['files'],
        summary: "The artifact's files (paths, sizes, sha256, download URLs)",
        security: [{ bearerAuth: [] }],
        params: jobParams,
        response: { 200: { $ref: 'ArtifactFileList#' }, ...errorResponses(400, 401, 404, 429, 503) },
      },
    },
    async (request) => {
      const { jobId } = request.params;
      const st = await jobForRequest(opts.queue, request, jobId);
      const files = filesOf(st);
      return {
        jobId,
        complete: st.state === 'completed' && !!st.artifact,
        uri: st.artifact?.uri ?? null,
        data: files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256, url: `/jobs/${jobId}/files/${f.path}` })),
      };
    },
  );

  app.get<{ Params: { jobId: string; '*': string } }>(
    '/jobs/:jobId/files/*',
    {
      schema: {
        tags: ['files'],
        summary: 'Download one artifact file (Range requests; Firebase: redirect to a signed URL)',
        description:
          'The path must be one listed by GET /jobs/:jobId/files (or manifest.json). Local storage streams the bytes ' +
          '(`Range: bytes=a-b` answers 206); Firebase storage answers 302 to a fresh signed URL.',
        security: [{ bearerAuth: [] }],
        params: {
          type: 'object',
          required: ['jobId', '*'],
          properties: { jobId: jobParams.properties.jobId, '*': { type: 'string', maxLength: 1100 } },
        },
        headers: { type: 'object', properties: { range: { type: 'string', description: 'bytes=start-end' } } },
        response: {
          200: { description: 'the file', content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } },
          206: { description: 'the requested byte range', content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } },
          302: { description: 'Firebase storage: Location is a signed URL', type: 'null' },
          ...errorResponses(400, 401, 404, 416, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { jobId } = request.params;
      const path = request.params['*'];
      const st = await jobForRequest(opts.queue, request, jobId);
      const listed = filesOf(st).find((f) => f.path === path);
      const isManifest = path === 'manifest.json' && st.state === 'completed' && !!st.artifact;
      if (!isSafeArtifactPath(path) || (!listed && !isManifest)) {
        throw new NotFoundError(`job ${jobId} has no file ${JSON.stringify(path.slice(0, 200))}; GET /jobs/${jobId}/files lists them`);
      }
      if (opts.artifacts.kind === 'remote') {
        let url: string;
        try {
          url = await opts.artifacts.signedUrl!(st.communityId, jobId, path);
        } catch (err) {
          const e = err as { code?: string; message: string };
          if (e.code === 'URL_SIGNING_FAILED') throw new ApiError(503, 'URL_SIGNING_FAILED', e.message);
          throw err;
        }
        return reply.code(302).header('location', url).header('cache-control', 'no-store').send();
      }
      const size = await opts.artifacts.size!(st.communityId, jobId, path);
      if (size === null) throw new NotFoundError(`file ${path} of job ${jobId} is listed but missing in storage`);
      const range = parseRange(request.headers.range, size);
      const type = mimeLookup(path) || 'application/octet-stream';
      reply.header('accept-ranges', 'bytes').header('content-type', type);
      if (listed) reply.header('etag', `"${listed.sha256}"`).header('x-checksum-sha256', listed.sha256);
      reply.header('content-disposition', `attachment; filename="${path.split('/').pop()}"`);
      if (range === 'unsatisfiable') {
        reply.header('content-range', `bytes */${size}`);
        throw new ApiError(416, 'INVALID_RANGE', `the Range header does not fit the file's ${size} bytes; send bytes=start-end with start < ${size}`);
      }
      const opened = await opts.artifacts.open!(st.communityId, jobId, path, range ?? undefined);
      if (!opened) throw new NotFoundError(`file ${path} of job ${jobId} is listed but missing in storage`);
      if (range) {
        reply
          .code(206)
          .header('content-range', `bytes ${range.start}-${range.end}/${size}`)
          .header('content-length', String(range.end - range.start + 1));
      } else reply.header('content-length', String(size));
      return reply.send(opened.stream);
    },
  );

  app.get<{ Params: { jobId: string } }>(
    '/jobs/:jobId/checkpoints',
    {
      schema: {
        tags: ['files'],
        summary: 'The checkpoints the job saved (stage, step, metrics at that step)',
        description: 'Intermediate checkpoints are part of the artifact only when the job set `config.keep_checkpoints: true`.',
        security: [{ bearerAuth: [] }],
        params: jobParams,
        response: { 200: { $ref: 'CheckpointList#' }, ...errorResponses(400, 401, 404, 429, 503) },
      },
    },
    async (request) => {
      const { jobId } = request.params;
      const st = await jobForRequest(opts.queue, request, jobId);
      const saved = await redisRead(() => opts.events.ofType(jobId, 'checkpoint.saved'));
      const inArtifact = new Set(filesOf(st).map((f) => f.path.split('/').slice(0, 2).join('/')));
      const byName = new Map<string, Record<string, unknown>>();
      for (const e of saved) {
        const d = e.data as { name?: unknown; stage?: unknown; step?: unknown; savedAt?: unknown; metrics?: unknown };
        if (typeof d.name !== 'string' || (d.stage !== 'sft' && d.stage !== 'dpo') || typeof d.step !== 'number') continue;
        byName.set(d.name, {
          name: d.name,
          stage: d.stage,
          step: d.step,
          savedAt: typeof d.savedAt === 'string' ? d.savedAt : e.createdAt,
          metrics: d.metrics && typeof d.metrics === 'object' ? d.metrics : {},
          inArtifact: inArtifact.has(`checkpoints/${d.name}`),
        });
      }
      return { jobId, data: [...byName.values()] };
    },
  );
}
