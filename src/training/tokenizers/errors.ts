/**
 * Typed errors of the tokenizer loaders. `code` is stable and machine-readable.
 */
export type TokenizerErrorCode = 'TOKENIZER_NOT_FOUND' | 'INVALID_TOKENIZER_FORMAT' | 'UNSUPPORTED_TOKENIZER' | 'MISSING_CHAT_TEMPLATE';

export class TokenizerError extends Error {
  readonly code: TokenizerErrorCode;
  constructor(code: TokenizerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TokenizerError';
    this.code = code;
  }
}
