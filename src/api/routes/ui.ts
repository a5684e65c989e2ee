/**
 * GET /ui: the job page, static files served by the API with no build step: src/ui/index.html, app.js,
 * style.css, and uPlot's browser build straight from node_modules/uplot/dist (uPlot.iife.min.js,
 * uPlot.min.css). The page holds no secret: it asks for the API key and sends it as a bearer header on
 * its fetch calls (including the event stream, read with fetch rather than EventSource so the header can
 * be sent), so /ui itself needs no auth.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { contentType as mimeContentType } from 'mime-types';
import { repoRoot } from '../../config/paths.js';
import { NotFoundError } from '../errors.js';

/** The page's directory: the repository's src/ui (dist/ has no copy, so compiled code serves the source too). */
function uiDir(): string {
  return join(repoRoot(), 'src', 'ui');
}

function uplotDist(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
}

/** A served file: its path and its content type (mime-types, by the file name). */
const served = (file: () => string, name: string) => ({ file, type: mimeContentType(name) || 'application/octet-stream' });

const FILES: Record<string, { file: () => string; type: string }> = {
  '': served(() => join(uiDir(), 'index.html'), 'index.html'),
  'app.js': served(() => join(uiDir(), 'app.js'), 'app.js'),
  'style.css': served(() => join(uiDir(), 'style.css'), 'style.css'),
  'uPlot.iife.min.js': served(() => join(uplotDist(), 'uPlot.iife.min.js'), 'uPlot.iife.min.js'),
  'uPlot.min.css': served(() => join(uplotDist(), 'uPlot.min.css'), 'uPlot.min.css'),
};

export async function uiRoutes(app: FastifyInstance): Promise<void> {
  const cache = new Map<string, Buffer>();
  const serve = async (name: string): Promise<Buffer> => {
    const f = FILES[name];
    if (!f) throw new NotFoundError(`/ui/${name} does not exist`);
    let b = cache.get(name);
    if (!b) {
      b = await readFile(f.file());
      cache.set(name, b);
    }
    return b;
  };
  app.get('/ui', { schema: { tags: ['ui'], summary: 'The job page (HTML)', response: { 200: { type: 'string' } } } }, async (_req, reply) =>
    reply
      .header('content-type', FILES['']!.type)
      .header('cache-control', 'no-cache')
      .send(await serve('')),
  );
  app.get<{ Params: { file: string } }>(
    '/ui/:file',
    {
      schema: {
        tags: ['ui'],
        summary: "The job page's scripts and styles",
        params: { type: 'object', required: ['file'], properties: { file: { type: 'string', enum: Object.keys(FILES).filter((k) => k !== '') } } },
      },
    },
    async (req, reply) =>
      reply
        .header('content-type', FILES[req.params.file]!.type)
        .header('cache-control', 'no-cache')
        .send(await serve(req.params.file)),
  );
}
