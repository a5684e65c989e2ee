/**
 * FirebaseStorage over real HTTP: firebase-admin 13 → @google-cloud/storage 7 → a fake GCS JSON API on
 * 127.0.0.1 (FIREBASE_STORAGE_EMULATOR_HOST). Covers multipart and resumable (chunked) uploads, hashes,
 * transient 503s retried to success, permanent failures with the local artifact kept, hash mismatches,
 * local deletion after a verified upload, V4 signed URLs from a service-account key, verifyArtifact (the
 * check of a stored artifact against a manifest digest from Redis, after a lost lock) and the dataset
 * objects' statObject.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readFile, rm, writeFile, appendFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { FakeGcs } from './firebase-fake-gcs.js';
import { writeManifest, verifyManifest } from '../../src/storage/manifest.js';
import { FirebaseStorage, StorageError, type FirebaseStorageOptions } from '../../src/storage/firebase.js';

const BUCKET = 'demo-test.appspot.com';
const CLIENT_EMAIL = 'dpo-test@demo-test.iam.gserviceaccount.com';
const silent = pino({ level: 'silent' });
const fake = new FakeGcs();
let root = '';

before(async () => {
  await fake.start();
  root = await mkdtemp(join(tmpdir(), 'dpo-firebase-'));
  // Must be set before firebase-admin builds its Storage client (it copies it into STORAGE_EMULATOR_HOST).
  process.env.FIREBASE_STORAGE_EMULATOR_HOST = fake.host;
  delete process.env.STORAGE_EMULATOR_HOST;
  // A service-account key made here: signing is local, and with an emulator host no token is ever fetched.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyFile = join(root, 'service-account.json');
  await writeFile(
    keyFile,
    JSON.stringify({
      type: 'service_account',
      project_id: 'demo-test',
      private_key_id: 'test-key',
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      client_email: CLIENT_EMAIL,
      client_id: '1',
      token_uri: 'http://127.0.0.1:9/token',
    }),
  );
  process.env.GOOGLE_APPLICATION_CREDENTIALS = keyFile;
});

after(async () => {
  await fake.stop();
  await rm(root, { recursive: true, force: true });
});

/** An artifact dir like the trainer's: model weights (binary), config.json, metrics.jsonl, manifest.json. */
async function makeArtifact(name: string, weightBytes = 600 * 1024): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, 'model'), { recursive: true });
  await writeFile(join(dir, 'model', 'model.safetensors'), randomBytes(weightBytes));
  await writeFile(join(dir, 'model', 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 64 }));
  await writeFile(join(dir, 'metrics.jsonl'), '{"stage":"dpo","step":1,"loss":0.69}\n');
  await writeManifest(dir);
  return dir;
}

function storage(extra: Partial<FirebaseStorageOptions> = {}): FirebaseStorage {
  return new FirebaseStorage({
    bucket: `gs://${BUCKET}`,
    logger: silent,
    backoffBaseMs: 5,
    backoffMaxMs: 20,
    resumableThresholdBytes: 256 * 1024,
    chunkSizeBytes: 256 * 1024,
    ...extra,
  });
}

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('base64');
const obj = (name: string) => fake.objects.get(`${BUCKET}/${name}`);

