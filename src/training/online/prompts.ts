/**
 * The prompts of online DPO. A record is read as
 * - a prompt-only row: `{prompt}` with a string or a `{role, content}` message list (the webhook's
 *   `[{prompt}]`), optionally with an SFT target (`chosen` or `completion`); or `{messages}` (the last
 *   assistant turn, when there is one, is the SFT target);
 * - any preference record the DPO readers accept (explicit, implicit/HH, conversational, sharegpt, roll,
 *   paddle, grouped: see ../data/formats.ts): its prompt, and its chosen completion as the SFT target.
 * Chat prompts are rendered with the tokenizer's chat template and its generation prompt (plain HH layout
 * without one), as the DPO readers render them. Prompts are tokenised as DPO prompts are (BOS once when the
 * tokenizer uses it; cut to `max_prompt_length`, `keep_end` keeping BOS and the end).
 */
import { DataError } from '../data/errors.js';
import { convertRecord, detectFormat, renderConversation, resolveFormatName } from '../data/formats.js';
import { resolveSource } from '../data/load.js';
import { readRecords } from '../data/readers.js';
import { renderPlainChat } from '../tokenizers/chat-template.js';
import { tokenizerAddsBos } from '../tokenizers/index.js';
import type { ChatMessage, Tokenizer } from '../types.js';

/** One prompt, with the SFT target its record carried (none for a bare prompt). */
export interface PromptRow {
  prompt: string;
  /** Completion the SFT stage trains on (a preference record's chosen), when the record has one. */
  target?: string;
}

/** A tokenised prompt. */
export interface TokenizedPrompt {
  /** The prompt text (after chat rendering). */
  text: string;
  /** Token ids, BOS first when the tokenizer uses it, at most `max_prompt_length`. */
  ids: number[];
}

type Rec = Record<string, unknown>;
const isObj = (v: unknown): v is Rec => v !== null && typeof v === 'object' && !Array.isArray(v);

function messagesOf(v: unknown, field: string): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0)
    throw new DataError('INVALID_DATA_RECORD', `${field}: must be a non-empty list of {role, content} messages`, { field });
  return v.map((m, i) => {
    if (!isObj(m) || typeof (m.role ?? m.from) !== 'string' || typeof (m.content ?? m.value) !== 'string') {
      throw new DataError('INVALID_DATA_RECORD', `${field}[${i}]: must be a {role, content} message of strings`, { field: `${field}[${i}]` });
    }
    return { role: String(m.role ?? m.from), content: String(m.content ?? m.value) };
  });
}

/** A prompt conversation rendered with the generation prompt (the tokenizer's chat template, else the plain HH layout). */
function renderPrompt(messages: ChatMessage[], tok?: Tokenizer): string {
  if (tok?.chatTemplate && tok.applyChatTemplate) return tok.applyChatTemplate(messages, { addGenerationPrompt: true });
  return renderPlainChat(messages, { addGenerationPrompt: true });
}

