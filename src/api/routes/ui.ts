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
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { NotFoundError } from '../errors.js';

const here = dirname(fileURLToPath(import.meta.url));

/** The page's directory: src/ui next to src/api (also from dist/src/api, which has no copy: use the source). */
function uiDir(): string {
  return join(here, '..', '..', 'ui').replace(`${join('dist', 'src')}`, 'src');
}

function uplotDist(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
}

const FILES: Record<string, { file: () => string; type: string }> = {
  '': { file: () => join(uiDir(), 'index.html'), type: 'text/html; charset=utf-8' },
  'app.js': { file: () => join(uiDir(), 'app.js'), type: 'text/javascript; charset=utf-8' },
  'style.css': { file: () => join(uiDir(), 'style.css'), type: 'text/css; charset=utf-8' },
  'uPlot.iife.min.js': { file: () => join(uplotDist(), 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uPlot.min.css': { file: () => join(uplotDist(), 'uPlot.min.css'), type: 'text/css; charset=utf-8' },
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
