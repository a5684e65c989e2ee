/**
 * Typed errors of the model layer. Each carries a stable `code` for the API/CLI to map.
 */

/** Base class: every model-layer error has a stable `code`. */
export class ModelError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** `config.json` names a `model_type` we do not implement. */
export class UnsupportedModelError extends ModelError {
  constructor(message: string) {
    super('UNSUPPORTED_MODEL', message);
  }
}

/** `config.json` is missing a field or holds an inconsistent value. */
export class ModelConfigError extends ModelError {
  constructor(message: string) {
    super('INVALID_MODEL_CONFIG', message);
  }
}

/** A weights file is corrupt, lacks a tensor, or holds a tensor of the wrong shape/dtype. */
export class WeightsError extends ModelError {
  /** The tensor the problem concerns, when there is one. */
  readonly tensor: string | null;
  constructor(message: string, tensor: string | null = null, code = 'INVALID_WEIGHTS') {
    super(code, message);
    this.tensor = tensor;
  }
}

/** `loadModel` could not find a model under the given name or path. */
export class ModelNotFoundError extends ModelError {
  constructor(message: string) {
    super('MODEL_NOT_FOUND', message);
  }
}
