/**
 * CLI commands of the model layer: `dpo export` of stories260K then `dpo generate` from the export prints the
 * same text as from the .bin (issue 3's done-when); `dpo score` equals a log-softmax computed here from the
 * full logits.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { runExport } from '../../src/cli/commands/export.js';
import { runGenerate, register as registerGenerate } from '../../src/cli/commands/generate.js';
import { runScore, type ScoreRow } from '../../src/cli/commands/score.js';
import { loadPretrained } from '../../src/training/models/index.js';
import { tokenizePreference, collatePreference, resolvePadId } from '../../src/training/data/index.js';

let dir: string;
before(async () => {
  await initBackend('auto');
  dir = mkdtempSync(join(tmpdir(), 'models-cli-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('dpo export stories260K then dpo generate from the export prints the same text as from the .bin', async () => {
  const out = join(dir, 'export');
  const files = await runExport({ model: 'stories260K', out, dtype: 'F32' });
  assert.ok(files.some((f) => f.endsWith('model.safetensors')) && existsSync(join(out, 'tokenizer.model')));
  const opts = { prompt: 'Once upon a time', maxNewTokens: '40', temperature: '0', seed: '0' };
  const fromBin = await runGenerate({ model: 'stories260K', ...opts });
  const fromExport = await runGenerate({ model: out, ...opts });
  assert.ok(fromBin.startsWith('Once upon a time') && fromBin.length > 'Once upon a time'.length + 40, fromBin);
  assert.equal(fromExport, fromBin);
});

test('generate is registered on a commander program and prints to stdout', async () => {
  const program = new Command().exitOverride();
  registerGenerate(program);
  const chunks: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  // capture the command's text; pass the test runner's own (binary) messages through
  process.stdout.write = ((s: string | Uint8Array, ...rest: unknown[]) =>
    typeof s === 'string' ? (chunks.push(s), true) : (write as (...a: unknown[]) => boolean)(s, ...rest)) as typeof process.stdout.write;
  try {
    await program.parseAsync(['generate', '--model', 'stories260K', '--prompt', 'Once upon a time', '--max-new-tokens', '8'], { from: 'user' });
  } finally {
    process.stdout.write = write;
  }
  const printed = chunks.join('');
  assert.ok(printed.startsWith('Once upon a time') && printed.endsWith('\n') && printed.length > 20, printed);
  await assert.rejects(runGenerate({ model: 'stories260K', prompt: '', maxNewTokens: '-1', temperature: '0' }), /max-new-tokens/);
});

test('dpo score gives the summed completion log-probs DPO uses (checked against a full log-softmax)', async () => {
  const rows = [
    { prompt: 'Once upon a time, there was a little girl', chosen: ' named Lily.', rejected: ' who ate a big red car.' },
    { prompt: 'The cat sat', chosen: ' on the mat.', rejected: ' under the tree and cried.' },
  ];
  const file = join(dir, 'pairs.json');
  writeFileSync(file, JSON.stringify(rows));
  const got: ScoreRow[] = [];
  await runScore({ model: 'stories260K', data: file, maxLength: '128', maxPromptLength: '64', truncationMode: 'keep_end' }, (r) => got.push(r));
  assert.equal(got.length, 2);
  const { model, tokenizer } = await loadPretrained('stories260K');
  const opts = { maxLength: 128, maxPromptLength: 64, truncationMode: 'keep_end' as const };
  rows.forEach((ex, i) => {
    const pair = tokenizePreference(ex, tokenizer, opts)!;
    const b = collatePreference([pair], resolvePadId(tokenizer));
    const logits = tf.tidy(() => model.logits(tf.tensor2d(b.inputIds, [b.rows, b.seqLen], 'int32')).arraySync()) as number[][][];
    const expect = [0, 1].map((r) => {
      let s = 0;
      let n = 0;
      for (let t = 1; t < b.seqLen; t++) {
        if (b.completionMask[r * b.seqLen + t] !== 1) continue;
        const row = logits[r]![t - 1]!;
        const m = Math.max(...row);
        const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
        s += row[b.inputIds[r * b.seqLen + t]!]! - lse;
        n++;
      }
      return { s, n };
    });
    assert.equal(got[i]!.index, i);
    assert.equal(got[i]!.chosen_tokens, expect[0]!.n);
    assert.equal(got[i]!.rejected_tokens, expect[1]!.n);
    assert.ok(Math.abs(got[i]!.chosen_logps! - expect[0]!.s) < 1e-3 * Math.max(1, Math.abs(expect[0]!.s)), `chosen ${got[i]!.chosen_logps} vs ${expect[0]!.s}`);
    assert.ok(
      Math.abs(got[i]!.rejected_logps! - expect[1]!.s) < 1e-3 * Math.max(1, Math.abs(expect[1]!.s)),
      `rejected ${got[i]!.rejected_logps} vs ${expect[1]!.s}`,
    );
  });
  // the model prefers the fluent continuation in the first row
  assert.ok(got[0]!.chosen_logps! > got[0]!.rejected_logps!);
  model.dispose();
});