describe('FirebaseStorage against a fake GCS JSON API', () => {
  it('uploads every manifest file (multipart and chunked resumable) with the right bytes, hashes and types', async () => {
    const dir = await makeArtifact('ok');
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { files: { path: string }[] };
    const result = await storage().putArtifact(dir, 'community_1', 'job-ok');

    assert.equal(result.uri, `gs://${BUCKET}/community_1/job-ok`);
    assert.deepEqual(result.files.map((f) => f.path).sort(), manifest.files.map((f) => f.path).sort());
    assert.equal(result.signedUrls, undefined);
    for (const rel of [...manifest.files.map((f) => f.path), 'manifest.json']) {
      const stored = obj(`community_1/job-ok/${rel}`);
      assert.ok(stored, `${rel} stored`);
      const local = await readFile(join(dir, rel));
      assert.ok(stored.data.equals(local), `${rel} bytes equal`);
      assert.equal(stored.md5Hash, md5(local), `${rel} md5`);
      assert.equal(stored.metadata.sha256, createHash('sha256').update(local).digest('hex'));
    }
    assert.equal(obj('community_1/job-ok/model/config.json')!.contentType, 'application/json');
    assert.equal(obj('community_1/job-ok/model/model.safetensors')!.contentType, 'application/octet-stream');

    // The 600 KiB weights went through a resumable session in 256 KiB chunks (308s, then 200); the rest multipart.
    const puts = fake.requestsFor('community_1/job-ok/model/model.safetensors', 'resumable-put');
    assert.deepEqual(
      puts.map((r) => r.status),
      [308, 308, 200],
    );
    assert.equal(fake.requestsFor('community_1/job-ok/model/config.json', 'multipart').length, 1);
    // Every object was read back for verification, and manifest.json was written after all the others.
    for (const rel of manifest.files.map((f) => f.path)) {
      assert.equal(fake.requestsFor(`community_1/job-ok/${rel}`, 'metadata').length, 1);
    }
    const writes = fake.log.filter((r) => r.object.startsWith('community_1/job-ok/') && r.status < 300 && r.kind !== 'metadata');
    assert.equal(writes.at(-1)!.object, 'community_1/job-ok/manifest.json');
    // Kept locally by default.
    assert.deepEqual(await verifyManifest(dir), []);
  });

  it('retries an upload that fails once with 503 (multipart and resumable) and succeeds', async () => {
    const dir = await makeArtifact('transient');
    fake.failUploads('c2/job-retry/model/config.json', 503, 1);
    fake.failUploads('c2/job-retry/model/model.safetensors', 503, 1, ['resumable-put']);
    const result = await storage().putArtifact(dir, 'c2', 'job-retry');

    assert.equal(result.uri, `gs://${BUCKET}/c2/job-retry`);
    assert.deepEqual(
      fake.requestsFor('c2/job-retry/model/config.json', 'multipart').map((r) => r.status),
      [503, 200],
    );
    const starts = fake.requestsFor('c2/job-retry/model/model.safetensors', 'resumable-start');
    assert.equal(starts.length, 2, 'a new resumable session after the failed one');
    for (const rel of ['model/config.json', 'model/model.safetensors']) {
      assert.ok(obj(`c2/job-retry/${rel}`)!.data.equals(await readFile(join(dir, rel))));
    }
  });

  it('gives up after maxAttempts with STORAGE_UPLOAD_FAILED naming the file, and keeps the local artifact', async () => {
    const dir = await makeArtifact('down');
    fake.failUploads('c3/job-down/metrics.jsonl', 503, Infinity);
    const s = storage({ maxAttempts: 3, deleteLocalAfterUpload: true });
    await assert.rejects(s.putArtifact(dir, 'c3', 'job-down'), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.equal(err.code, 'STORAGE_UPLOAD_FAILED');
      assert.equal(err.file, 'metrics.jsonl');
      assert.match(err.message, /"metrics\.jsonl"/);
      assert.match(err.message, /after 3 attempt/);
      assert.match(err.message, /503/);
      assert.match(err.message, /local artifact is kept/);
      return true;
    });
    assert.equal(fake.requestsFor('c3/job-down/metrics.jsonl', 'multipart').length, 3);
    assert.equal(obj('c3/job-down/manifest.json'), undefined, 'no manifest.json marks the bucket copy incomplete');
    assert.deepEqual(await verifyManifest(dir), [], 'local artifact intact despite deleteLocalAfterUpload');
  });

  it('does not retry a 403 and says which permission to grant', async () => {
    const dir = await makeArtifact('forbidden');
    fake.failUploads('c4/job-403/model/config.json', 403, Infinity);
    await assert.rejects(storage({ maxAttempts: 4 }).putArtifact(dir, 'c4', 'job-403'), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.equal(err.code, 'STORAGE_UPLOAD_FAILED');
      assert.equal(err.file, 'model/config.json');
      assert.match(err.message, /without retry/);
      assert.match(err.message, /roles\/storage\.objectAdmin/);
      return true;
    });
    assert.equal(fake.requestsFor('c4/job-403/model/config.json', 'multipart').length, 1);
  });

  it('detects a stored object whose hashes differ from the local file, deletes it and fails', async () => {
    const dir = await makeArtifact('corrupt');
    fake.corruptHashes('c5/job-hash/model/config.json');
    await assert.rejects(storage({ maxAttempts: 2 }).putArtifact(dir, 'c5', 'job-hash'), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.equal(err.code, 'STORAGE_UPLOAD_FAILED');
      assert.equal(err.file, 'model/config.json');
      assert.match(err.message, /MD5 mismatch/);
      assert.match(err.message, /CRC32C mismatch/);
      return true;
    });
    assert.equal(fake.requestsFor('c5/job-hash/model/config.json', 'multipart').length, 2);
    assert.ok(fake.requestsFor('c5/job-hash/model/config.json', 'delete').length >= 1);
    assert.equal(obj('c5/job-hash/model/config.json'), undefined, 'the unverifiable object is removed');
    assert.deepEqual(await verifyManifest(dir), []);
  });

  it('refuses a local artifact that changed after its manifest was written, uploading nothing', async () => {
    const dir = await makeArtifact('tampered');
    await appendFile(join(dir, 'metrics.jsonl'), '{"extra":true}\n');
    await assert.rejects(storage().putArtifact(dir, 'c6', 'job-tampered'), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.equal(err.code, 'INVALID_ARTIFACT');
      assert.equal(err.file, 'metrics.jsonl');
      return true;
    });
    assert.equal(obj('c6/job-tampered/manifest.json'), undefined);
  });

  it('deletes the local copy only after a verified upload, and returns V4 signed URLs', async () => {
    const dir = await makeArtifact('cleanup', 1000);
    const result = await storage({ deleteLocalAfterUpload: true, signedUrls: true, signedUrlTtlSeconds: 600 }).putArtifact(dir, 'c7', 'job-clean');
    await assert.rejects(access(dir), /ENOENT/);
    assert.ok(obj('c7/job-clean/manifest.json'));
    const urls = result.signedUrls ?? {};
    assert.deepEqual(Object.keys(urls).sort(), ['manifest.json', 'metrics.jsonl', 'model/config.json', 'model/model.safetensors']);
    const u = new URL(urls['model/model.safetensors']);
    assert.match(u.pathname, /c7\/job-clean\/model\/model\.safetensors$/);
    assert.equal(u.searchParams.get('X-Goog-Algorithm'), 'GOOG4-RSA-SHA256');
    for (const [path, url] of Object.entries(urls)) {
      assert.equal(new URL(url).searchParams.get('X-Goog-Expires'), '600', `${path}: the TTL exactly, even across a second boundary`);
    }
    assert.ok(u.searchParams.get('X-Goog-Credential')?.startsWith(`${CLIENT_EMAIL}/`));
    assert.match(u.searchParams.get('X-Goog-Signature') ?? '', /^[0-9a-f]{512}$/);
  });

  it('verifyArtifact: the stored artifact when its manifest matches the digest and every object matches it; else null', async () => {
    const dir = await makeArtifact('verify', 1000);
    const s = storage();
    const put = await s.putArtifact(dir, 'c8', 'job-verify');
    const digest = createHash('sha256')
      .update(await readFile(join(dir, 'manifest.json')))
      .digest('hex');
    const before = fake.log.length;
    const got = await s.verifyArtifact('c8', 'job-verify', digest);
    assert.deepEqual(got, { uri: put.uri, files: put.files });
    // only the manifest is downloaded; every other object is checked by its metadata
    const reads = fake.log.slice(before);
    assert.deepEqual(
      reads.filter((r) => r.kind === 'media').map((r) => r.object),
      ['c8/job-verify/manifest.json'],
    );
    assert.deepEqual(
      reads
        .filter((r) => r.kind === 'metadata')
        .map((r) => r.object)
        .sort(),
      put.files.map((f) => `c8/job-verify/${f.path}`).sort(),
    );
    assert.ok(!reads.some((r) => r.kind === 'multipart' || r.kind.startsWith('resumable')), 'nothing is written');

    // another digest (Redis recorded another manifest), no such artifact: null
    assert.equal(await s.verifyArtifact('c8', 'job-verify', 'f'.repeat(64)), null);
    assert.equal(await s.verifyArtifact('c8', 'job-none', digest), null);
    // an object whose stored sha256 differs from the manifest's, then one that is gone: null
    const weights = obj('c8/job-verify/model/model.safetensors')!;
    const sha = weights.metadata.sha256!;
    weights.metadata.sha256 = '0'.repeat(64);
    assert.equal(await s.verifyArtifact('c8', 'job-verify', digest), null);
    weights.metadata.sha256 = sha;
    assert.deepEqual(await s.verifyArtifact('c8', 'job-verify', digest), { uri: put.uri, files: put.files });
    fake.objects.delete(`${BUCKET}/c8/job-verify/metrics.jsonl`);
    assert.equal(await s.verifyArtifact('c8', 'job-verify', digest), null);
    // unsafe ids are refused before any request
    const n = fake.log.length;
    await assert.rejects(s.verifyArtifact('../c8', 'job-verify', digest), (err: unknown) => err instanceof StorageError);
    await assert.rejects(s.verifyArtifact('c8', 'job/../x', digest), (err: unknown) => err instanceof StorageError);
    assert.equal(fake.log.length, n);
  });

  it('statObject: size and stored time of a dataset object without downloading it; null when absent', async () => {
    const s = storage();
    await s.putObject('.datasets/c9/abc.json', '[{"a":"b"}]');
    const before = fake.log.length;
    const st = await s.statObject('.datasets/c9/abc.json');
    assert.equal(st?.bytes, 11);
    assert.equal(st?.storedAt, obj('.datasets/c9/abc.json')!.timeCreated);
    assert.equal(await s.statObject('.datasets/c9/none.json'), null);
    assert.ok(!fake.log.slice(before).some((r) => r.kind === 'media'), 'no download');
  });
});
