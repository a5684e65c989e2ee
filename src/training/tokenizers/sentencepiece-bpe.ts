/**
 * A SentencePiece-style BPE tokenizer with byte fallback, encoding exactly as karpathy/llama2.c `run.c`
 * `encode()` / `decode()` do (and as SentencePiece's BPE model does for its pieces):
 *
 * 1. the text is normalised by the model's NormalizerSpec switches as SentencePiece's `Normalizer::Normalize`
 *    does with the identity rule (sentencepiece `src/normalizer.cc`): `remove_extra_whitespaces` strips
 *    U+0020 at both ends and collapses inner runs to one, `add_dummy_prefix` prepends a space to non-empty
 *    text, `escape_whitespaces` makes spaces the `▁` symbol (otherwise a space is a plain byte). A bare
 *    llama2.c tokenizer.bin (no `.model`) gets run.c's behaviour: the dummy prefix only;
 * 2. the text is split into Unicode code points; a code point that is a vocabulary piece becomes that
 *    piece, otherwise each of its UTF-8 bytes becomes the `<0xXX>` byte piece (byte fallback);
 * 3. repeatedly the adjacent pair whose concatenation is a vocabulary piece with the highest score is
 *    merged (ties: the leftmost pair, as run.c's strict `>` scan), until no pair merges.
 *
 * run.c rescans all pairs after each merge (O(n²)); this implementation uses a heap ordered by
 * (score desc, left position asc) with lazy invalidation, which selects the same pair at every step,
 * so the output ids are identical while encoding is O(n log n).
 *
 * Pieces are stored with SentencePiece's `▁` (U+2581) replaced by a space, as llama2.c's tokenizer.bin
 * stores them. BOS/EOS are added by the caller, never by {@link SentencePieceBpeTokenizer.encode}.
 */
import type { Tokenizer } from '../types.js';

/** SentencePiece `ModelProto.SentencePiece.Type`. */
export enum PieceType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

