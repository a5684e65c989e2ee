/**
 * Tokenizer loading and export (docs/data.md "Tokenizers"):
 *   loadTokenizer(pathOrDir): tokenizer.json (+tokenizer_config.json), SentencePiece tokenizer.model, llama2.c tok*.bin
 *   saveTokenizerFiles(tokenizer, outDir): HF-loadable tokenizer files
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { repoRoot } from '../../config/paths.js';
import type { Tokenizer } from '../types.js';
import { TokenizerError } from './errors.js';
import { HfTokenizer } from './hf.js';
import { parseLlama2cTokenizer } from './llama2c.js';
import { SentencePieceBpeTokenizer } from './sentencepiece-bpe.js';
import { parseSentencePieceModel, sentencePieceToTokenizerJson, serializeSentencePieceModel } from './sentencepiece.js';

export { TokenizerError, type TokenizerErrorCode } from './errors.js';
export { HfTokenizer, type HfTokenizerFiles } from './hf.js';
export { SentencePieceBpeTokenizer, PieceType } from './sentencepiece-bpe.js';
export { parseLlama2cTokenizer, serializeLlama2cTokenizer } from './llama2c.js';
export {
  parseSentencePieceModel,
  parseSentencePieceModelProto,
  serializeSentencePieceModel,
  sentencePieceToTokenizerJson,
} from './sentencepiece.js';
export { renderChatTemplate, renderPlainChat } from './chat-template.js';

/** Built-in tokenizers by name (files vendored in the repo). */
const BUILTIN: Record<string, string> = {
  stories260K: join(repoRoot(), 'models/stories260K/tok512.bin'),
};

async function readJsonIfExists(path: string): Promise<Record<string, unknown> | null> {
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${path}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

async function loadHf(jsonPath: string): Promise<HfTokenizer> {
  const dir = dirname(jsonPath);
  const tplPath = join(dir, 'chat_template.jinja');
  return new HfTokenizer({
    tokenizerJsonText: await readFile(jsonPath, 'utf8'),
    tokenizerConfig: await readJsonIfExists(join(dir, 'tokenizer_config.json')),
    specialTokensMap: await readJsonIfExists(join(dir, 'special_tokens_map.json')),
    generationConfig: await readJsonIfExists(join(dir, 'generation_config.json')),
    chatTemplateFile: existsSync(tplPath) ? await readFile(tplPath, 'utf8') : null,
    path: jsonPath,
  });
}

async function loadLlama2c(binPath: string): Promise<SentencePieceBpeTokenizer> {
  const stemModel = join(dirname(binPath), `${basename(binPath, extname(binPath))}.model`);
  const modelProto = existsSync(stemModel) ? new Uint8Array(await readFile(stemModel)) : null;
  return parseLlama2cTokenizer(new Uint8Array(await readFile(binPath)), { path: binPath, modelProto });
}

/**
 * Load a tokenizer from a file, a model directory, or a built-in name (`stories260K`).
 *
 * A directory picks, in order: `tokenizer.json` (HF, with tokenizer_config.json / special_tokens_map.json /
 * generation_config.json / chat_template.jinja next to it), `tokenizer.model` (SentencePiece BPE),
 * `tokenizer.bin`, then the first `tok*.bin` (llama2.c). A llama2.c `.bin` keeps the same-stem `.model`
 * (e.g. tok512.bin → tok512.model) for export.
 * @throws TokenizerError TOKENIZER_NOT_FOUND (nothing loadable), INVALID_TOKENIZER_FORMAT, UNSUPPORTED_TOKENIZER
 */
export async function loadTokenizer(pathOrDir: string): Promise<Tokenizer> {
  const p = (Object.hasOwn(BUILTIN, pathOrDir) ? BUILTIN[pathOrDir] : undefined) ?? pathOrDir;
  let st;
  try {
    st = await stat(p);
  } catch {
    throw new TokenizerError(
      'TOKENIZER_NOT_FOUND',
      `tokenizer path ${pathOrDir} does not exist; give a tokenizer.json, tokenizer.model, llama2.c tokenizer .bin, a directory holding one, or a built-in name (${Object.keys(BUILTIN).join(', ')})`,
    );
  }
  if (st.isDirectory()) {
    if (existsSync(join(p, 'tokenizer.json'))) return loadHf(join(p, 'tokenizer.json'));
    if (existsSync(join(p, 'tokenizer.model'))) {
      return parseSentencePieceModel(new Uint8Array(await readFile(join(p, 'tokenizer.model'))), { path: join(p, 'tokenizer.model') });
    }
    if (existsSync(join(p, 'tokenizer.bin'))) return loadLlama2c(join(p, 'tokenizer.bin'));
    const tok = (await readdir(p)).filter((f) => /^tok.*\.bin$/.test(f)).sort();
    if (tok.length > 0) return loadLlama2c(join(p, tok[0]!));
    throw new TokenizerError('TOKENIZER_NOT_FOUND', `${p}: no tokenizer.json, tokenizer.model, tokenizer.bin or tok*.bin in this directory`);
  }
  const ext = extname(p).toLowerCase();
  if (ext === '.json') return loadHf(p);
  if (ext === '.model') return parseSentencePieceModel(new Uint8Array(await readFile(p)), { path: p });
  if (ext === '.bin') return loadLlama2c(p);
  throw new TokenizerError('UNSUPPORTED_TOKENIZER', `${p}: unknown tokenizer file type ${ext || '(none)'}; expected .json, .model or .bin`);
}

/** What an export knows beyond the tokenizer itself (written to tokenizer_config.json when given). */
export interface TokenizerExportOptions {
  /** The chat template the run used (Jinja), when the tokenizer has none of its own. */
  chatTemplate?: string | null;
  /** The model's context length in tokens (`max_position_embeddings`). */
  modelMaxLength?: number | null;
}

/**
 * HF `tokenizer_config.json` for a SentencePiece/llama2.c tokenizer exported as `tokenizer.model` +
 * `tokenizer.json`. The class is the generic `PreTrainedTokenizerFast` (transformers 5: `TokenizersBackend`),
 * which runs tokenizer.json as written: transformers 5's `LlamaTokenizer` replaces the file's normalizer with
 * its own Metaspace pre-tokenizer and so ignores `remove_extra_whitespaces` (checked with transformers
 * 5.18: 14 of the 70 fixture texts then differ from sentencepiece, 56 agree; with this class all 70 agree).
 */
function llamaTokenizerConfig(tok: SentencePieceBpeTokenizer, opts: TokenizerExportOptions): Record<string, unknown> {
  const added: Record<string, unknown> = {};
  const special = (content: string) => ({ content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true });
  added[String(tok.unkTokenId)] = special('<unk>');
  if (tok.bosTokenId != null) added[String(tok.bosTokenId)] = special('<s>');
  if (tok.eosTokenId != null) added[String(tok.eosTokenId)] = special('</s>');
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: added,
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    pad_token: null,
    clean_up_tokenization_spaces: false,
    legacy: true,
    sp_model_kwargs: {},
    tokenizer_class: 'PreTrainedTokenizerFast',
    ...(opts.modelMaxLength ? { model_max_length: opts.modelMaxLength } : {}),
    ...(opts.chatTemplate ? { chat_template: opts.chatTemplate } : {}),
  };
}

