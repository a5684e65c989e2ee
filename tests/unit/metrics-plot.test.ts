/**
 * writeTrainingPlot: the PNG has a valid signature, IHDR and chunk CRCs (checked with a CRC-32 written
 * here), and its IDAT inflates to the right number of bytes and unfilters (PNG filter types 0-4, as any
 * encoder may choose them per row); the series are actually drawn.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { writeTrainingPlot } from '../../src/training/metrics/index.js';

function crc32Bitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

interface Png {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  pixels: Buffer; // RGB rows without filter bytes
}

/** Parse and validate a PNG with 8-bit RGB (colour type 2) or RGBA (6), filter type 0 rows. */
function readPng(buf: Buffer): Png {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  let pos = 8;
  const chunks: Array<{ type: string; body: Buffer }> = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.subarray(pos + 4, pos + 8).toString('latin1');
    const body = buf.subarray(pos + 8, pos + 8 + len);
    const crc = buf.readUInt32BE(pos + 8 + len);
    assert.equal(crc, crc32Bitwise(buf.subarray(pos + 4, pos + 8 + len)), `CRC of chunk ${type}`);
    chunks.push({ type, body });
    pos += 12 + len;
  }
  assert.equal(pos, buf.length, 'no trailing bytes');
  assert.equal(chunks[0]!.type, 'IHDR');
  assert.equal(chunks.at(-1)!.type, 'IEND');
  const ihdr = chunks[0]!.body;
  assert.equal(ihdr.length, 13);
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const bitDepth = ihdr[8]!;
  const colorType = ihdr[9]!;
  assert.equal(bitDepth, 8);
  assert.ok(colorType === 2 || colorType === 6);
  assert.equal(ihdr[10], 0);
  assert.equal(ihdr[11], 0);
  assert.equal(ihdr[12], 0);
  const channels = colorType === 2 ? 3 : 4;
  const raw = inflateSync(Buffer.concat(chunks.filter((c) => c.type === 'IDAT').map((c) => c.body)));
  const stride = width * channels;
  assert.equal(raw.length, height * (stride + 1), 'inflated IDAT size = height * (1 + width * channels)');
  // undo the per-row filters (PNG spec section 9: None, Sub, Up, Average, Paeth; bpp = channels)
  const rows = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    assert.ok(filter <= 4, `row ${y} has a valid filter type (${filter})`);
    for (let i = 0; i < stride; i++) {
      const x = raw[y * (stride + 1) + 1 + i]!;
      const a = i >= channels ? rows[y * stride + i - channels]! : 0;
      const b = y > 0 ? rows[(y - 1) * stride + i]! : 0;
      const c = i >= channels && y > 0 ? rows[(y - 1) * stride + i - channels]! : 0;
      let pred = 0;
      if (filter === 1) pred = a;
      else if (filter === 2) pred = b;
      else if (filter === 3) pred = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      rows[y * stride + i] = (x + pred) & 0xff;
    }
  }
  const pixels = Buffer.alloc(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const s = y * stride + x * channels;
      pixels.set(rows.subarray(s, s + 3), (y * width + x) * 3);
    }
  }
  return { width, height, bitDepth, colorType, pixels };
}

function countColor(p: Png, rgb: [number, number, number]): number {
  let n = 0;
  for (let i = 0; i < p.pixels.length; i += 3) if (p.pixels[i] === rgb[0] && p.pixels[i + 1] === rgb[1] && p.pixels[i + 2] === rgb[2]) n++;
  return n;
}

test('the CRC-32 used by the reader is right (check value of "123456789")', () => {
  assert.equal(crc32Bitwise(Buffer.from('123456789')), 0xcbf43926);
});

test('writeTrainingPlot draws sft loss and dpo loss / rewards/accuracies / rewards/margins to a valid PNG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'plot-'));
  try {
    const lines: string[] = [];
    for (let s = 1; s <= 20; s++) lines.push(JSON.stringify({ stage: 'sft', step: s, loss: 5 / Math.sqrt(s) }));
    for (let s = 1; s <= 30; s++) {
      lines.push(JSON.stringify({ stage: 'dpo', step: s, loss: 0.6931 - s * 0.01, 'rewards/accuracies': Math.min(1, s / 20), 'rewards/margins': s * 0.02 }));
      if (s % 10 === 0) lines.push(JSON.stringify({ stage: 'dpo', step: s, eval_loss: 0.7 - s * 0.005, 'eval_rewards/accuracies': 0.5 + s / 100 }));
    }
    const jsonl = join(dir, 'metrics.jsonl');
    writeFileSync(jsonl, `${lines.join('\n')}\n`);
    const png = join(dir, 'plot.png');
    const info = await writeTrainingPlot(jsonl, png);
    assert.deepEqual(info.panels, ['sft loss', 'dpo loss', 'dpo rewards/accuracies', 'dpo rewards/margins']);
    const p = readPng(readFileSync(png));
    assert.equal(p.width, info.width);
    assert.equal(p.height, info.height);
    assert.equal(p.width, 2 * 440);
    assert.equal(p.height, 2 * 280);
    // the train (blue) and eval (orange) series are drawn
    assert.ok(countColor(p, [31, 119, 180]) > 500, 'train series pixels');
    assert.ok(countColor(p, [255, 127, 14]) > 50, 'eval series pixels');
    assert.ok(!existsSync(`${png}.tmp-${process.pid}`), 'temporary file renamed away');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeTrainingPlot on a missing or empty metrics file still writes a valid PNG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'plot-'));
  try {
    const png = join(dir, 'empty.png');
    const info = await writeTrainingPlot(join(dir, 'none.jsonl'), png);
    assert.deepEqual(info.panels, []);
    const p = readPng(readFileSync(png));
    assert.ok(p.width > 0 && p.height > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
