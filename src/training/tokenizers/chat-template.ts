/**
 * Chat templates: HF `tokenizer_config.json` `chat_template` (Jinja) rendered with `@huggingface/jinja`,
 * with the variables transformers' `apply_chat_template` passes (messages, add_generation_prompt and the
 * special-token strings), and a documented plain fallback for tokenizers without a template.
 */
import { Template } from '@huggingface/jinja';
import type { ChatMessage } from '../types.js';
import { TokenizerError } from './errors.js';

const cache = new Map<string, Template>();

/**
 * Render `messages` with a Jinja chat template.
 * @param specialTokens strings for bos_token, eos_token, pad_token, unk_token (transformers passes them)
 * @throws TokenizerError INVALID_TOKENIZER_FORMAT when the template does not parse or raises.
 */
export function renderChatTemplate(
  template: string,
  messages: ChatMessage[],
  opts: { addGenerationPrompt?: boolean; specialTokens?: Record<string, string | null> } = {},
): string {
  let t = cache.get(template);
  try {
    if (!t) {
      t = new Template(template);
      cache.set(template, t);
    }
    return t.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      ...(opts.specialTokens ?? {}),
    });
  } catch (e) {
    throw new TokenizerError('INVALID_TOKENIZER_FORMAT', `chat template failed to render: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The plain fallback used when a tokenizer has no chat template (e.g. llama2.c's tok512, GPT-2). It is the
 * Anthropic HH layout the DPO reference trains on:
 *   system:    "<content>" (first; the next turn starts with "\n\n")
 *   user:      "\n\nHuman: <content>"
 *   assistant: "\n\nAssistant: <content>"
 *   generation prompt: "\n\nAssistant:"
 * so a prompt rendered with the generation prompt ends with "\n\nAssistant:" and a completion rendered
 * as the assistant turn is " <content>".
 */
export function renderPlainChat(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
  let s = '';
  for (const m of messages) {
    if (m.role === 'system') s += m.content;
    else if (m.role === 'assistant') s += `\n\nAssistant: ${m.content}`;
    else s += `\n\nHuman: ${m.content}`;
  }
  if (opts.addGenerationPrompt) s += '\n\nAssistant:';
  return s;
}