/**
 * Write HF-loadable tokenizer files into `outDir` (created if missing).
 * - llama2.c / SentencePiece sources: `tokenizer.model` (the original SentencePiece model bytes when known,
 *   else one synthesized from the pieces), the equivalent fast `tokenizer.json` (see
 *   sentencePieceToTokenizerJson: same ids, so transformers needs neither sentencepiece nor protobuf to
 *   load it), `tokenizer_config.json` (`tokenizer_class: "PreTrainedTokenizerFast"`, bos `<s>`, eos `</s>`, unk
 *   `<unk>`, `model_max_length` and `chat_template` when given), `special_tokens_map.json`.
 * - HF sources: tokenizer.json (unchanged), tokenizer_config.json (with `model_max_length` / `chat_template`
 *   added when given and absent), special_tokens_map.json and chat_template.jinja when the source had them.
 * @returns absolute paths of the files written.
 * @throws TokenizerError UNSUPPORTED_TOKENIZER for a tokenizer class this module did not create.
 */
export async function saveTokenizerFiles(tokenizer: Tokenizer, outDir: string, opts: TokenizerExportOptions = {}): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
  const written: string[] = [];
  const put = async (name: string, data: string | Uint8Array): Promise<void> => {
    const p = resolve(outDir, name);
    await writeFile(p, data);
    written.push(p);
  };
  const json = (o: unknown): string => `${JSON.stringify(o, null, 2)}\n`;
  if (tokenizer instanceof SentencePieceBpeTokenizer) {
    await put('tokenizer.model', tokenizer.modelProto ?? serializeSentencePieceModel(tokenizer));
    await put('tokenizer.json', JSON.stringify(sentencePieceToTokenizerJson(tokenizer)));
    await put('tokenizer_config.json', json(llamaTokenizerConfig(tokenizer, opts)));
    await put('special_tokens_map.json', json({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' }));
    return written;
  }
  if (tokenizer instanceof HfTokenizer) {
    const f = tokenizer.files;
    const cfg: Record<string, unknown> = { ...(f.tokenizerConfig ?? {}) };
    if (opts.modelMaxLength && cfg.model_max_length === undefined) cfg.model_max_length = opts.modelMaxLength;
    if (opts.chatTemplate && cfg.chat_template === undefined && !f.chatTemplateFile) cfg.chat_template = opts.chatTemplate;
    await put('tokenizer.json', f.tokenizerJsonText);
    await put('tokenizer_config.json', json(cfg));
    if (f.specialTokensMap) await put('special_tokens_map.json', json(f.specialTokensMap));
    if (f.chatTemplateFile) await put('chat_template.jinja', f.chatTemplateFile);
    return written;
  }
  throw new TokenizerError(
    'UNSUPPORTED_TOKENIZER',
    'saveTokenizerFiles: only tokenizers returned by loadTokenizer (HfTokenizer, SentencePieceBpeTokenizer) can be exported',
  );
}

/**
 * Whether the data pipeline should prepend BOS for this tokenizer: the tokenizer's own `addBosToken`
 * (llama2.c/SentencePiece: true; HF: whether its post-processor adds BOS), else "has a BOS distinct from EOS".
 */
export function tokenizerAddsBos(tok: Tokenizer): boolean {
  const flag = (tok as { addBosToken?: unknown }).addBosToken;
  if (typeof flag === 'boolean') return flag && tok.bosTokenId != null;
  return tok.bosTokenId != null && tok.bosTokenId !== tok.eosTokenId;
}
