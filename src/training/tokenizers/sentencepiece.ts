/**
 * SentencePiece `tokenizer.model` (a serialized `sentencepiece_model.proto` ModelProto), read and written
 * with protobufjs from the message subset declared below (field numbers and defaults as in
 * google/sentencepiece `src/sentencepiece_model.proto`; unknown fields are skipped on read, and the
 * original bytes are kept so export writes them back unchanged).
 * Only BPE models are supported (the encoder is {@link SentencePieceBpeTokenizer}, identical to llama2.c's),
 * with the identity normalisation rule (no precompiled charsmap).
 */
import protobuf from 'protobufjs';
import { TokenizerError } from './errors.js';
import { PieceType, SentencePieceBpeTokenizer, type SentencePieceNormalizer } from './sentencepiece-bpe.js';

const SPACE_MARK = '\u2581';

const root = protobuf.Root.fromJSON({
  nested: {
    sentencepiece: {
      nested: {
        ModelProto: {
          fields: {
            pieces: { rule: 'repeated', type: 'SentencePiece', id: 1 },
            trainer_spec: { type: 'TrainerSpec', id: 2 },
            normalizer_spec: { type: 'NormalizerSpec', id: 3 },
          },
          nested: {
            SentencePiece: {
              fields: {
                piece: { type: 'string', id: 1 },
                score: { type: 'float', id: 2 },
                type: { type: 'int32', id: 3, options: { default: PieceType.NORMAL } },
              },
            },
          },
        },
        TrainerSpec: {
          fields: {
            model_type: { type: 'int32', id: 3, options: { default: 1 } },
            vocab_size: { type: 'int32', id: 4, options: { default: 8000 } },
            treat_whitespace_as_suffix: { type: 'bool', id: 24, options: { default: false } },
            byte_fallback: { type: 'bool', id: 35, options: { default: false } },
            unk_id: { type: 'int32', id: 40, options: { default: 0 } },
            bos_id: { type: 'int32', id: 41, options: { default: 1 } },
            eos_id: { type: 'int32', id: 42, options: { default: 2 } },
            pad_id: { type: 'int32', id: 43, options: { default: -1 } },
          },
        },
        NormalizerSpec: {
          fields: {
            name: { type: 'string', id: 1 },
            precompiled_charsmap: { type: 'bytes', id: 2 },
            add_dummy_prefix: { type: 'bool', id: 3, options: { default: true } },
            remove_extra_whitespaces: { type: 'bool', id: 4, options: { default: true } },
            escape_whitespaces: { type: 'bool', id: 5, options: { default: true } },
          },
        },
      },
    },
  },
});
const ModelProto = root.lookupType('sentencepiece.ModelProto');
const TrainerSpec = root.lookupType('sentencepiece.TrainerSpec');
const NormalizerSpec = root.lookupType('sentencepiece.NormalizerSpec');

interface DecodedModel {
  pieces: { piece: string; score: number; type: number }[];
  trainer_spec?: {
    model_type: number;
    treat_whitespace_as_suffix: boolean;
    byte_fallback: boolean;
    unk_id: number;
    bos_id: number;
    eos_id: number;
    pad_id: number;
  };
  normalizer_spec?: {
    name: string;
    precompiled_charsmap: Uint8Array;
    add_dummy_prefix: boolean;
    remove_extra_whitespaces: boolean;
    escape_whitespaces: boolean;
  };
}

