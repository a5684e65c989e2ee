// Real datasets from ../shared (read-only). The HH data holds red-team content: assertions below never
// print record text (only counts and booleans reach the messages).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';
import { extractHhPrompt, HH_ASSISTANT, loadPreferenceExamples, tokenizeDataset } from '../../src/training/data/index.js';
import { loadTokenizer } from '../../src/training/tokenizers/index.js';
import { makeToyData, toyDataJson } from '../../tools/make-toy-data.js';
import { shared } from '../shared.js';

const HH = shared('data/hh-rlhf/harmless-base-test.jsonl.gz');

test('HH-RLHF via datasets=[hh]: 2,312 pairs; 2,307 follow the last-"\\n\\nAssistant:" rule; all prompts end there', async () => {
  const prev = process.env.HH_RLHF_PATH;
  process.env.HH_RLHF_PATH = HH;
  try {
    const examples = await loadPreferenceExamples('hh');
    assert.equal(examples.length, 2312);
    const raw: { chosen: string; rejected: string }[] = [];
    for await (const line of createInterface({ input: createReadStream(HH).pipe(createGunzip()) })) if (line.trim()) raw.push(JSON.parse(line));
    assert.equal(raw.length, 2312);
    let rule = 0;
    let reassembled = 0;
    let endsAtAssistant = 0;
    examples.forEach((ex, i) => {
      const r = raw[i]!;
      const p = extractHhPrompt(r.chosen);
      if (p === extractHhPrompt(r.rejected) && ex.prompt === p) rule++;
      if (ex.prompt + ex.chosen === r.chosen && ex.prompt + ex.rejected === r.rejected) reassembled++;
      if (ex.prompt.endsWith(HH_ASSISTANT)) endsAtAssistant++;
    });
    assert.equal(rule, 2307);
    assert.equal(reassembled, 2312);
    assert.equal(endsAtAssistant, 2312);
  } finally {
    if (prev === undefined) delete process.env.HH_RLHF_PATH;
    else process.env.HH_RLHF_PATH = prev;
  }
});

test('HH-RLHF tokenises with stories260K at max_length 512 / prompt 256 (drop count reported, every kept pair fits)', async () => {
  const tok = await loadTokenizer('stories260K');
  const examples = (await loadPreferenceExamples(HH)).slice(0, 300);
  const { pairs, stats } = tokenizeDataset(examples, tok, { maxLength: 512, maxPromptLength: 256, truncationMode: 'keep_end' });
  assert.equal(pairs.length + stats.dropped, 300);
  assert.equal(stats.dropped, 0, 'max_prompt_length < max_length never drops');
  assert.ok(stats.truncated > 0);
  for (const p of pairs) {
    assert.ok(p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length) <= 512);
    assert.equal(p.promptIds[0], 1);
  }
});

test('LLaMA-Factory dpo_en_demo.json: 300 ShareGPT records → 300 pairs in the plain chat layout', async () => {
  const file = shared('data/llamafactory/dpo_en_demo.json');
  const raw = JSON.parse(readFileSync(file, 'utf8')) as {
    conversations: { from: string; value: string }[];
    chosen: { value: string };
    rejected: { value: string };
  }[];
  const examples = await loadPreferenceExamples(file);
  assert.equal(examples.length, 300);
  examples.forEach((ex, i) => {
    const r = raw[i]!;
    assert.ok(ex.prompt.endsWith('\n\nAssistant:'));
    assert.equal(ex.chosen, ` ${r.chosen.value}`);
    assert.equal(ex.rejected, ` ${r.rejected.value}`);
    const lastHuman = [...r.conversations].reverse().find((m) => m.from === 'human')!;
    assert.ok(ex.prompt.includes(`\n\nHuman: ${lastHuman.value}`));
    const system = r.conversations.find((m) => m.from === 'system');
    if (system) assert.ok(ex.prompt.startsWith(`${system.value}\n\nHuman: `));
  });
});

test('toy dataset: 48 pairs, the committed config/datasets/toy.json equals tools/make-toy-data output', async () => {
  assert.equal(readFileSync('config/datasets/toy.json', 'utf8'), toyDataJson());
  const toy = await loadPreferenceExamples('toy');
  assert.deepEqual(toy, makeToyData());
  assert.equal(toy.length, 48);
  const tok = await loadTokenizer('stories260K');
  // simple English: stories260K's vocabulary covers every character (no byte fallback)
  const byteIds = (ids: number[]) => ids.filter((id) => id >= 3 && id < 259).length;
  for (const e of toy) assert.equal(byteIds(tok.encode(e.prompt + e.chosen + e.rejected)), 0);
});
