/**
 * A small fake of the Google Cloud Storage JSON API for tests: the routes @google-cloud/storage 7 uses to
 * upload and verify objects when STORAGE_EMULATOR_HOST points at it (research: service-anchors.md §4).
 *
 * - `POST /upload/storage/v1/b/:bucket/o?uploadType=multipart&name=…`  multipart/related: JSON metadata + bytes
 * - `POST /upload/storage/v1/b/:bucket/o?uploadType=resumable&name=…`  starts a session (Location header)
 * - `PUT  <session>`  with `Content-Range: bytes A-B/T | A-*\/T | *\/T`; 308 + Range until complete, then 200
 * - `GET  [/storage/v1]/b/:bucket/o/:object`  object resource (`?alt=media`: the bytes)
 * - `DELETE` the same path
 *
 * Like GCS, it computes md5Hash/crc32c (base64) of the bytes it received and rejects (400) an upload whose
 * metadata carried a different md5Hash/crc32c. Faults: `failUploads` answers upload requests with a status,
 * `corruptHashes` makes the object resource report wrong hashes.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CRC32C } from '@google-cloud/storage';

export interface FakeObject {
  bucket: string;
  name: string;
  data: Buffer;
  contentType: string;
  metadata: Record<string, string>;
  md5Hash: string;
  crc32c: string;
  generation: number;
  /** RFC 3339 time the object was stored (GCS's `timeCreated`) */
  timeCreated: string;
}

export interface LoggedRequest {
  method: string;
  kind: 'multipart' | 'resumable-start' | 'resumable-put' | 'metadata' | 'media' | 'delete' | 'other';
  object: string;
  status: number;
}

interface Session {
  bucket: string;
  name: string;
  meta: Record<string, unknown>;
  contentType: string;
  chunks: Buffer[];
  received: number;
}

interface Fault {
  object: string | RegExp;
  kinds: LoggedRequest['kind'][];
  status: number;
  remaining: number;
}

const md5b64 = (b: Buffer): string => createHash('md5').update(b).digest('base64');
const crcb64 = (b: Buffer): string => {
  const c = new CRC32C();
  c.update(b);
  return c.toString();
};

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of req) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Split a multipart/related body into its parts (headers text + body bytes). */
function parseMultipart(body: Buffer, boundary: string): { headers: string; body: Buffer }[] {
  const delim = Buffer.from(`--${boundary}`);
  const out: { headers: string; body: Buffer }[] = [];
  let pos = body.indexOf(delim);
  while (pos >= 0) {
    let start = pos + delim.length;
    if (body.subarray(start, start + 2).toString() === '--') break;
    if (body.subarray(start, start + 2).toString() === '\r\n') start += 2;
    const next = body.indexOf(delim, start);
    if (next < 0) break;
    let part = body.subarray(start, next);
    if (part.subarray(part.length - 2).toString() === '\r\n') part = part.subarray(0, part.length - 2);
    const sep = part.indexOf('\r\n\r\n');
    out.push({ headers: part.subarray(0, sep).toString(), body: part.subarray(sep + 4) });
    pos = next;
  }
  return out;
}

export class FakeGcs {
  readonly objects = new Map<string, FakeObject>();
  readonly log: LoggedRequest[] = [];
  private readonly sessions = new Map<string, Session>();
  private readonly faults: Fault[] = [];
  private readonly corrupt = new Set<string>();
  private server: Server | undefined;
  private nextId = 1;
  private generation = 1;
  host = '';