export interface SentencePieceModelInfo {
  pieces: { piece: string; score: number; type: PieceType }[];
  modelType: number;
  byteFallback: boolean;
  treatWhitespaceAsSuffix: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  normalizerName: string | null;
  /** Byte length of NormalizerSpec.precompiled_charsmap (0 for the identity rule). */
  precompiledCharsmapBytes: number;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

/**
 * Parse a SentencePiece ModelProto (absent fields take the proto's defaults).
 * @throws TokenizerError INVALID_TOKENIZER_FORMAT on malformed protobuf or no pieces.
 */
export function parseSentencePieceModelProto(buf: Uint8Array, where = 'tokenizer.model'): SentencePieceModelInfo {
  let m: DecodedModel;
  try {
    m = ModelProto.decode(buf) as protobuf.Message & DecodedModel;
  } catch (e) {
    throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: not a SentencePiece model (${(e as Error).message})`, { cause: e });
  }
  // an absent sub-message reads as a fresh one: its fields then take the declared defaults
  const t = m.trainer_spec ?? (TrainerSpec.create() as protobuf.Message & NonNullable<DecodedModel['trainer_spec']>);
  const n = m.normalizer_spec ?? (NormalizerSpec.create() as protobuf.Message & NonNullable<DecodedModel['normalizer_spec']>);
  if (m.pieces.length === 0) throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: no pieces; is this a SentencePiece model?`);
  return {
    pieces: m.pieces.map((p) => ({ piece: p.piece, score: p.score, type: p.type as PieceType })),
    modelType: t.model_type,
    byteFallback: t.byte_fallback,
    treatWhitespaceAsSuffix: t.treat_whitespace_as_suffix,
    unkId: t.unk_id,
    bosId: t.bos_id,
    eosId: t.eos_id,
    padId: t.pad_id,
    normalizerName: m.normalizer_spec ? n.name : null,
    precompiledCharsmapBytes: n.precompiled_charsmap?.length ?? 0,
    addDummyPrefix: n.add_dummy_prefix,
    removeExtraWhitespaces: n.remove_extra_whitespaces,
    escapeWhitespaces: n.escape_whitespaces,
  };
}

/**
 * The normaliser switches of a parsed model, as {@link SentencePieceBpeTokenizer} applies them.
 * @throws TokenizerError UNSUPPORTED_TOKENIZER for a precompiled charsmap (e.g. `nmt_nfkc`) or
 *   `treat_whitespace_as_suffix`, which this encoder does not implement.
 */
export function normalizerOf(info: SentencePieceModelInfo, where = 'tokenizer.model'): SentencePieceNormalizer {
  if (info.precompiledCharsmapBytes > 0) {
    throw new TokenizerError(
      'UNSUPPORTED_TOKENIZER',
      `${where}: normalizer "${info.normalizerName}" uses a precompiled charsmap, which is not implemented here (only the identity rule); convert the tokenizer to a tokenizer.json (transformers' AutoTokenizer.save_pretrained) and load that`,
    );
  }
  if (info.treatWhitespaceAsSuffix) {
    throw new TokenizerError('UNSUPPORTED_TOKENIZER', `${where}: trainer_spec.treat_whitespace_as_suffix is not supported; load a tokenizer.json instead`);
  }
  return { addDummyPrefix: info.addDummyPrefix, removeExtraWhitespaces: info.removeExtraWhitespaces, escapeWhitespaces: info.escapeWhitespaces };
}

/**
 * Load a SentencePiece BPE `tokenizer.model` as a {@link SentencePieceBpeTokenizer} (the llama2.c encoder)
 * that applies the model's normalizer spec.
 * @throws TokenizerError UNSUPPORTED_TOKENIZER for a Unigram model (only BPE is implemented) or a normaliser
 *   this encoder does not implement (see {@link normalizerOf}).
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
    normalizer: normalizerOf(info, where),
    path: opts.path,
  });
}

// ---------- writer ----------

/** SentencePiece text of piece `id` (spaces back to `▁`, BOS/EOS/UNK control pieces by their names). */
function pieceText(tok: SentencePieceBpeTokenizer, id: number): string {
  const t = tok.types[id]!;
  if (id === tok.unkTokenId && t === PieceType.UNKNOWN) return '<unk>';
  if (id === tok.bosTokenId && t === PieceType.CONTROL) return '<s>';
  if (id === tok.eosTokenId && t === PieceType.CONTROL) return '</s>';
  return t === PieceType.BYTE ? tok.pieces[id]! : tok.pieces[id]!.split(' ').join(SPACE_MARK);
}

/**
 * Serialize a SentencePiece BPE ModelProto from a tokenizer's pieces (used when a llama2.c tokenizer.bin
 * has no `.model` next to it). Writes pieces (spaces back to `▁`, BOS/EOS as `<s>`/`</s>`), a TrainerSpec
 * (BPE, byte_fallback, unk/bos/eos/pad ids) and an identity NormalizerSpec with the tokenizer's normaliser
 * switches (for a bare tokenizer.bin: run.c's, add_dummy_prefix without remove_extra_whitespaces).
 */
export function serializeSentencePieceModel(tok: SentencePieceBpeTokenizer): Uint8Array {
  const msg = ModelProto.fromObject({
    pieces: tok.pieces.map((_, id) => ({ piece: pieceText(tok, id), score: tok.scores[id]!, type: tok.types[id]! })),
    trainer_spec: {
      model_type: 2,
      vocab_size: tok.vocabSize,
      byte_fallback: true,
      unk_id: tok.unkTokenId,
      bos_id: tok.bosTokenId ?? -1,
      eos_id: tok.eosTokenId ?? -1,
      pad_id: tok.padTokenId ?? -1,
    },
    normalizer_spec: {
      name: 'identity',
      add_dummy_prefix: tok.normalizer.addDummyPrefix,
      remove_extra_whitespaces: tok.normalizer.removeExtraWhitespaces,
      escape_whitespaces: tok.normalizer.escapeWhitespaces,
    },
  });
  return ModelProto.encode(msg).finish();
}

/**
 * tokenizer.json normalizers doing what SentencePiece's normaliser does with the identity rule
 * (sentencepiece `normalizer.cc` `Normalizer::Normalize`; only U+0020 counts as whitespace):
 * add_dummy_prefix prepends the space symbol; remove_extra_whitespaces then drops the spaces after it (the
 * text's leading spaces), every trailing space symbol (a space or a literal "▁", so text of spaces only
 * becomes empty, prefix included) and collapses inner runs of spaces to one; escape_whitespaces turns spaces
 * into "▁". Anchors are `\A`/`\z` (`^`/`$` are line anchors in the Rust tokenizers' Oniguruma regexes), and
 * the prefix is prepended first so that text of spaces only comes out empty in both the Rust library (whose
 * Prepend skips empty text) and @huggingface/tokenizers (whose Prepend does not).
 */
function hfNormalizers(n: SentencePieceNormalizer): Record<string, unknown>[] {
  const prefix = n.escapeWhitespaces ? SPACE_MARK : ' ';
  const trailing = n.escapeWhitespaces ? `[ ${SPACE_MARK}]+\\z` : ' +\\z';
  const out: Record<string, unknown>[] = [];
  const replace = (regex: string, content: string) => out.push({ type: 'Replace', pattern: { Regex: regex }, content });
  if (n.addDummyPrefix) out.push({ type: 'Prepend', prepend: prefix });
  if (n.removeExtraWhitespaces) {
    replace(trailing, '');
    replace(n.addDummyPrefix ? `(?<=\\A${prefix}) +` : '\\A +', '');
    replace(' {2,}', ' ');
  }
  if (n.escapeWhitespaces) out.push({ type: 'Replace', pattern: { String: ' ' }, content: SPACE_MARK });
  return out;
}

/**
 * A Hugging Face `tokenizer.json` equivalent of a SentencePiece BPE tokenizer (the layout transformers'
 * `LlamaConverter` writes for legacy Llama tokenizers): the normalizers of {@link hfNormalizers},
 * BPE with `byte_fallback` and `fuse_unk`, merges ordered by the score of the merged piece (ties by the
 * ids of the left, then right part, as transformers' `SentencePieceExtractor`), a TemplateProcessing that
 * prepends `<s>`, and the ByteFallback/Fuse/Strip decoder. Loaded by `@huggingface/tokenizers` it encodes
 * exactly as {@link SentencePieceBpeTokenizer.encode} (tested on random text).
 */
export function sentencePieceToTokenizerJson(tok: SentencePieceBpeTokenizer): Record<string, unknown> {
  const name = (id: number): string => pieceText(tok, id);
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
    normalizer: { type: 'Sequence', normalizers: hfNormalizers(tok.normalizer) },
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
