/**
 * The ids every component shares, with readable prefixes.
 */

/** Timeline ids: `tl-` and 32 lowercase hex digits. */
export const TIMELINE_ID_PATTERN = /^tl-[0-9a-f]{32}$/;
