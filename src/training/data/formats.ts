/**
 * Preference-data formats → {@link PreferenceExample}. One function per format; detection looks at the
 * keys of a record. Field names and conventions follow the tools users come from:
 *
 * | format           | record                                                              | source                        |
 * |------------------|---------------------------------------------------------------------|-------------------------------|
 * | `explicit`       | `{prompt, chosen, rejected}` strings                                | our webhook, TRL "standard"   |
 * | `implicit` (hh)  | `{chosen, rejected}` full texts; prompt = common prefix, cut after  | TRL `extract_prompt`,         |
 * |                  | the last `\n\nAssistant:` when present (HH-RLHF)                    | eric-mitchell `get_hh`        |
 * | `conversational` | `prompt`/`chosen`/`rejected` as `{role, content}` lists (or         | TRL conversational            |
 * |                  | `{chosen, rejected}` lists with an implicit common-prefix prompt)   |                               |
 * | `sharegpt`       | `conversations: [{from, value}]`, `chosen`/`rejected: {from, value}`| LLaMA-Factory ShareGPT DPO    |
 * | `roll`           | `{instruction, input?, chosen, rejected}` (+ chosen_key/rejected_key)| ROLL, LLaMA-Factory alpaca    |
 * | `paddle`         | `{src, tgt, response, sort}`; higher sort = chosen                  | PaddleNLP DPO                 |
 * | `grouped`        | `{prompt: {responses, pairs, sft_target}}` (or flat with `prompt`)  | eric-mitchell reference       |
 *
 * Chat-shaped formats (conversational, sharegpt, roll, paddle) are rendered to text with the tokenizer's
 * chat template as TRL does (prompt with the generation prompt; completion = render(prompt + answer)
 * minus the rendered prompt). Without a tokenizer or a template they use the plain HH layout of
 * {@link renderPlainChat} ("\n\nHuman: ...\n\nAssistant:" prompt, " answer" completion).
 */
import { renderPlainChat } from '../tokenizers/chat-template.js';
import type { ChatMessage, PreferenceExample, Tokenizer } from '../types.js';
import { DataError } from './errors.js';

export const DATA_FORMATS = ['explicit', 'implicit', 'conversational', 'sharegpt', 'roll', 'paddle', 'grouped'] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

/** Other names users may give in `dataset_format=...`. */
export const FORMAT_ALIASES: Record<string, DataFormat> = {
  standard: 'explicit',
  trl: 'explicit',
  prompt_chosen_rejected: 'explicit',
  webhook: 'explicit',
  hh: 'implicit',
  'hh-rlhf': 'implicit',
  implicit_prompt: 'implicit',
  messages: 'conversational',
  chat: 'conversational',
  llamafactory: 'sharegpt',
  alpaca: 'roll',
  paddlenlp: 'paddle',
  reference: 'grouped',
  'eric-mitchell': 'grouped',
};

export interface FormatOptions {
  /** ROLL: key of the preferred response (default `chosen`). */
  chosenKey?: string;
  /** ROLL: key of the dispreferred response (default `rejected`). */
  rejectedKey?: string;
  /** ROLL: key of the instruction (default `instruction`). */
  promptKey?: string;
  /** Renders chat-shaped formats with its chat template (plain HH layout when absent). */
  tokenizer?: Tokenizer;
}

/** Resolve a user-given format name or alias. @throws DataError UNKNOWN_DATA_FORMAT */
export function resolveFormatName(name: string): DataFormat {
  const n = name.trim().toLowerCase();
  if ((DATA_FORMATS as readonly string[]).includes(n)) return n as DataFormat;
  const a = FORMAT_ALIASES[n];
  if (a) return a;
  throw new DataError(
    'UNKNOWN_DATA_FORMAT',
    `dataset_format=${name} is not a known format; use one of ${DATA_FORMATS.join(', ')} (aliases: ${Object.keys(FORMAT_ALIASES).join(', ')})`,
  );
}

type Rec = Record<string, unknown>;
const isObj = (v: unknown): v is Rec => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Detect the format of one record from its keys.
 * @throws DataError UNKNOWN_DATA_FORMAT naming the keys found.
 */
