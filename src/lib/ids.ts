/**
 * The ids every component shares, with readable prefixes, and how a caller's value is quoted back in an error.
 */

/** Timeline ids: `tl-` and 32 lowercase hex digits. */
export const TIMELINE_ID_PATTERN = /^tl-[0-9a-f]{32}$/;

/** How much of a caller's value an error quotes back: enough to recognise it, never the whole of a 40 kB one. */
export const ECHO_MAX_CHARS = 64;

/**
 * Characters that make a name read differently from what it is: the bidirectional embeddings and overrides
 * (U+202A-U+202E), the isolates (U+2066-U+2069) and the zero-width characters (U+200B-U+200F, U+FEFF).
 */
export const DECEPTIVE_CHARACTERS = /[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;

const DECEPTIVE_GLOBAL = new RegExp(DECEPTIVE_CHARACTERS.source, 'g');

/**
 * A caller's value as an error quotes it: in double quotes, control and deceptive characters escaped, at most
 * {@link ECHO_MAX_CHARS} characters followed by `…` and its full length when it is longer.
 */
export function echo(value: string, maxChars = ECHO_MAX_CHARS): string {
  const characters = [...value];
  const shown = characters.length > maxChars ? characters.slice(0, maxChars).join('') : value;
  const quoted = JSON.stringify(shown).replace(DECEPTIVE_GLOBAL, (character) => `\\u${character.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return characters.length > maxChars ? `${quoted.slice(0, -1)}…" (${characters.length} characters)` : quoted;
}
