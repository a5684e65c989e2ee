/**
 * TensorBoard event files parse back with a reader written here (TFRecord framing with masked CRC-32C,
 * Event/Summary protobuf), and MetricsLog writes metrics.jsonl lines and mirrors them to TensorBoard.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetricsLog, TensorBoardWriter, readMetricsJsonl } from '../../src/training/metrics/index.js';

/** Bitwise CRC-32C (no table), independent of the implementation under test. */
function crc32cBitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}
const mask = (c: number): number => ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;

interface Field {
  field: number;
  wire: number;
  value: bigint | Buffer;
}

function readVarint(b: Buffer, pos: number): [bigint, number] {
  let v = 0n;
  let shift = 0n;
  for (;;) {
    const byte = b[pos++]!;
    v |= BigInt(byte & 0x7f) << shift;
    shift += 7n;
    if ((byte & 0x80) === 0) return [v, pos];
  }
}

function decode(b: Buffer): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < b.length) {
    const [key, p1] = readVarint(b, pos);
    pos = p1;
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      const [v, p2] = readVarint(b, pos);
      out.push({ field, wire, value: v });
      pos = p2;
    } else if (wire === 1) {
      out.push({ field, wire, value: b.subarray(pos, pos + 8) });
      pos += 8;
    } else if (wire === 5) {
      out.push({ field, wire, value: b.subarray(pos, pos + 4) });
      pos += 4;
    } else if (wire === 2) {
      const [len, p2] = readVarint(b, pos);
      out.push({ field, wire, value: b.subarray(p2, p2 + Number(len)) });
      pos = p2 + Number(len);
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  return out;
}

interface ParsedEvent {
  wallTime?: number;
  step?: number;
  fileVersion?: string;
  values: Array<{ tag: string; value: number }>;
}

function readEvents(path: string): ParsedEvent[] {
  const buf = readFileSync(path);
  const events: ParsedEvent[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const lenBytes = buf.subarray(pos, pos + 8);
    const len = Number(lenBytes.readBigUInt64LE(0));
    assert.equal(buf.readUInt32LE(pos + 8), mask(crc32cBitwise(lenBytes)), `length CRC of record at ${pos}`);
    const data = buf.subarray(pos + 12, pos + 12 + len);
    assert.equal(data.length, len, 'record truncated');
    assert.equal(buf.readUInt32LE(pos + 12 + len), mask(crc32cBitwise(data)), `data CRC of record at ${pos}`);
    pos += 12 + len + 4;
    const ev: ParsedEvent = { values: [] };
    for (const f of decode(data)) {
      if (f.field === 1 && f.wire === 1) ev.wallTime = (f.value as Buffer).readDoubleLE(0);
      else if (f.field === 2 && f.wire === 0) ev.step = Number(f.value as bigint);
      else if (f.field === 3 && f.wire === 2) ev.fileVersion = (f.value as Buffer).toString('utf8');
      else if (f.field === 5 && f.wire === 2) {
        for (const v of decode(f.value as Buffer)) {
          assert.equal(v.field, 1);
          let tag = '';
          let value = NaN;
          for (const g of decode(v.value as Buffer)) {
            if (g.field === 1) tag = (g.value as Buffer).toString('utf8');
            if (g.field === 2 && g.wire === 5) value = (g.value as Buffer).readFloatLE(0);
          }
          ev.values.push({ tag, value });
        }
      }
    }
    events.push(ev);
  }
  return events;
}

test('the CRC-32C used by the reader is right (check value of "123456789")', () => {
  assert.equal(crc32cBitwise(Buffer.from('123456789')), 0xe3069283);
});

test('TensorBoardWriter writes TFRecord-framed events that parse back: file_version, tags, steps, values', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-'));
  try {
    const w = new TensorBoardWriter(join(dir, 'tb'), { flushEvery: 3 });
    const written: Array<[string, number, number]> = [];
    for (let step = 1; step <= 7; step++) {
      const loss = 0.6931 - step * 0.01;
      const acc = step / 8;
      w.scalar('dpo/loss', loss, step);
      w.scalar('dpo/rewards/accuracies', acc, step);
      written.push(['dpo/loss', loss, step], ['dpo/rewards/accuracies', acc, step]);
    }
    w.scalar('dpo/grad_norm', Number.NaN, 8); // skipped: not finite
    w.scalar('sft/loss', 3.25, 100000000000); // a step beyond 32 bits
    written.push(['sft/loss', 3.25, 100000000000]);
    w.close();
    w.close(); // idempotent
    const files = readdirSync(join(dir, 'tb'));
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^events\.out\.tfevents\.\d+\./);
    const events = readEvents(join(dir, 'tb', files[0]!));
    assert.equal(events[0]!.fileVersion, 'brain.Event:2');
    const scalars = events.slice(1);
    assert.equal(scalars.length, written.length);
    scalars.forEach((ev, i) => {
      const [tag, value, step] = written[i]!;
      assert.equal(ev.step, step);
      assert.equal(ev.values.length, 1);
      assert.equal(ev.values[0]!.tag, tag);
      assert.equal(ev.values[0]!.value, Math.fround(value));
      assert.ok(ev.wallTime! > 1.6e9 && ev.wallTime! < 1e11, `wall_time ${ev.wallTime} is in seconds`);
    });
    assert.throws(() => w.scalar('x', 1, 1), /closed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('MetricsLog appends one JSON line per step and mirrors numbers to TensorBoard as <stage>/<key>', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlog-'));
  try {
    const tb = new TensorBoardWriter(join(dir, 'tb'));
    const log = new MetricsLog(join(dir, 'run', 'metrics.jsonl'), { tensorboard: tb });
    log.append({ stage: 'sft', step: 1, loss: 4.5, lr: 1e-4 });
    log.append({ stage: 'dpo', step: 1, loss: 0.6931, 'rewards/accuracies': 0, 'rewards/margins': 0, note: 'text is not a scalar' });
    log.append({ stage: 'dpo', step: 2, loss: Number.NaN, eval_loss: 0.69 });
    appendFileSync(join(dir, 'run', 'metrics.jsonl'), '{"stage":"dpo","st'); // a line cut by a crash
    tb.close();
    const recs = readMetricsJsonl(join(dir, 'run', 'metrics.jsonl'));
    assert.equal(recs.length, 3);
    assert.equal(recs[0]!.stage, 'sft');
    assert.equal(recs[1]!['rewards/accuracies'], 0);
    assert.equal(recs[2]!.loss, null, 'NaN is written as null');
    assert.equal(typeof recs[0]!.time, 'string');
    const events = readEvents(join(dir, 'tb', readdirSync(join(dir, 'tb'))[0]!)).slice(1);
    const tags = events.map((e) => `${e.values[0]!.tag}@${e.step}`);
    assert.deepEqual(tags, ['sft/loss@1', 'sft/lr@1', 'dpo/loss@1', 'dpo/rewards/accuracies@1', 'dpo/rewards/margins@1', 'dpo/eval_loss@2']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
