/**
 * GET /jobs/:jobId/metrics?stage=&after_step=: the job's logged metrics rows, the same records (TRL's
 * names: loss, rewards/margins, eval_loss, ...) as the artifact's metrics.jsonl. A completed job's rows
 * are read from its stored metrics.jsonl; a running job's from its `metrics` events (the worker copies
 * every metrics.jsonl line into the event log as it is written). JSON `{jobId, data}` by default,
 * `text/csv` when asked (Accept: text/csv or `?format=csv`): one column per key in order of first
 * appearance, empty cells where a row lacks a key.
 */
import type { FastifyInstance } from 'fastify';
import type { JobEventLog } from '../../queue/events.js';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { ArtifactAccess } from '../artifacts.js';
import { errorResponses } from './common.js';
import { jobForRequest, jobParams, redisRead } from './job-access.js';

export interface JobMetricsRouteOptions {
  queue: FinetuneQueueService;
  events: JobEventLog;
  artifacts: ArtifactAccess;
}

export const metricsHistorySchema = {
  $id: 'MetricsHistory',
  title: 'MetricsHistory',
  type: 'object',
  required: ['jobId', 'source', 'data'],
  properties: {
    jobId: { type: 'string' },
    source: { type: 'string', enum: ['artifact', 'events'], description: 'metrics.jsonl of the artifact, or the live event log' },
    data: {
      type: 'array',
      items: { type: 'object', additionalProperties: true, description: 'one metrics.jsonl record: {stage, step, examples, epoch, loss, ...}' },
    },
  },
} as const;

type Row = Record<string, unknown>;

function csvCell(v: unknown): string {
  if (v === undefined || v === null) return '';
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** CSV of rows: header = keys in order of first appearance. */
export function toCsv(rows: Row[]): string {
  const cols: string[] = [];
  const seen = new Set<string>();
  for (const r of rows) {
    for (const k of Object.keys(r)) {
      if (seen.has(k)) continue;
      seen.add(k);
      cols.push(k);
    }
  }
  const lines = [cols.map(csvCell).join(',')];
  for (const r of rows) lines.push(cols.map((c) => csvCell(r[c])).join(','));
  return `${lines.join('\n')}\n`;
}

function parseJsonl(text: string): Row[] {
  const out: Row[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const v = JSON.parse(line) as unknown;
      if (v && typeof v === 'object' && !Array.isArray(v)) out.push(v as Row);
    } catch {
      // a torn last line of a file being written: skipped
    }
  }
  return out;
}

export async function jobMetricsRoutes(app: FastifyInstance, opts: JobMetricsRouteOptions): Promise<void> {
  app.get<{ Params: { jobId: string }; Querystring: { stage?: 'sft' | 'dpo'; after_step?: number; format?: 'json' | 'csv' } }>(
    '/jobs/:jobId/metrics',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Metrics history: the logged rows of metrics.jsonl (JSON or CSV)',
        security: [{ bearerAuth: [] }],
        params: jobParams,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            stage: { type: 'string', enum: ['sft', 'dpo'] },
            after_step: { type: 'integer', minimum: 0, description: 'only rows with step > after_step' },
            format: { type: 'string', enum: ['json', 'csv'], description: 'or send Accept: text/csv' },
          },
        },
        response: {
          200: {
            description: 'the rows',
            content: { 'application/json': { schema: { $ref: 'MetricsHistory#' } }, 'text/csv': { schema: { type: 'string' } } },
          },
          ...errorResponses(400, 401, 404, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { jobId } = request.params;
      const { stage, after_step: afterStep, format } = request.query;
      const st = await jobForRequest(opts.queue, request, jobId);
      let rows: Row[] | null = null;
      let source: 'artifact' | 'events' = 'events';
      if (st.state === 'completed' && st.artifact) {
        const text = await opts.artifacts.readText(st.communityId, jobId, 'metrics.jsonl');
        if (text !== null) {
          rows = parseJsonl(text);
          source = 'artifact';
        }
      }
      if (rows === null) rows = (await redisRead(() => opts.events.ofType(jobId, 'metrics'))).map((e) => e.data);
      const data = rows.filter((r) => (!stage || r.stage === stage) && (afterStep === undefined || Number(r.step) > afterStep));
      const csv = format === 'csv' || (format === undefined && /\btext\/csv\b/i.test(request.headers.accept ?? ''));
      if (csv) return reply.header('content-type', 'text/csv; charset=utf-8').send(toCsv(data));
      return { jobId, source, data };
    },
  );
}