  /** Listen on 127.0.0.1 on a free port; `host` becomes `127.0.0.1:<port>`. */
  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 500, message: String(err) } }));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.host;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** Answer the next `times` upload requests (of `kinds`) for `object` (a name or a pattern) with `status` (Infinity = always). */
  failUploads(object: string | RegExp, status: number, times: number, kinds: LoggedRequest['kind'][] = ['multipart', 'resumable-start']): void {
    this.faults.push({ object, kinds, status, remaining: times });
  }

  /** Report wrong md5Hash and crc32c for `object` in its metadata (the stored bytes stay right). */
  corruptHashes(object: string): void {
    this.corrupt.add(object);
  }

  /** Requests logged for one object, optionally of one kind. */
  requestsFor(object: string, kind?: LoggedRequest['kind']): LoggedRequest[] {
    return this.log.filter((r) => r.object === object && (kind === undefined || r.kind === kind));
  }

  private key(bucket: string, name: string): string {
    return `${bucket}/${name}`;
  }

  private resource(o: FakeObject): Record<string, unknown> {
    const bad = this.corrupt.has(o.name);
    return {
      kind: 'storage#object',
      id: `${o.bucket}/${o.name}/${o.generation}`,
      name: o.name,
      bucket: o.bucket,
      generation: String(o.generation),
      size: String(o.data.length),
      contentType: o.contentType,
      md5Hash: bad ? md5b64(Buffer.from('not the data')) : o.md5Hash,
      crc32c: bad ? crcb64(Buffer.from('not the data')) : o.crc32c,
      metadata: o.metadata,
      timeCreated: o.timeCreated,
    };
  }

  private send(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
    if (body === undefined) {
      res.writeHead(status, headers);
      res.end();
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers });
    res.end(JSON.stringify(body));
  }

  private error(res: ServerResponse, status: number, message: string): void {
    this.send(res, status, { error: { code: status, message, errors: [{ message, reason: 'fake' }] } });
  }

  private injected(kind: LoggedRequest['kind'], object: string): number | undefined {
    const f = this.faults.find(
      (x) => (typeof x.object === 'string' ? x.object === object : x.object.test(object)) && x.kinds.includes(kind) && x.remaining > 0,
    );
    if (!f) return undefined;
    f.remaining -= 1;
    return f.status;
  }

  /** Store an object as GCS would: hash what arrived, reject when the client's declared hashes differ. */
  private commit(bucket: string, name: string, data: Buffer, meta: Record<string, unknown>, contentType: string): { status: number; body: unknown } {
    const md5Hash = md5b64(data);
    const crc32c = crcb64(data);
    if (typeof meta.md5Hash === 'string' && meta.md5Hash !== md5Hash) {
      return { status: 400, body: { error: { code: 400, message: 'Provided MD5 hash does not match the calculated MD5 hash of the data.' } } };
    }
    if (typeof meta.crc32c === 'string' && meta.crc32c !== crc32c) {
      return { status: 400, body: { error: { code: 400, message: 'Provided CRC32C does not match the calculated CRC32C of the data.' } } };
    }
    const obj: FakeObject = {
      bucket,
      name,
      data,
      contentType: contentType || 'application/octet-stream',
      metadata: (meta.metadata as Record<string, string>) ?? {},
      md5Hash,
      crc32c,
      generation: this.generation++,
      timeCreated: new Date().toISOString(),
    };
    this.objects.set(this.key(bucket, name), obj);
    return { status: 200, body: this.resource(obj) };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    const method = req.method ?? 'GET';
    const upload = /^\/upload\/storage\/v1\/b\/([^/]+)\/o$/.exec(url.pathname);
    const objectPath = /^(?:\/storage\/v1)?\/b\/([^/]+)\/o\/(.+)$/.exec(url.pathname);
    const log = (kind: LoggedRequest['kind'], object: string, status: number): void => {
      this.log.push({ method, kind, object, status });
    };

    if (upload && method === 'POST' && url.searchParams.get('uploadType') === 'multipart') {
      const bucket = decodeURIComponent(upload[1]);
      const body = await readBody(req);
      const boundary = /boundary="?([^";]+)"?/.exec(req.headers['content-type'] ?? '')?.[1];
      if (!boundary) return this.error(res, 400, 'multipart body without boundary');
      const [metaPart, dataPart] = parseMultipart(body, boundary);
      const meta = JSON.parse(metaPart.body.toString('utf8')) as Record<string, unknown>;
      const name = url.searchParams.get('name') ?? String(meta.name ?? '');
      const fault = this.injected('multipart', name);
      if (fault !== undefined) {
        log('multipart', name, fault);
        return this.error(res, fault, `injected fault ${fault}`);
      }
      const ctype = /content-type:\s*([^\r\n]+)/i.exec(dataPart.headers)?.[1] ?? String(meta.contentType ?? '');
      const r = this.commit(bucket, name, dataPart.body, meta, String(meta.contentType ?? ctype));
      log('multipart', name, r.status);
      return this.send(res, r.status, r.body);
    }

    if (upload && method === 'POST' && url.searchParams.get('uploadType') === 'resumable') {
      const bucket = decodeURIComponent(upload[1]);
      const raw = (await readBody(req)).toString('utf8');
      const meta = (raw ? JSON.parse(raw) : {}) as Record<string, unknown>;
      const name = url.searchParams.get('name') ?? String(meta.name ?? '');
      const fault = this.injected('resumable-start', name);
      if (fault !== undefined) {
        log('resumable-start', name, fault);
        return this.error(res, fault, `injected fault ${fault}`);
      }
      const id = String(this.nextId++);
      const contentType = String(req.headers['x-upload-content-type'] ?? meta.contentType ?? '');
      this.sessions.set(id, { bucket, name, meta, contentType, chunks: [], received: 0 });
      log('resumable-start', name, 200);
      const location = `http://${this.host}/upload/storage/v1/b/${upload[1]}/o?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${id}`;
      return this.send(res, 200, undefined, { location });
    }

    if (upload && method === 'PUT' && url.searchParams.get('upload_id')) {
      const s = this.sessions.get(url.searchParams.get('upload_id')!);
      const body = await readBody(req);
      if (!s) return this.error(res, 404, 'no such upload session');
      const fault = this.injected('resumable-put', s.name);
      if (fault !== undefined) {
        log('resumable-put', s.name, fault);
        return this.error(res, fault, `injected fault ${fault}`);
      }
      const range = String(req.headers['content-range'] ?? '');
      const m = /^bytes (\*|(\d+)-(\d+|\*))\/(\d+|\*)$/.exec(range);
      if (!m) return this.error(res, 400, `bad Content-Range "${range}"`);
      const total = m[4] === '*' ? undefined : Number(m[4]);
      if (m[1] !== '*') {
        const start = Number(m[2]);
        if (start !== s.received) return this.error(res, 400, `chunk starts at ${start}, expected ${s.received}`);
        s.chunks.push(body);
        s.received += body.length;
      }
      const done = total !== undefined ? s.received >= total : m[3] === '*';
      if (!done) {
        log('resumable-put', s.name, 308);
        return this.send(res, 308, undefined, s.received > 0 ? { range: `bytes=0-${s.received - 1}` } : {});
      }
      const r = this.commit(s.bucket, s.name, Buffer.concat(s.chunks), s.meta, s.contentType || String(s.meta.contentType ?? ''));
      log('resumable-put', s.name, r.status);
      return this.send(res, r.status, r.body);
    }

    if (objectPath) {
      const bucket = decodeURIComponent(objectPath[1]);
      const name = decodeURIComponent(objectPath[2]);
      const obj = this.objects.get(this.key(bucket, name));
      if (method === 'DELETE') {
        log('delete', name, obj ? 204 : 404);
        if (!obj) return this.error(res, 404, `No such object: ${bucket}/${name}`);
        this.objects.delete(this.key(bucket, name));
        return this.send(res, 204);
      }
      if (method === 'GET') {
        const media = url.searchParams.get('alt') === 'media';
        log(media ? 'media' : 'metadata', name, obj ? 200 : 404);
        if (!obj) return this.error(res, 404, `No such object: ${bucket}/${name}`);
        if (media) {
          res.writeHead(200, { 'content-type': obj.contentType, 'content-length': String(obj.data.length) });
          return void res.end(obj.data);
        }
        return this.send(res, 200, this.resource(obj));
      }
    }
    log('other', url.pathname, 404);
    this.error(res, 404, `fake GCS has no route ${method} ${url.pathname}`);
  }
}
