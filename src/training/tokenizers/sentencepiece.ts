/**
 * SentencePiece `tokenizer.model` (a serialized `sentencepiece_model.proto` ModelProto), parsed and written
 * by hand (no protobuf dependency). Fields used (google/sentencepiece `src/sentencepiece_model.proto`):
 *   ModelProto: 1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
 *   SentencePiece: 1 piece (string), 2 score (float), 3 type (enum, default NORMAL=1)
 *   TrainerSpec: 3 model_type (1 UNIGRAM, 2 BPE), 4 vocab_size, 35 byte_fallback,
 *                40 unk_id, 41 bos_id, 42 eos_id, 43 pad_id
 *   NormalizerSpec: 1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces
 * Only BPE models are supported (the encoder is {@link SentencePieceBpeTokenizer}, identical to llama2.c's).
 * Unknown fields are skipped on read; the original bytes are kept so export writes them back unchanged.
 */
import { TokenizerError } from './errors.js';
import { PieceType, SentencePieceBpeTokenizer } from './sentencepiece-bpe.js';

const SPACE_MARK = '\u2581';

class ProtoReader {
  o = 0;
  constructor(
    readonly b: Uint8Array,
    readonly where: string,
  ) {}
  get done(): boolean {
    return this.o >= this.b.length;
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.o >= this.b.length) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: truncated varint`);
      const byte = this.b[this.o++]!;
      result += (byte & 0x7f) * mul;
      if ((byte & 0x80) === 0) return result;
      mul *= 128;
    }
    throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: varint too long`);
  }
  bytes(): Uint8Array {
    const len = this.varint();
    if (this.o + len > this.b.length) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: truncated length-delimited field`);
    const s = this.b.subarray(this.o, this.o + len);
    this.o += len;
    return s;
  }
  fixed32(): DataView {
    if (this.o + 4 > this.b.length) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: truncated fixed32`);
    const dv = new DataView(this.b.buffer, this.b.byteOffset + this.o, 4);
    this.o += 4;
    return dv;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.o += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.o += 4;
    else throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: unsupported protobuf wire type ${wire}`);
  }
  /** Decode a (possibly negative, sign-extended to 64 bits) int32 varint. */
  int32(): number {
    let x = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.o >= this.b.length) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: truncated varint`);
      const byte = this.b[this.o++]!;
      x |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return Number(BigInt.asIntN(32, x));
      shift += 7n;
    }
    throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${this.where}: varint too long`);
  }
}

export interface SentencePieceModelInfo {
  pieces: { piece: string; score: number; type: PieceType }[];
  modelType: number;
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  normalizerName: string | null;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
}

const dec = new TextDecoder('utf-8', { fatal: false });

/**
 * Parse a SentencePiece ModelProto.
 * @throws TokenizerError INVALID_TOKENIZER_FORMAT on malformed protobuf or no pieces.
 */
export function parseSentencePieceModelProto(buf: Uint8Array, where = 'tokenizer.model'): SentencePieceModelInfo {
  const r = new ProtoReader(buf, where);
  const info: SentencePieceModelInfo = {
    pieces: [],
    modelType: 1,
    byteFallback: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    normalizerName: null,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
  };
  while (!r.done) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 1 && wire === 2) {
      const pr = new ProtoReader(r.bytes(), where);
      let piece = '';
      let score = 0;
      let type = PieceType.NORMAL;
      while (!pr.done) {
        const k = pr.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (f === 1 && w === 2) piece = dec.decode(pr.bytes());
        else if (f === 2 && w === 5) score = pr.fixed32().getFloat32(0, true);
        else if (f === 3 && w === 0) type = pr.varint() as PieceType;
        else pr.skip(w);
      }
      info.pieces.push({ piece, score, type });
    } else if (field === 2 && wire === 2) {
      const tr = new ProtoReader(r.bytes(), where);
      while (!tr.done) {
        const k = tr.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (w !== 0) {
          tr.skip(w);
          continue;
        }
        if (f === 3) info.modelType = tr.varint();
        else if (f === 35) info.byteFallback = tr.varint() !== 0;
        else if (f === 40) info.unkId = tr.int32();
        else if (f === 41) info.bosId = tr.int32();
        else if (f === 42) info.eosId = tr.int32();
        else if (f === 43) info.padId = tr.int32();
        else tr.varint();
      }
    } else if (field === 3 && wire === 2) {
      const nr = new ProtoReader(r.bytes(), where);
      while (!nr.done) {
        const k = nr.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (f === 1 && w === 2) info.normalizerName = dec.decode(nr.bytes());
        else if (f === 3 && w === 0) info.addDummyPrefix = nr.varint() !== 0;
        else if (f === 4 && w === 0) info.removeExtraWhitespaces = nr.varint() !== 0;
        else nr.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  if (info.pieces.length === 0) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: no pieces; is this a SentencePiece model?`);
  return info;
}

