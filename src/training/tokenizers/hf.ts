/**
 * Hugging Face `tokenizer.json` tokenizers (BPE with byte fallback, ByteLevel GPT-2, ...) through
 * `@huggingface/tokenizers`, with special tokens from `tokenizer_config.json`, `special_tokens_map.json`
 * and `generation_config.json`, and the chat template from `tokenizer_config.json` (or `chat_template.jinja`).
 */
import { Tokenizer as HfCoreTokenizer } from '@huggingface/tokenizers';
import type { ChatMessage, Tokenizer } from '../types.js';
import { renderChatTemplate } from './chat-template.js';
import { TokenizerError } from './errors.js';

type Json = Record<string, unknown>;

export interface HfTokenizerFiles {
  /** tokenizer.json, as text (written back unchanged on export). */
  tokenizerJsonText: string;
  tokenizerConfig?: Json | null;
  specialTokensMap?: Json | null;
  generationConfig?: Json | null;
  /** A separate chat_template.jinja file (newer transformers), preferred over tokenizer_config's. */
  chatTemplateFile?: string | null;
  path?: string;
}

/** `"<s>"` or `{content: "<s>", ...}` → "<s>". */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

function firstId(v: unknown): number | null {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return null;
}

export class HfTokenizer implements Tokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  /** True when the tokenizer's own post-processor prepends BOS (Llama); false for GPT-2 / Qwen. */
  readonly addBosToken: boolean;
  /** EOS ids generation stops at (generation_config eos_token_id list, else the tokenizer's EOS). */
  readonly stopTokenIds: number[];
  readonly chatTemplate: string | null;
  readonly files: HfTokenizerFiles;
  readonly path?: string;
  private readonly core: HfCoreTokenizer;

  /** @throws TokenizerError INVALID_TOKENIZER_FORMAT when tokenizer.json is not valid JSON or not loadable. */
  constructor(files: HfTokenizerFiles) {
    this.files = files;
    this.path = files.path;
    const where = files.path ?? 'tokenizer.json';
    let tj: Json;
    try {
      tj = JSON.parse(files.tokenizerJsonText) as Json;
    } catch (e) {
      throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    const cfg: Json = files.tokenizerConfig ?? {};
    try {
      this.core = new HfCoreTokenizer(tj, cfg);
    } catch (e) {
      throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `${where}: @huggingface/tokenizers cannot load it (${(e as Error).message})`, {
        cause: e,
      });
    }
    const stm: Json = files.specialTokensMap ?? {};
    const gen: Json = files.generationConfig ?? {};
    const pick = (name: string): string | null => tokenString(cfg[name]) ?? tokenString(stm[name]);
    const idOf = (tokenStr: string | null): number | null => (tokenStr == null ? null : (this.core.token_to_id(tokenStr) ?? null));
    this.bosToken = pick('bos_token');
    this.eosToken = pick('eos_token');
    this.padToken = pick('pad_token');
    this.unkToken = pick('unk_token');
    this.bosTokenId = idOf(this.bosToken) ?? firstId(gen.bos_token_id);
    this.eosTokenId = idOf(this.eosToken) ?? firstId(gen.eos_token_id);
    this.padTokenId = idOf(this.padToken) ?? firstId(gen.pad_token_id);
    let maxId = -1;
    for (const id of this.core.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    const genEos = gen.eos_token_id;
    const stops = Array.isArray(genEos) ? genEos.filter((x): x is number => typeof x === 'number') : typeof genEos === 'number' ? [genEos] : [];
    if (this.eosTokenId != null && !stops.includes(this.eosTokenId)) stops.unshift(this.eosTokenId);
    this.stopTokenIds = stops;
    const withSpecial = this.core.encode('a', { add_special_tokens: true }).ids;
    this.addBosToken = this.bosTokenId != null && withSpecial.length > 0 && withSpecial[0] === this.bosTokenId;
    let tpl: unknown = files.chatTemplateFile ?? cfg.chat_template ?? null;
    if (Array.isArray(tpl)) {
      const named = tpl as { name?: string; template?: string }[];
      tpl = (named.find((t) => t.name === 'default') ?? named[0])?.template ?? null;
    }
    this.chatTemplate = typeof tpl === 'string' ? tpl : null;
  }

  /** Encode without special tokens (no BOS/EOS added). */
  encode(text: string): number[] {
    return this.core.encode(text, { add_special_tokens: false }).ids;
  }

  /** Decode, skipping special tokens (BOS/EOS/pad), without cleaning up tokenization spaces. */
  decode(ids: number[]): string {
    if (ids.length === 0) return '';
    return this.core.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /** Token string → id (added tokens included), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.core.token_to_id(token);
  }

  /**
   * Render a conversation with the tokenizer's chat template (transformers `apply_chat_template(tokenize=False)`).
   * @throws TokenizerError MISSING_CHAT_TEMPLATE when the tokenizer has none.
   */
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (!this.chatTemplate) {
      throw new TokenizerError('MISSING_CHAT_TEMPLATE', `${this.path ?? 'tokenizer'} has no chat_template in tokenizer_config.json`);
    }
    return renderChatTemplate(this.chatTemplate, messages, {
      addGenerationPrompt: opts.addGenerationPrompt,
      specialTokens: { bos_token: this.bosToken ?? '', eos_token: this.eosToken ?? '', pad_token: this.padToken, unk_token: this.unkToken },
    });
  }
}