function optionalText(r: Rec, key: string): string | undefined {
  const v = r[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new DataError('INVALID_DATA_RECORD', `${key}: must be a string, got ${typeof v}`, { field: key });
  return v.trim() === '' ? undefined : v;
}

/** True for a record no DPO reader recognises that has a `prompt` or `messages` (a prompt, perhaps with an SFT target). */
function isPromptOnly(r: Rec, opts: { chosenKey?: string; rejectedKey?: string }): boolean {
  if (!('prompt' in r || 'messages' in r)) return false;
  try {
    detectFormat(r, opts);
    return false;
  } catch {
    return true;
  }
}

/**
 * One record as a prompt row (see the module doc).
 * @throws DataError INVALID_DATA_RECORD naming the field, UNKNOWN_DATA_FORMAT
 */
export function promptRowOf(record: unknown, opts: { format?: string; chosenKey?: string; rejectedKey?: string; tokenizer?: Tokenizer } = {}): PromptRow {
  if (!isObj(record))
    throw new DataError('INVALID_DATA_RECORD', `a prompt record must be a JSON object, got ${Array.isArray(record) ? 'an array' : typeof record}`);
  const ck = opts.chosenKey ?? 'chosen';
  if (!opts.format && isPromptOnly(record, opts)) {
    const target = optionalText(record, ck) ?? optionalText(record, 'completion');
    if ('prompt' in record) {
      const p = record.prompt;
      if (typeof p === 'string') {
        if (p.trim() === '') throw new DataError('INVALID_DATA_RECORD', 'prompt: is empty', { field: 'prompt', reason: 'EMPTY_FIELD' });
        return target === undefined ? { prompt: p } : { prompt: p, target };
      }
      const rendered = renderPrompt(messagesOf(p, 'prompt'), opts.tokenizer);
      return target === undefined ? { prompt: rendered } : { prompt: rendered, target };
    }
    const msgs = messagesOf(record.messages, 'messages');
    const last = msgs[msgs.length - 1]!;
    if (last.role === 'assistant' && msgs.length > 1) {
      const r = renderConversation(msgs.slice(0, -1), [last], opts.tokenizer);
      return { prompt: r.prompt, target: r.completion };
    }
    return { prompt: renderPrompt(msgs, opts.tokenizer) };
  }
  const format = opts.format ? resolveFormatName(opts.format) : detectFormat(record, opts);
  const ex = convertRecord(record, format, opts)[0]!;
  return { prompt: ex.prompt, target: ex.sftTarget ?? ex.chosen };
}

/**
 * Load prompt rows from a file path (JSON, JSONL, .gz), a registered dataset name, or in-memory rows.
 * @throws DataError (DATA_NOT_FOUND, DATA_PARSE_FAILED, INVALID_DATA_RECORD with `index`, EMPTY_DATA)
 */
export async function loadPromptRows(
  source: string | unknown[],
  opts: { format?: string; chosenKey?: string; rejectedKey?: string; tokenizer?: Tokenizer } = {},
): Promise<PromptRow[]> {
  const src = resolveSource(source, { format: opts.format });
  const o = { ...opts, format: src.format };
  const out: PromptRow[] = [];
  const records: AsyncIterable<{ value: unknown; index: number; line?: number }> | Array<{ value: unknown; index: number; line?: number }> = src.rows
    ? src.rows.map((value, index) => ({ value, index }))
    : readRecords(src.path!);
  for await (const rec of records) {
    try {
      out.push(promptRowOf(rec.value, o));
    } catch (e) {
      if (!(e instanceof DataError)) throw e;
      const where = rec.line !== undefined ? `${src.label}:${rec.line}` : `${src.label} record ${rec.index}`;
      throw new DataError(e.code, `${where}: ${e.message}`, { index: rec.index, line: rec.line, field: e.field, reason: e.reason, cause: e });
    }
  }
  if (out.length === 0) throw new DataError('EMPTY_DATA', `${src.label}: no prompts found`);
  return out;
}

/**
 * Tokenise a prompt as the DPO data pipeline tokenises prompts (see the module doc).
 * @throws RangeError when maxPromptLength < 1
 */
export function tokenizePrompt(text: string, tok: Tokenizer, o: { maxPromptLength: number; truncationMode: 'keep_start' | 'keep_end' }): TokenizedPrompt {
  if (!(o.maxPromptLength >= 1)) throw new RangeError(`max_prompt_length must be >= 1, got ${o.maxPromptLength}`);
  const raw = tok.encode(text);
  const bos = tok.bosTokenId;
  const addBos = bos !== null && tokenizerAddsBos(tok);
  let ids = addBos && raw[0] !== bos ? [bos, ...raw] : raw;
  if (ids.length === 0) {
    const fallback = bos ?? tok.eosTokenId;
    if (fallback === null) throw new RangeError('tokenizePrompt: empty prompt and the tokenizer has neither BOS nor EOS');
    ids = [fallback];
  }
  if (ids.length > o.maxPromptLength) {
    if (o.truncationMode === 'keep_start') ids = ids.slice(0, o.maxPromptLength);
    else {
      const hasBos = addBos && ids[0] === bos;
      ids = hasBos ? [bos!, ...ids.slice(ids.length - (o.maxPromptLength - 1))].slice(0, o.maxPromptLength) : ids.slice(ids.length - o.maxPromptLength);
    }
  }
  return { text, ids };
}