export function detectFormat(record: unknown, opts: FormatOptions = {}): DataFormat {
  if (!isObj(record)) {
    throw new DataError('UNKNOWN_DATA_FORMAT', `a record must be a JSON object, got ${Array.isArray(record) ? 'an array' : typeof record}`);
  }
  const has = (k: string) => k in record;
  const ck = opts.chosenKey ?? 'chosen';
  const rk = opts.rejectedKey ?? 'rejected';
  if (Array.isArray(record.conversations)) return 'sharegpt';
  if (has('src') && has('response') && has('sort')) return 'paddle';
  if (has('responses') && has('pairs')) return 'grouped';
  if (has(opts.promptKey ?? 'instruction') && has(ck) && has(rk)) return 'roll';
  if (has('prompt') && has(ck) && has(rk)) {
    if (Array.isArray(record.prompt) || Array.isArray(record[ck]) || Array.isArray(record[rk])) return 'conversational';
    return ck === 'chosen' && rk === 'rejected' ? 'explicit' : 'roll';
  }
  if (has(ck) && has(rk)) return Array.isArray(record[ck]) || Array.isArray(record[rk]) ? 'conversational' : 'implicit';
  throw new DataError(
    'UNKNOWN_DATA_FORMAT',
    `cannot detect the data format from keys [${Object.keys(record).join(', ')}]; expected e.g. {prompt, chosen, rejected}, {chosen, rejected}, ` +
      `{instruction, input, chosen, rejected}, {src, tgt, response, sort}, {conversations, chosen, rejected} or {prompt: {responses, pairs}}; ` +
      `or set dataset_format=... (dpo validate --format)`,
  );
}

function bad(field: string, message: string, reason?: string): DataError {
  const r =
    reason ??
    (message === 'is missing'
      ? 'MISSING_FIELD'
      : message === 'is empty'
        ? 'EMPTY_FIELD'
        : message.startsWith('must be a string,')
          ? 'INVALID_FIELD_TYPE'
          : 'INVALID_FIELD');
  return new DataError('INVALID_DATA_RECORD', `${field}: ${message}`, { field, reason: r });
}

function str(r: Rec, key: string, opts: { allowEmpty?: boolean } = {}): string {
  const v = r[key];
  if (v === undefined || v === null) throw bad(key, 'is missing');
  if (typeof v !== 'string') throw bad(key, `must be a string, got ${Array.isArray(v) ? 'an array' : typeof v}`);
  if (!opts.allowEmpty && v.trim() === '') throw bad(key, 'is empty');
  return v;
}

// ---------------- implicit prompt ----------------

export const HH_ASSISTANT = '\n\nAssistant:';

/** The HH-RLHF prompt of a full transcript: the text through the last `\n\nAssistant:` ('' if none). */
export function extractHhPrompt(text: string): string {
  const i = text.lastIndexOf(HH_ASSISTANT);
  return i < 0 ? '' : text.slice(0, i + HH_ASSISTANT.length);
}

/**
 * Split two full texts into a shared prompt and two completions.
 * prompt = the longest common prefix, cut back to the end of its last `\n\nAssistant:` when it has one
 * (the HH-RLHF rule of eric-mitchell `extract_anthropic_prompt`, applied to the part both texts share);
 * otherwise TRL's `extract_prompt` rule (the common prefix, minus a trailing space).
 */
export function splitImplicitPrompt(chosen: string, rejected: string): PreferenceExample {
  const n = Math.min(chosen.length, rejected.length);
  let lcp = 0;
  while (lcp < n && chosen.charCodeAt(lcp) === rejected.charCodeAt(lcp)) lcp++;
  const common = chosen.slice(0, lcp);
  let cut = common.lastIndexOf(HH_ASSISTANT);
  if (cut >= 0) cut += HH_ASSISTANT.length;
  else {
    cut = lcp;
    if (cut > 0 && cut < n && chosen[cut - 1] === ' ') cut--;
  }
  return { prompt: chosen.slice(0, cut), chosen: chosen.slice(cut), rejected: rejected.slice(cut) };
}

// ---------------- chat rendering ----------------

/**
 * Render a prompt conversation and one answer to (prompt text, completion text) as TRL's
 * `maybe_apply_chat_template` does: prompt = template(prompt, add_generation_prompt = last turn is not the
 * assistant's); completion = template(prompt + answer) with the rendered prompt removed. Without a chat
 * template: {@link renderPlainChat}.
 */
export function renderConversation(prompt: ChatMessage[], answer: ChatMessage[], tok?: Tokenizer): { prompt: string; completion: string } {
  const addGenerationPrompt = prompt.length === 0 || prompt[prompt.length - 1]!.role !== 'assistant';
  const render =
    tok?.chatTemplate && tok.applyChatTemplate
      ? (m: ChatMessage[], g: boolean) => tok.applyChatTemplate!(m, { addGenerationPrompt: g })
      : (m: ChatMessage[], g: boolean) => renderPlainChat(m, { addGenerationPrompt: g });
  const p = render(prompt, addGenerationPrompt);
  const full = render([...prompt, ...answer], false);
  if (full.startsWith(p)) return { prompt: p, completion: full.slice(p.length) };
  // a template that renders the prompt differently once an answer follows: keep the shared prefix
  let i = 0;
  while (i < p.length && i < full.length && p.charCodeAt(i) === full.charCodeAt(i)) i++;
  return { prompt: p.slice(0, i), completion: full.slice(i) };
}