/**
 * Load a SentencePiece BPE `tokenizer.model` as a {@link SentencePieceBpeTokenizer} (the llama2.c encoder).
 * @throws TokenizerError UNSUPPORTED_TOKENIZER for a Unigram model (only BPE is implemented).
 */
export function parseSentencePieceModel(buf: Uint8Array, opts: { path?: string } = {}): SentencePieceBpeTokenizer {
  const where = opts.path ?? 'tokenizer.model';
  const info = parseSentencePieceModelProto(buf, where);
  if (info.modelType !== 2) {
    throw new TokenizerError(
      'UNSUPPORTED_TOKENIZER',
      `${where}: SentencePiece model_type ${info.modelType} is not supported (only BPE = 2); provide a tokenizer.json instead`,
    );
  }
  const id = (x: number): number | null => (x >= 0 && x < info.pieces.length ? x : null);
  return new SentencePieceBpeTokenizer({
    pieces: info.pieces.map((p) => p.piece.split(SPACE_MARK).join(' ')),
    scores: info.pieces.map((p) => p.score),
    types: info.pieces.map((p) => p.type),
    unkTokenId: id(info.unkId) ?? 0,
    bosTokenId: id(info.bosId),
    eosTokenId: id(info.eosId),
    padTokenId: id(info.padId),
    source: 'sentencepiece',
    modelProto: buf,
    path: opts.path,
  });
}

// ---------- writer ----------

function varintBytes(v: number): number[] {
  const out: number[] = [];
  let x = BigInt.asUintN(64, BigInt(v));
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) b |= 0x80;
    out.push(b);
  } while (x > 0n);
  return out;
}
function keyBytes(field: number, wire: number): number[] {
  return varintBytes(field * 8 + wire);
}
function lenField(field: number, payload: Uint8Array | number[]): number[] {
  return [...keyBytes(field, 2), ...varintBytes(payload.length), ...payload];
}
function varintField(field: number, v: number): number[] {
  return [...keyBytes(field, 0), ...varintBytes(v)];
}

/**
 * Serialize a SentencePiece BPE ModelProto from a tokenizer's pieces (used when a llama2.c tokenizer.bin
 * has no `.model` next to it). Writes pieces (spaces back to `▁`, BOS/EOS as `<s>`/`</s>`), a TrainerSpec
 * (BPE, byte_fallback, unk/bos/eos/pad ids) and an identity NormalizerSpec with add_dummy_prefix and
 * without remove_extra_whitespaces (run.c semantics).
 */
