// The logger shape bgrs writes its warnings and errors to.

/** Where warnings go. `console` fits; so does a pino or winston logger. */
export interface Logger {
  warn(message: string): void;
  error(message: string): void;
}