/** The SentencePiece `NormalizerSpec` switches the encoder applies (identity rule, no charsmap). */
export interface SentencePieceNormalizer {
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

/** run.c `encode()`: a dummy-prefix space, nothing removed (a llama2.c tokenizer.bin with no `.model`). */
export const LLAMA2C_NORMALIZER: Readonly<SentencePieceNormalizer> = Object.freeze({
  addDummyPrefix: true,
  removeExtraWhitespaces: false,
  escapeWhitespaces: true,
});

/** A space that is not the `▁` symbol (escape_whitespaces off): never a piece, encoded as byte 0x20. */
const RAW_SPACE = Symbol('raw space');
type NormalizedSymbol = string | typeof RAW_SPACE;

export interface SentencePieceBpeOptions {
  /** Piece strings with spaces (not `▁`). Control pieces may carry any text (llama2.c: "\n<s>\n"). */
  pieces: string[];
  scores: number[];
  types: PieceType[];
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
  unkTokenId: number;
  /** Where the tokenizer came from: a llama2.c tokenizer.bin or a SentencePiece tokenizer.model. */
  source: 'llama2c' | 'sentencepiece';
  /** The original serialized SentencePiece ModelProto, when known (written back on export unchanged). */
  modelProto?: Uint8Array | null;
  /** The model's normaliser switches (default {@link LLAMA2C_NORMALIZER}). */
  normalizer?: SentencePieceNormalizer;
  /** Maximum piece length in bytes (llama2.c header). */
  maxTokenLength?: number;
  /** Path the tokenizer was loaded from (diagnostics). */
  path?: string;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

interface HeapEntry {
  score: number;
  left: number;
  right: number;
  id: number;
  merged: string;
}

/** Binary max-heap on (score, then smaller left index). */
class PairHeap {
  private a: HeapEntry[] = [];
  get size(): number {
    return this.a.length;
  }
  private better(x: HeapEntry, y: HeapEntry): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }
  push(e: HeapEntry): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.better(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): HeapEntry | undefined {
    const a = this.a;
    if (a.length === 0) return undefined;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.better(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.better(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: false });

export class SentencePieceBpeTokenizer implements Tokenizer {
  readonly kind = 'sentencepiece-bpe' as const;
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly unkTokenId: number;
  /** llama2.c models are trained and sampled with BOS first; the data pipeline adds it once. */
  readonly addBosToken = true;
  readonly chatTemplate: string | null = null;
  readonly source: 'llama2c' | 'sentencepiece';
  readonly pieces: readonly string[];
  readonly scores: readonly number[];
  readonly types: readonly PieceType[];
  readonly modelProto: Uint8Array | null;
  readonly maxTokenLength: number;
  readonly normalizer: Readonly<SentencePieceNormalizer>;
  readonly path?: string;
  /** Normal / user-defined pieces that text may map to (control, byte, unknown pieces excluded). */
  private readonly lookup = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly byteOf: Int16Array;

  constructor(o: SentencePieceBpeOptions) {
    if (o.pieces.length !== o.scores.length || o.pieces.length !== o.types.length) {
      throw new RangeError('SentencePieceBpeTokenizer: pieces, scores and types must have the same length');
    }
    this.pieces = o.pieces;
    this.scores = o.scores;
    this.types = o.types;
    this.vocabSize = o.pieces.length;
    this.bosTokenId = o.bosTokenId;
    this.eosTokenId = o.eosTokenId;
    this.padTokenId = o.padTokenId;
    this.unkTokenId = o.unkTokenId;
    this.source = o.source;
    this.modelProto = o.modelProto ?? null;
    this.normalizer = Object.freeze({ ...(o.normalizer ?? LLAMA2C_NORMALIZER) });
    this.path = o.path;
    this.byteOf = new Int16Array(o.pieces.length).fill(-1);
    let maxLen = 0;
    for (let id = 0; id < o.pieces.length; id++) {
      const p = o.pieces[id]!;
      const t = o.types[id]!;
      maxLen = Math.max(maxLen, utf8.encode(p).length);
      if (t === PieceType.BYTE) {
        const m = BYTE_PIECE.exec(p);
        if (m) {
          const b = parseInt(m[1]!, 16);
          if (this.byteIds[b] === -1) this.byteIds[b] = id;
          this.byteOf[id] = b;
        }
      } else if (t === PieceType.NORMAL || t === PieceType.USER_DEFINED) {
        // first occurrence wins, as a sorted-vocab binary search over unique strings would
        if (!this.lookup.has(p)) this.lookup.set(p, id);
      }
    }
    this.maxTokenLength = o.maxTokenLength ?? maxLen;
  }

  /** Id of a normal piece (spaces, not `▁`), or undefined. */
  pieceToId(piece: string): number | undefined {
    return this.lookup.get(piece);
  }

  /**
   * The text as SentencePiece's normaliser leaves it, one code point per symbol, with the space symbol `▁`
   * as ' ' (the pieces' spelling here) and an unescaped space as {@link RAW_SPACE}. Follows
   * `Normalizer::Normalize` step by step: leading U+0020 dropped, the dummy prefix, each U+0020 after a space
   * dropped, trailing space symbols dropped (the last two with remove_extra_whitespaces only).
   */
  private normalize(text: string): NormalizedSymbol[] {
    const { addDummyPrefix, removeExtraWhitespaces: remove, escapeWhitespaces } = this.normalizer;
    const cps = [...text];
    let start = 0;
    if (remove) while (start < cps.length && cps[start] === ' ') start++;
    if (start >= cps.length) return [];
    const space: NormalizedSymbol = escapeWhitespaces ? ' ' : RAW_SPACE;
    const out: NormalizedSymbol[] = [];
    if (addDummyPrefix) out.push(space);
    let prevSpace = remove;
    for (let i = start; i < cps.length; i++) {
      const cp = cps[i]!;
      if (cp === ' ') {
        if (!prevSpace) out.push(space);
        prevSpace = remove;
      } else {
        out.push(cp === '\u2581' ? ' ' : cp); // a literal ▁ in the text is the space symbol too
        prevSpace = false;
      }
    }
    if (remove) while (out.length > 0 && out[out.length - 1] === space) out.pop();
    return out;
  }

  /**
   * Encode text to ids, without BOS/EOS: SentencePiece `EncodeAsIds` for a BPE model (normaliser, then
   * merges); for a bare llama2.c tokenizer.bin, run.c `encode(t, text, 0, 0, ...)`.
   * @returns ids in [0, vocabSize)
   */
  encode(text: string): number[] {
    const symbols = this.normalize(text);
    if (symbols.length === 0) return [];
    // symbols as a doubly linked list over the initial pieces
    const ids: number[] = [];
    const strs: string[] = [];
    const pushCodepoint = (cp: NormalizedSymbol): void => {
      const id = cp === RAW_SPACE ? undefined : this.lookup.get(cp);
      if (id !== undefined) {
        ids.push(id);
        strs.push(cp as string);
        return;
      }
      for (const b of utf8.encode(cp === RAW_SPACE ? ' ' : cp)) {
        const bid = this.byteIds[b]!;
        ids.push(bid >= 0 ? bid : this.unkTokenId);
        strs.push(''); // byte / unk pieces never take part in merges (their vocab strings are "<0xXX>")
      }
    };
    for (const cp of symbols) pushCodepoint(cp);

    const n = ids.length;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const tryPair = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const ls = strs[l]!;
      const rs = strs[r]!;
      if (ls === '' || rs === '') return;
      const merged = ls + rs;
      const id = this.lookup.get(merged);
      if (id === undefined) return;
      heap.push({ score: this.scores[id]!, left: l, right: r, id, merged });
    };
    for (let i = 0; i + 1 < n; i++) tryPair(i, i + 1);
    while (heap.size > 0) {
      const e = heap.pop()!;
      const { left: l, right: r } = e;
      if (!alive[l] || !alive[r] || next[l] !== r || strs[l]! + strs[r]! !== e.merged) continue;
      ids[l] = e.id;
      strs[l] = e.merged;
      alive[r] = 0;
      const rn = next[r]!;
      next[l] = rn;
      if (rn >= 0) prev[rn] = l;
      tryPair(prev[l]!, l);
      tryPair(l, rn);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]!) out.push(ids[i]!);
    return out;
  }

