/**
 * FirebaseStorage settings without any network: env parsing, constructor validation (typed errors naming the
 * setting), backoff schedule, content types, local hashes.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { verifyManifest, writeManifest } from '../../src/storage/manifest.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { backoffDelayMs, contentTypeFor, FirebaseStorage, firebaseOptionsFromEnv, hashFile, StorageError } from '../../src/storage/firebase.js';

const silent = pino({ level: 'silent' });
const isConfigError = (re: RegExp) => (err: unknown) => err instanceof StorageError && err.code === 'INVALID_STORAGE_CONFIG' && re.test(err.message);

describe('firebase storage options', () => {
  it('reads the FIREBASE_* environment, empty meaning default', () => {
    const o = firebaseOptionsFromEnv({
      FIREBASE_BUCKET: 'gs://my-proj.appspot.com',
      FIREBASE_UPLOAD_MAX_ATTEMPTS: '7',
      FIREBASE_SIGNED_URLS: 'true',
      FIREBASE_SIGNED_URL_TTL_SECONDS: '',
      FIREBASE_DELETE_LOCAL: '0',
      FIREBASE_PREFIX: 'models/',
    });
    assert.equal(o.bucket, 'gs://my-proj.appspot.com');
    assert.equal(o.maxAttempts, 7);
    assert.equal(o.signedUrls, true);
    assert.equal(o.signedUrlTtlSeconds, undefined);
    assert.equal(o.deleteLocalAfterUpload, false);
    const s = new FirebaseStorage({ ...o, logger: silent });
    assert.equal(s.bucketName, 'my-proj.appspot.com');
    assert.equal(s.artifactUri('c1', 'j1'), 'gs://my-proj.appspot.com/models/c1/j1');
  });

  it('names the variable when it is missing or malformed', () => {
    assert.throws(() => firebaseOptionsFromEnv({}), isConfigError(/FIREBASE_BUCKET must be set/));
    assert.throws(
      () => firebaseOptionsFromEnv({ FIREBASE_BUCKET: 'b-1', FIREBASE_UPLOAD_MAX_ATTEMPTS: 'five' }),
      isConfigError(/FIREBASE_UPLOAD_MAX_ATTEMPTS/),
    );
    assert.throws(() => firebaseOptionsFromEnv({ FIREBASE_BUCKET: 'b-1', FIREBASE_SIGNED_URLS: 'maybe' }), isConfigError(/FIREBASE_SIGNED_URLS/));
  });

  it('rejects bad bucket names, prefixes, attempts, chunk sizes and TTLs', () => {
    assert.throws(() => new FirebaseStorage({ bucket: 'Bad_Bucket!', logger: silent }), isConfigError(/FIREBASE_BUCKET/));
    assert.throws(() => new FirebaseStorage({ bucket: 'ok-bucket', prefix: '../x/', logger: silent }), isConfigError(/prefix/));
    assert.throws(() => new FirebaseStorage({ bucket: 'ok-bucket', maxAttempts: 0, logger: silent }), isConfigError(/maxAttempts/));
    assert.throws(() => new FirebaseStorage({ bucket: 'ok-bucket', chunkSizeBytes: 1000, logger: silent }), isConfigError(/262144/));
    assert.throws(() => new FirebaseStorage({ bucket: 'ok-bucket', signedUrlTtlSeconds: 604_801, logger: silent }), isConfigError(/signedUrlTtlSeconds/));
  });

  it('rejects an emulator host with a scheme (firebase-admin would throw later, less clearly)', () => {
    const prev = process.env.FIREBASE_STORAGE_EMULATOR_HOST;
    process.env.FIREBASE_STORAGE_EMULATOR_HOST = 'http://127.0.0.1:9199';
    try {
      assert.throws(() => new FirebaseStorage({ bucket: 'ok-bucket', logger: silent }), isConfigError(/without http/));
    } finally {
      if (prev === undefined) delete process.env.FIREBASE_STORAGE_EMULATOR_HOST;
      else process.env.FIREBASE_STORAGE_EMULATOR_HOST = prev;
    }
  });

  it('fails at once, naming GOOGLE_APPLICATION_CREDENTIALS, when the key file is missing (no network needed)', async () => {
    assert.equal(process.env.FIREBASE_STORAGE_EMULATOR_HOST ?? '', '', 'this test needs the real (unreachable) endpoint, not an emulator');
    const dir = await mkdtemp(join(tmpdir(), 'dpo-cred-'));
    const prev = process.env.GOOGLE_APPLICATION_CREDENTIALS;
    process.env.GOOGLE_APPLICATION_CREDENTIALS = join(dir, 'missing-service-account.json');
    try {
      await mkdir(join(dir, 'art'));
      await writeFile(join(dir, 'art', 'metrics.jsonl'), '{}\n');
      await writeManifest(join(dir, 'art'));
      const s = new FirebaseStorage({ bucket: 'demo-cred.appspot.com', maxAttempts: 4, backoffBaseMs: 1, logger: silent });
      await assert.rejects(s.putArtifact(join(dir, 'art'), 'c', 'j'), (e: unknown) => {
        assert.ok(e instanceof StorageError);
        assert.equal(e.code, 'STORAGE_UPLOAD_FAILED');
        assert.equal(e.details.attempts, 1);
        assert.match(e.message, /without retry/);
        assert.match(e.message, /GOOGLE_APPLICATION_CREDENTIALS to a readable service-account JSON/);
        return true;
      });
      assert.deepEqual(await verifyManifest(join(dir, 'art')), []);
    } finally {
      if (prev === undefined) delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
      else process.env.GOOGLE_APPLICATION_CREDENTIALS = prev;
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses ids that would escape the job prefix', async () => {
    const s = new FirebaseStorage({ bucket: 'ok-bucket', logger: silent });
    await assert.rejects(s.putArtifact('/nonexistent', '..', 'j'), (e: unknown) => e instanceof StorageError && /communityId/.test(e.message));
    await assert.rejects(s.putArtifact('/nonexistent', 'c', 'a/b'), (e: unknown) => e instanceof StorageError && /jobId/.test(e.message));
  });
});

describe('backoff, content types, hashes', () => {
  it('doubles the delay per retry within ±20 % and caps it', () => {
    assert.equal(
      backoffDelayMs(1, 100, 10_000, () => 0.5),
      100,
    );
    assert.equal(
      backoffDelayMs(4, 100, 10_000, () => 0.5),
      800,
    );
    assert.equal(
      backoffDelayMs(20, 100, 10_000, () => 0.5),
      10_000,
    );
    assert.equal(
      backoffDelayMs(3, 100, 10_000, () => 0),
      320,
    );
    assert.equal(
      backoffDelayMs(3, 100, 10_000, () => 1),
      480,
    );
  });

  it('maps artifact files to content types', () => {
    assert.equal(contentTypeFor('model/config.json'), 'application/json');
    assert.equal(contentTypeFor('metrics.jsonl'), 'application/x-ndjson');
    assert.equal(contentTypeFor('model/model.safetensors'), 'application/octet-stream');
    assert.equal(contentTypeFor('plot.PNG'), 'image/png');
    assert.equal(contentTypeFor('events.out.tfevents.1'), 'application/octet-stream');
  });

  it('hashes a file: sha256 hex, MD5 base64, CRC32C base64 (RFC 3720 check value)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dpo-hash-'));
    try {
      const p = join(dir, 'x');
      await writeFile(p, '123456789');
      const h = await hashFile(p);
      assert.equal(h.size, 9);
      assert.equal(h.sha256, createHash('sha256').update('123456789').digest('hex'));
      assert.equal(h.md5, createHash('md5').update('123456789').digest('base64'));
      // CRC32C("123456789") = 0xE3069283 (the standard check value), big-endian base64 as GCS reports it.
      assert.equal(h.crc32c, Buffer.from([0xe3, 0x06, 0x92, 0x83]).toString('base64'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
