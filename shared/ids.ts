import { randomBytes } from 'node:crypto';

/**
 * Time-sortable ids (ULID-like: 10 Crockford base32 chars of milliseconds + 16 random chars,
 * lowercase, 26 chars in all).
 *
 * `newId` sorts oldest-first. `newJobId` inverts the time part so that ids sort **newest-first**:
 * blob stores (S3, the filesystem adapter) list keys in ascending order, so a listing of
 * `jobs/<owner>/` is already newest-first and can be paged with a plain start-after cursor,
 * with no index and no database.
 */

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
const TIME_CHARS = 10;
const RANDOM_CHARS = 16;
const MAX_TIME = 2 ** 48 - 1;

import { SORTABLE_ID_PATTERN } from './names.ts';

export { SORTABLE_ID_PATTERN };

function encodeTime(ms: number): string {
  if (!Number.isInteger(ms) || ms < 0 || ms > MAX_TIME) throw new RangeError(`time out of range: ${ms}`);
  let out = '';
  let rest = ms;
  for (let i = 0; i < TIME_CHARS; i++) {
    out = ALPHABET[rest % 32] + out;
    rest = Math.floor(rest / 32);
  }
  return out;
}

function decodeTime(chars: string): number {
  let ms = 0;
  for (const ch of chars) {
    const digit = ALPHABET.indexOf(ch);
    if (digit < 0) throw new RangeError(`not a sortable id: ${chars}`);
    ms = ms * 32 + digit;
  }
  return ms;
}

function randomPart(): string {
  const bytes = randomBytes(RANDOM_CHARS);
  let out = '';
  for (const b of bytes) out += ALPHABET[b & 31];
  return out;
}

/** Increment a base32 string by one (the random part of a monotonic id); wraps to all-zero on overflow. */
function incrementBase32(s: string): string {
  const chars = s.split('');
  for (let i = chars.length - 1; i >= 0; i--) {
    const d = ALPHABET.indexOf(chars[i]);
    if (d < 31) {
      chars[i] = ALPHABET[d + 1];
      return chars.join('');
    }
    chars[i] = ALPHABET[0];
  }
  return chars.join('');
}

let lastTime = -1;
let lastRandom = '';

/**
 * Oldest-first sortable id (ULID ordering, monotonic within the process): ids made in the same
 * millisecond increment the previous random part, so a FIFO ordered by id (the local queue) keeps
 * send order even for messages sent in one millisecond.
 */
export function newId(nowMs: number = Date.now()): string {
  if (nowMs === lastTime) {
    lastRandom = incrementBase32(lastRandom);
  } else {
    lastTime = nowMs;
    lastRandom = randomPart();
  }
  return encodeTime(nowMs) + lastRandom;
}

/** Newest-first sortable id, used for jobs. Ids made within the same millisecond have no defined order. */
export function newJobId(nowMs: number = Date.now()): string {
  return encodeTime(MAX_TIME - nowMs) + randomPart();
}

/** The creation time (ms since epoch) encoded in an id from `newId`. */
export function idTime(id: string): number {
  if (!SORTABLE_ID_PATTERN.test(id)) throw new RangeError(`not a sortable id: ${id}`);
  return decodeTime(id.slice(0, TIME_CHARS));
}

/** The creation time (ms since epoch) encoded in an id from `newJobId`. */
export function jobIdTime(id: string): number {
  return MAX_TIME - idTime(id);
}

/**
 * The last id a job made at `ms` or later can have: a newest-first listing that starts after it starts
 * at the jobs made before `ms` (a `created_before` filter is a start position, not a scan).
 */
export function lastJobIdFrom(ms: number): string {
  return encodeTime(MAX_TIME - clampTime(ms)) + ALPHABET[31].repeat(RANDOM_CHARS);
}

/**
 * The first id a job made at `ms` or earlier can have: a newest-first listing that ends before it
 * shows only the jobs made after `ms` (a `created_after` filter is an end, not a scan).
 */
export function firstJobIdUntil(ms: number): string {
  return encodeTime(MAX_TIME - clampTime(ms)) + ALPHABET[0].repeat(RANDOM_CHARS);
}

function clampTime(ms: number): number {
  return Math.min(Math.max(Math.floor(ms), 0), MAX_TIME);
}