  /**
   * Decode ids to text as run.c `decode()` does per token, over the whole sequence: byte pieces become
   * raw bytes (UTF-8 decoded at the end, so multi-byte characters split over byte pieces survive),
   * control pieces (BOS/EOS) produce nothing, and the leading space of a piece is stripped when it
   * starts the output or follows BOS (SentencePiece's dummy prefix; run.c strips it after BOS).
   */
  decode(ids: number[]): string {
    const chunks: Uint8Array[] = [];
    let total = 0;
    let started = false;
    let prevId = -1;
    for (const id of ids) {
      if (id < 0 || id >= this.vocabSize) throw new RangeError(`decode: token id ${id} outside [0, ${this.vocabSize})`);
      const t = this.types[id]!;
      let bytes: Uint8Array;
      if (t === PieceType.CONTROL) {
        prevId = id;
        continue;
      } else if (t === PieceType.BYTE && this.byteOf[id]! >= 0) {
        bytes = Uint8Array.of(this.byteOf[id]!);
      } else {
        let p = this.pieces[id]!;
        if ((!started || prevId === this.bosTokenId) && p.startsWith(' ')) p = p.slice(1);
        bytes = utf8.encode(p);
      }
      chunks.push(bytes);
      total += bytes.length;
      started = true;
      prevId = id;
    }
    const buf = new Uint8Array(total);
    let o = 0;
    for (const c of chunks) {
      buf.set(c, o);
      o += c.length;
    }
    return utf8Decoder.decode(buf);
  }
}