export function serializeSentencePieceModel(tok: SentencePieceBpeTokenizer): Uint8Array {
  const enc = new TextEncoder();
  const out: number[] = [];
  tok.pieces.forEach((p, id) => {
    const type = tok.types[id]!;
    let text: string;
    if (id === tok.bosTokenId && type === PieceType.CONTROL) text = '<s>';
    else if (id === tok.eosTokenId && type === PieceType.CONTROL) text = '</s>';
    else if (id === tok.unkTokenId && type === PieceType.UNKNOWN) text = '<unk>';
    else text = type === PieceType.BYTE ? p : p.split(' ').join(SPACE_MARK);
    const score = new Uint8Array(4);
    new DataView(score.buffer).setFloat32(0, tok.scores[id]!, true);
    const sp = [...lenField(1, enc.encode(text)), ...keyBytes(2, 5), ...score, ...varintField(3, type)];
    out.push(...lenField(1, sp));
  });
  const trainer = [
    ...varintField(3, 2),
    ...varintField(4, tok.vocabSize),
    ...varintField(35, 1),
    ...varintField(40, tok.unkTokenId),
    ...varintField(41, tok.bosTokenId ?? -1),
    ...varintField(42, tok.eosTokenId ?? -1),
    ...varintField(43, tok.padTokenId ?? -1),
  ];
  out.push(...lenField(2, trainer));
  const normalizer = [...lenField(1, enc.encode('identity')), ...varintField(3, 1), ...varintField(4, 0), ...varintField(5, 1)];
  out.push(...lenField(3, normalizer));
  return Uint8Array.from(out);
}

/**
 * A Hugging Face `tokenizer.json` equivalent of a SentencePiece BPE tokenizer (the layout transformers'
 * `LlamaConverter` writes for legacy Llama tokenizers): normalizer Prepend("▁") + Replace(" " → "▁"),
 * BPE with `byte_fallback` and `fuse_unk`, merges ordered by the score of the merged piece (ties by the
 * ids of the left, then right part, as transformers' `SentencePieceExtractor`), a TemplateProcessing that
 * prepends `<s>`, and the ByteFallback/Fuse/Strip decoder. Loaded by `@huggingface/tokenizers` it encodes
 * exactly as {@link SentencePieceBpeTokenizer.encode} (tested on random text).
 */
export function sentencePieceToTokenizerJson(tok: SentencePieceBpeTokenizer): Record<string, unknown> {
  const name = (id: number): string => {
    const t = tok.types[id]!;
    if (id === tok.unkTokenId && t === PieceType.UNKNOWN) return '<unk>';
    if (id === tok.bosTokenId && t === PieceType.CONTROL) return '<s>';
    if (id === tok.eosTokenId && t === PieceType.CONTROL) return '</s>';
    return t === PieceType.BYTE ? tok.pieces[id]! : tok.pieces[id]!.split(' ').join(SPACE_MARK);
  };
  const vocab: Record<string, number> = {};
  for (let id = 0; id < tok.vocabSize; id++) if (!(name(id) in vocab)) vocab[name(id)] = id;
  const isMergeable = (id: number | undefined) => id !== undefined && (tok.types[id] === PieceType.NORMAL || tok.types[id] === PieceType.USER_DEFINED);
  const merges: { a: string; b: string; score: number; ia: number; ib: number }[] = [];
  for (let id = 0; id < tok.vocabSize; id++) {
    if (!isMergeable(id)) continue;
    const cps = [...name(id)];
    for (let k = 1; k < cps.length; k++) {
      const a = cps.slice(0, k).join('');
      const b = cps.slice(k).join('');
      if (isMergeable(vocab[a]) && isMergeable(vocab[b])) merges.push({ a, b, score: tok.scores[id]!, ia: vocab[a]!, ib: vocab[b]! });
    }
  }
  merges.sort((x, y) => y.score - x.score || x.ia - y.ia || x.ib - y.ib);
  const special = (id: number | null) =>
    id == null ? [] : [{ id, content: name(id), single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }];
  const bos = tok.bosTokenId != null ? name(tok.bosTokenId) : null;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...special(tok.unkTokenId), ...special(tok.bosTokenId), ...special(tok.eosTokenId)],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: SPACE_MARK },
        { type: 'Replace', pattern: { String: ' ' }, content: SPACE_MARK },
      ],
    },
    pre_tokenizer: null,
    post_processor: bos
      ? {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bos, type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bos, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bos]: { id: bos, ids: [tok.bosTokenId], tokens: [bos] } },
        }
      : null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE_MARK }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: name(tok.unkTokenId),
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => [m.a, m.b]),
    },
  };
}
