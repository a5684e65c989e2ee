/**
 * llama2.c `tokenizer.bin` (karpathy/llama2.c `tokenizer.py` export, read by `run.c` `build_tokenizer`):
 * int32 max_token_length, then for each token: float32 score, int32 byte length, the UTF-8 bytes of the
 * piece (SentencePiece `▁` already replaced by a space; BOS/EOS stored as "\n<s>\n" / "\n</s>\n").
 * All little-endian. The vocabulary size is not stored: it is the number of records in the file.
 */
import { TokenizerError } from './errors.js';
import { PieceType, SentencePieceBpeTokenizer } from './sentencepiece-bpe.js';
import { normalizerOf, parseSentencePieceModelProto } from './sentencepiece.js';

const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

/**
 * Parse a llama2.c tokenizer.bin.
 * Ids 0/1/2 are `<unk>`/BOS/EOS (llama2.c convention, run.c hard-codes BOS=1, EOS=2); `<0xXX>` pieces are
 * byte-fallback pieces.
 * @param modelProto the matching SentencePiece `.model` bytes (optional): kept for export, and its
 *   normalizer spec is applied by `encode` (as SentencePiece does; without it, run.c's behaviour).
 * @throws TokenizerError INVALID_TOKENIZER_FORMAT when a record runs past the end of the buffer or the
 *   `.model` is malformed; UNSUPPORTED_TOKENIZER for a `.model` normaliser that is not implemented.
 */
export function parseLlama2cTokenizer(buf: Uint8Array, opts: { path?: string; modelProto?: Uint8Array | null } = {}): SentencePieceBpeTokenizer {
  const where = opts.path ?? 'tokenizer.bin';
  if (buf.byteLength < 4) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: too short for a llama2.c tokenizer.bin header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const maxTokenLength = dv.getInt32(0, true);
  const dec = new TextDecoder('utf-8', { fatal: false });
  const pieces: string[] = [];
  const scores: number[] = [];
  const types: PieceType[] = [];
  let o = 4;
  while (o < buf.byteLength) {
    if (o + 8 > buf.byteLength) {
      throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: truncated record header for token ${pieces.length} at byte ${o}`);
    }
    const score = dv.getFloat32(o, true);
    const len = dv.getInt32(o + 4, true);
    o += 8;
    if (len < 0 || o + len > buf.byteLength || len > Math.max(maxTokenLength, 0) * 4 + 16) {
      throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: token ${pieces.length} has invalid length ${len} at byte ${o - 4}`);
    }
    const piece = dec.decode(buf.subarray(o, o + len));
    o += len;
    const id = pieces.length;
    pieces.push(piece);
    scores.push(score);
    types.push(id === 0 ? PieceType.UNKNOWN : id === 1 || id === 2 ? PieceType.CONTROL : BYTE_PIECE.test(piece) ? PieceType.BYTE : PieceType.NORMAL);
  }
  if (pieces.length < 3) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: only ${pieces.length} tokens; need at least <unk>, <s>, </s>`);
  return new SentencePieceBpeTokenizer({
    pieces,
    scores,
    types,
    unkTokenId: 0,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
    source: 'llama2c',
    modelProto: opts.modelProto ?? null,
    normalizer: opts.modelProto ? normalizerOf(parseSentencePieceModelProto(opts.modelProto, `${where} (.model)`), `${where} (.model)`) : undefined,
    maxTokenLength,
    path: opts.path,
  });
}

/**
 * Serialize to the llama2.c tokenizer.bin layout (inverse of {@link parseLlama2cTokenizer}).
 * Control pieces BOS/EOS are written as "\n<s>\n" / "\n</s>\n" as llama2.c's exporter does.
 */
export function serializeLlama2cTokenizer(tok: SentencePieceBpeTokenizer): Uint8Array {
  const enc = new TextEncoder();
  const bytes = tok.pieces.map((p, id) => {
    if (tok.types[id] === PieceType.CONTROL && id === tok.bosTokenId) return enc.encode('\n<s>\n');
    if (tok.types[id] === PieceType.CONTROL && id === tok.eosTokenId) return enc.encode('\n</s>\n');
    return enc.encode(p);
  });
  const maxLen = bytes.reduce((m, b) => Math.max(m, b.length), 0);
  const size = 4 + bytes.reduce((s, b) => s + 8 + b.length, 0);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setInt32(0, maxLen, true);
  let o = 4;
  bytes.forEach((b, id) => {
    dv.setFloat32(o, tok.scores[id]!, true);
    dv.setInt32(o + 4, b.length, true);
    out.set(b, o + 8);
    o += 8 + b.length;
  });
  return out;
}