function messages(v: unknown, field: string): ChatMessage[] {
  if (typeof v === 'string') {
    if (v.trim() === '') throw bad(field, 'is empty');
    return [{ role: field === 'prompt' ? 'user' : 'assistant', content: v }];
  }
  if (isObj(v)) v = [v];
  if (!Array.isArray(v)) throw bad(field, `must be a list of {role, content} messages, got ${v === undefined ? 'nothing' : typeof v}`);
  return v.map((m, i) => {
    if (!isObj(m)) throw bad(`${field}[${i}]`, 'must be a {role, content} object');
    const role = m.role ?? m.from;
    const content = m.content ?? m.value;
    if (typeof role !== 'string') throw bad(`${field}[${i}].role`, 'must be a string');
    if (typeof content !== 'string') throw bad(`${field}[${i}].content`, 'must be a string');
    return { role: normaliseRole(role), content };
  });
}

const ROLE_MAP: Record<string, string> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  system: 'system',
  observation: 'tool',
  function_call: 'assistant',
  tool: 'tool',
};
function normaliseRole(r: string): string {
  return ROLE_MAP[r.toLowerCase()] ?? r;
}

function chatExample(prompt: ChatMessage[], chosen: ChatMessage[], rejected: ChatMessage[], tok?: Tokenizer): PreferenceExample {
  const c = renderConversation(prompt, chosen, tok);
  const r = renderConversation(prompt, rejected, tok);
  // both renderings share the prompt; if a template made them differ, keep their common prefix
  let prompt0 = c.prompt;
  if (r.prompt !== c.prompt) {
    let i = 0;
    while (i < c.prompt.length && i < r.prompt.length && c.prompt.charCodeAt(i) === r.prompt.charCodeAt(i)) i++;
    prompt0 = c.prompt.slice(0, i);
  }
  return { prompt: prompt0, chosen: c.prompt.slice(prompt0.length) + c.completion, rejected: r.prompt.slice(prompt0.length) + r.completion };
}

// ---------------- converters ----------------

function convertExplicit(r: Rec): PreferenceExample[] {
  return [{ prompt: str(r, 'prompt', { allowEmpty: true }), chosen: str(r, 'chosen'), rejected: str(r, 'rejected') }];
}

function convertImplicit(r: Rec): PreferenceExample[] {
  return [splitImplicitPrompt(str(r, 'chosen'), str(r, 'rejected'))];
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content;
}

function convertConversational(r: Rec, o: FormatOptions): PreferenceExample[] {
  const chosen = messages(r.chosen, 'chosen');
  const rejected = messages(r.rejected, 'rejected');
  if (r.prompt !== undefined) return [chatExample(messages(r.prompt, 'prompt'), chosen, rejected, o.tokenizer)];
  // implicit conversational prompt: the common leading messages
  let k = 0;
  while (k < chosen.length && k < rejected.length && sameMessage(chosen[k]!, rejected[k]!)) k++;
  if (k === chosen.length || k === rejected.length) throw bad('rejected', 'chosen and rejected conversations do not differ after their common prefix');
  return [chatExample(chosen.slice(0, k), chosen.slice(k), rejected.slice(k), o.tokenizer)];
}

function convertShareGpt(r: Rec, o: FormatOptions): PreferenceExample[] {
  const prompt = messages(r.conversations, 'conversations');
  if (typeof r.system === 'string' && r.system.trim() !== '' && prompt[0]?.role !== 'system') prompt.unshift({ role: 'system', content: r.system });
  if (r.chosen === undefined) throw bad('chosen', 'is missing');
  if (r.rejected === undefined) throw bad('rejected', 'is missing');
  const chosen = messages(r.chosen, 'chosen');
  const rejected = messages(r.rejected, 'rejected');
  if (chosen.some((m) => m.content.trim() === '')) throw bad('chosen', 'is empty');
  if (rejected.some((m) => m.content.trim() === '')) throw bad('rejected', 'is empty');
  return [chatExample(prompt, chosen, rejected, o.tokenizer)];
}

