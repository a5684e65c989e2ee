// A 100 MB generated JSONL validates in bounded memory (streamed line by line). Own file so the RSS
// baseline is this process's alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, statSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectDataset } from '../../src/training/data/index.js';

const TARGET_BYTES = 100 * 1024 * 1024;

function writeJsonl(path: string): number {
  const fd = openSync(path, 'w');
  const filler = 'The little dog ran to the park and played with a red ball. '.repeat(14);
  let bytes = 0;
  let rows = 0;
  try {
    while (bytes < TARGET_BYTES) {
      let chunk = '';
      for (let k = 0; k < 1000; k++, rows++) {
        chunk += `{"prompt":"Story ${rows}: once upon a time.","chosen":" ${filler}Everyone was happy.","rejected":" ${filler}Everyone was sad."}\n`;
      }
      bytes += writeSync(fd, chunk);
    }
  } finally {
    closeSync(fd);
  }
  return rows;
}

test('100 MB JSONL: every row counted, bounded RSS', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpo-large-'));
  const file = join(dir, 'big.jsonl');
  try {
    const rows = writeJsonl(file);
    const size = statSync(file).size;
    assert.ok(size >= TARGET_BYTES);
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
    const report = await inspectDataset(file);
    clearInterval(timer);
    peak = Math.max(peak, process.memoryUsage().rss);
    assert.equal(report.ok, true);
    assert.equal(report.format, 'explicit');
    assert.equal(report.pairs, rows);
    assert.equal(report.counts.duplicates, 0);
    const growthMb = (peak - rssBefore) / 2 ** 20;
    // reading the file whole would add at least its size (100 MB) on top; streaming stays well below
    assert.ok(growthMb < (0.8 * size) / 2 ** 20, `RSS grew by ${growthMb.toFixed(0)} MB while validating a ${(size / 2 ** 20).toFixed(0)} MB file`);
    console.log(`# large jsonl: ${rows} rows, ${(size / 2 ** 20).toFixed(0)} MB, RSS growth ${growthMb.toFixed(0)} MB`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
