/**
 * `make toy-data`: write data/toy/toy.json, a small TinyStories-flavoured preference set for stories260K
 * (512-token vocabulary, simple English): kind, happy endings are chosen over unkind ones.
 * Deterministic: the same 48 pairs every run (8 children × 6 situations). The committed copy lives at
 * config/datasets/toy.json (dataset `toy`), so the product never needs to run this tool.
 *
 * Usage: npx tsx tools/make-toy-data.ts [--out data/toy/toy.json] [--check]
 *   --check  exit 1 when config/datasets/toy.json differs from what this tool generates
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PreferenceExample } from '../src/training/types.js';

const CHILDREN: [name: string, pronoun: 'he' | 'she'][] = [
  ['Lily', 'she'],
  ['Tim', 'he'],
  ['Sue', 'she'],
  ['Ben', 'he'],
  ['Mia', 'she'],
  ['Max', 'he'],
  ['Anna', 'she'],
  ['Tom', 'he'],
];

interface Situation {
  setup: (n: string, p: string) => string;
  kind: (n: string, p: string) => string;
  unkind: (n: string, p: string) => string;
}

const cap = (s: string) => s[0]!.toUpperCase() + s.slice(1);

const SITUATIONS: Situation[] = [
  {
    setup: (n) => `Once upon a time, there was a little child named ${n}. One day, ${n} saw a sad dog in the park.`,
    kind: (n, p) => `${cap(p)} gave the dog a big hug and they played with a ball. The dog was happy, and ${n} smiled.`,
    unkind: (_n, p) => `${cap(p)} yelled at the dog and ran away. The dog was sad and cried all day.`,
  },
  {
    setup: (n) => `${n} had a big red ball. A small boy in the park did not have a toy.`,
    kind: (n, p) => `${n} said, "Do you want to play with me?" ${cap(p)} shared the ball, and they were friends.`,
    unkind: (n, p) => `${n} said, "No, it is mine!" ${cap(p)} kept the ball, and the boy was sad.`,
  },
  {
    setup: (n, p) => `One day, ${n} went to the garden with Mom. ${cap(p)} saw a little bird that fell from a tree.`,
    kind: (n, p) => `${n} was very careful. ${cap(p)} put the bird back in its nest, and Mom said, "You are so kind!"`,
    unkind: (n) => `${n} threw a stick at the bird. The bird was scared, and Mom was not happy.`,
  },
  {
    setup: (n) => `${n} and a friend made a tall tower with blocks. Then the tower fell down.`,
    kind: (n, p) => `${n} said, "It is okay, we can try again!" ${cap(p)} helped, and they made a new tower together.`,
    unkind: (n, p) => `${n} was angry and pushed the friend. ${cap(p)} said, "It is your fault!" and went home.`,
  },
  {
    setup: (n) => `It was a cold day. ${n} saw an old cat sitting in the snow.`,
    kind: (n, p) => `${n} gave the cat a warm blanket and some milk. The cat purred, and ${p} felt happy inside.`,
    unkind: (n, p) => `${n} laughed at the cat and walked away. The cat was cold, and ${p} did not care.`,
  },
  {
    setup: (n, p) => `${n} had a yummy cake. ${cap(p)} saw that a little girl was hungry.`,
    kind: (n, p) => `${n} cut the cake and gave her a big piece. They ate together, and ${p} was glad to share.`,
    unkind: (n, _p) => `${n} ate all the cake and said, "You can not have any." The girl was sad and hungry.`,
  },
];

/** The 48 toy preference pairs (prompt ends with a sentence; completions start with a space). */
export function makeToyData(): PreferenceExample[] {
  const out: PreferenceExample[] = [];
  for (const s of SITUATIONS) {
    for (const [n, p] of CHILDREN) {
      out.push({ prompt: s.setup(n, p), chosen: ` ${s.kind(n, p)}`, rejected: ` ${s.unkind(n, p)}` });
    }
  }
  return out;
}

/** The JSON text written to toy.json (stable formatting, trailing newline). */
export function toyDataJson(): string {
  return `${JSON.stringify(makeToyData(), null, 2)}\n`;
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const args = process.argv.slice(2);
  if (args.includes('--check')) {
    const committed = readFileSync(resolve(root, 'config/datasets/toy.json'), 'utf8');
    if (committed !== toyDataJson()) {
      console.error('config/datasets/toy.json differs from tools/make-toy-data.ts output; regenerate with --out config/datasets/toy.json');
      process.exit(1);
    }
    console.log('config/datasets/toy.json is up to date');
  } else {
    const i = args.indexOf('--out');
    const out = resolve(root, i >= 0 && args[i + 1] ? args[i + 1]! : 'data/toy/toy.json');
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, toyDataJson());
    console.log(`wrote ${makeToyData().length} pairs to ${out}`);
  }
}