function convertRoll(r: Rec, o: FormatOptions): PreferenceExample[] {
  const pk = o.promptKey ?? ('instruction' in r ? 'instruction' : 'prompt');
  const instruction = str(r, pk);
  const input = r.input === undefined || r.input === null ? '' : str(r, 'input', { allowEmpty: true });
  const prompt: ChatMessage[] = [];
  if (typeof r.system === 'string' && r.system.trim() !== '') prompt.push({ role: 'system', content: r.system });
  if (Array.isArray(r.history)) {
    r.history.forEach((turn, i) => {
      if (!Array.isArray(turn) || turn.length !== 2 || typeof turn[0] !== 'string' || typeof turn[1] !== 'string') {
        throw bad(`history[${i}]`, 'must be a [user, assistant] pair of strings');
      }
      prompt.push({ role: 'user', content: turn[0] }, { role: 'assistant', content: turn[1] });
    });
  }
  prompt.push({ role: 'user', content: input.trim() === '' ? instruction : `${instruction}\n${input}` });
  const ck = o.chosenKey ?? 'chosen';
  const rk = o.rejectedKey ?? 'rejected';
  return [chatExample(prompt, [{ role: 'assistant', content: str(r, ck) }], [{ role: 'assistant', content: str(r, rk) }], o.tokenizer)];
}

function strList(v: unknown, field: string): string[] {
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw bad(field, 'must be a string or a list of strings');
  return v as string[];
}

function convertPaddle(r: Rec, o: FormatOptions): PreferenceExample[] {
  const src = strList(r.src, 'src');
  const tgt = r.tgt === undefined || r.tgt === null ? [] : strList(r.tgt, 'tgt');
  if (src.length === 0) throw bad('src', 'is empty');
  if (tgt.length !== src.length - 1) throw bad('tgt', `must hold ${src.length - 1} earlier answer(s) for ${src.length} src turn(s), got ${tgt.length}`);
  const response = strList(r.response, 'response');
  if (!Array.isArray(r.sort) || r.sort.length !== response.length || r.sort.some((x) => typeof x !== 'number')) {
    throw bad('sort', `must be a list of ${response.length} numbers, one per response`);
  }
  const sort = r.sort as number[];
  const prompt: ChatMessage[] = [];
  src.forEach((s, i) => {
    prompt.push({ role: 'user', content: s });
    if (i < tgt.length) prompt.push({ role: 'assistant', content: tgt[i]! });
  });
  const out: PreferenceExample[] = [];
  for (let i = 0; i < response.length; i++) {
    for (let j = 0; j < response.length; j++) {
      if (sort[i]! > sort[j]!) {
        if (response[i]!.trim() === '') throw bad(`response[${i}]`, 'is empty');
        if (response[j]!.trim() === '') throw bad(`response[${j}]`, 'is empty');
        out.push(chatExample(prompt, [{ role: 'assistant', content: response[i]! }], [{ role: 'assistant', content: response[j]! }], o.tokenizer));
      }
    }
  }
  if (out.length === 0) throw bad('sort', 'no response is ranked above another (all sort values equal)');
  return out;
}

function convertGrouped(r: Rec): PreferenceExample[] {
  const prompt = str(r, 'prompt', { allowEmpty: true });
  const responses = strList(r.responses, 'responses');
  if (!Array.isArray(r.pairs) || r.pairs.length === 0) throw bad('pairs', 'must be a non-empty list of [preferred, dispreferred] index pairs');
  const sftTarget = r.sft_target === undefined || r.sft_target === null ? undefined : str(r, 'sft_target');
  return r.pairs.map((p, k) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((i) => Number.isInteger(i) && i >= 0 && i < responses.length)) {
      throw bad(`pairs[${k}]`, `must be [i, j] with indices into responses (0..${responses.length - 1})`);
    }
    const [i, j] = p as [number, number];
    return { prompt, chosen: responses[i]!, rejected: responses[j]!, sftTarget: sftTarget ?? responses[(r.pairs as number[][])[0]![0]!]! };
  });
}

/**
 * Convert one record of a known format.
 * @returns one example per pair (several for grouped / ranked records)
 * @throws DataError INVALID_DATA_RECORD with `field` naming what is missing or malformed.
 */
export function convertRecord(record: unknown, format: DataFormat, opts: FormatOptions = {}): PreferenceExample[] {
  if (!isObj(record)) throw new DataError('INVALID_DATA_RECORD', `a ${format} record must be a JSON object`, { field: '' });
  switch (format) {
    case 'explicit':
      return convertExplicit(record);
    case 'implicit':
      return convertImplicit(record);
    case 'conversational':
      return convertConversational(record, opts);
    case 'sharegpt':
      return convertShareGpt(record, opts);
    case 'roll':
      return convertRoll(record, opts);
    case 'paddle':
      return convertPaddle(record, opts);
    case 'grouped':
      return convertGrouped(record);
  }
}
