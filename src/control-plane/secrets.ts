/**
 * How API key secrets and the operator token are kept and compared.
 *
 * A secret is a random 260-bit token the control plane generated ({@link newApiKeySecret}), not a password a
 * person chose: nobody can guess it or try a dictionary against its hash, so a plain SHA-256 is enough to keep it
 * (a slow password hash like scrypt would only add latency to every call, which is looked up by this hash).
 * A stolen catalog gives hashes that cannot be turned back into usable keys.
 */
import fs from 'node:fs';
import { createHash, timingSafeEqual } from 'node:crypto';
import { ConfigError } from '../lib/config.js';

/** SHA-256 of a secret, lowercase hex: what the catalog keeps and looks keys up by. */
export function secretHash(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Whether `given` is `expected`, in time that does not depend on where they differ. */
export function sameSecret(given: string, expected: string): boolean {
  // Comparing fixed-length digests keeps the length of `expected` out of the timing too.
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}

/** The shortest operator token accepted: it guards tenant creation, so it must not be guessable. */
export const MIN_OPERATOR_TOKEN_LENGTH = 32;

/**
 * The operator token in `file` (surrounding whitespace ignored). Throws ConfigError naming the file when it cannot
 * be read or is shorter than {@link MIN_OPERATOR_TOKEN_LENGTH}.
 */
export function readOperatorToken(file: string): string {
  let token: string;
  try {
    token = fs.readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new ConfigError(`--operator-token-file ${file} cannot be read: ${(error as Error).message}`);
  }
  if (token.length < MIN_OPERATOR_TOKEN_LENGTH || /\s/.test(token)) {
    throw new ConfigError(
      `--operator-token-file ${file} must hold one token of at least ${MIN_OPERATOR_TOKEN_LENGTH} characters without spaces (e.g. \`openssl rand -hex 32\`)`,
    );
  }
  return token;
}
