// clipag remote batch: a file of generation requests (JSON Lines, one POST /v1/generations body a
// line) run against the API as a pipeline would: every line checked before the first request, a few
// in flight at once, each line's Idempotency-Key derived from the line itself (so a run that stops,
// whatever the reason, is resumed by running the same command again: no line is made twice), the
// images downloaded as each line ends, and a results file, in the input's order, for the pipeline
// to read. Retries and Retry-After live in api-client.ts, as for `generate`.
import { createHash } from 'node:crypto';
import { appendFileSync, chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, realpathSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { parseCliArgs as parseArgs } from './common.ts';
import { canonicalJson } from '../functions/idempotency.ts';
import { MAX_IMAGE_FILE_BYTES } from '../shared/image-header.ts';
import { checkInitDataUriSync, checkInitImageSync } from '../shared/init-image.ts';
import { decodeUtf8Strictly } from '../shared/utf8.ts';
import { GenerationRequest, isInitDataUri } from '../shared/schemas/generation.ts';
import { ApiError, CannotSend, GaveUp, Interrupted, isUnknownRoute, TimedOut, WaitPastDeadline, shownUrl, type Generation, type GenerationBody } from './api-client.ts';
import { UsageError, writeWhole } from './common.ts';
import { outputFile as outputFileOf } from '../shared/output-format.ts';
import {
  IDEMPOTENCY_KEY, INTERRUPTED_EXIT_CODE, checkDownloadedImage, TIMED_OUT_EXIT_CODE, WITHHELD_EXIT_CODE,
  connectionOptions, ended, noImagesMessage, outputPath, retryIn, session, shellWord, untilEnded, type RemoteIo, type Session,
} from './remote.ts';

/** More lines than this is a job for several files: the journal and the checks are per run. */
export const MAX_BATCH_LINES = 10_000;
const MAX_PARALLEL = 16;
/** The whole run's default bound (remote.ts's usage says it). */
const BATCH_TIMEOUT_SEC = 3600;
const DEFAULT_PARALLEL = 4;
const LINE_ID = /^[A-Za-z0-9_-]{1,64}$/;
/**
 * The most any deployment takes as an upload (shared/config.ts caps CLIPAG_MAX_UPLOAD_BYTES at it). A
 * deployment's own limit, the grant's `max_bytes`, may be lower: its grant answers 413 naming it, before
 * anything is stored, and the run asks no more grants for that file.
 */
const MAX_INIT_BYTES = MAX_IMAGE_FILE_BYTES;
const JOURNAL = 'journal.jsonl';
const LOCK = '.lock';
const RESULTS = 'results.jsonl';
/** The journal's and results.jsonl's mode: they hold the webhook signing secrets (as `.data/local-api-key` holds a key). */
const SECRET_FILE_MODE = 0o600;

/** One input line, checked. */
interface Line {
  /** 1-based, in FILE. */
  number: number;
  id: string;
  /** The request as sent, but for an init_file's init (filled in once uploaded). */
  body: GenerationBody;
  /** Its init image: the file (read again when uploaded: a batch's bytes are not all held) and its hash. */
  initFile?: { path: string; sha256: string };
  /** The Idempotency-Key's stem: the line's identity (its id, its body, its init file's bytes, --batch-key). */
  stem: string;
  /** Its images' file names in DIR, by index. */
  files: string[];
}

type Status = 'succeeded' | 'failed' | 'canceled' | 'refused' | 'error' | 'timed_out' | 'interrupted' | 'not_started' | typeof SUBMITTED;
/** The journal's word for a line whose POST was answered: its generation goes on (a --retry-failed run makes no other). */
const SUBMITTED = 'submitted';

/** What a run knows of a line: the journal's records of it merged, and the results file's line. */
interface LineState {
  id: string;
  line: number;
  status: Status;
  generation_id: string | null;
  /** Which try of the line (--retry-failed makes another); its key is stem-attempt. */
  attempt: number;
  upload: string | null;
  files: string[];
  /** Each file's sha256 as written, in the same order: a later run keeps a file only while it holds these bytes. */
  files_sha256: string[];
  seeds: number[];
  /** One per file, in the same order; null for an image the API gave no score (a worker leaves out a score that is not finite). */
  clip_scores: (number | null)[];
  withheld: number[];
  cost_usd: number | null;
  /** `retryable` (an `error` line's): the same command again may finish it (a network, the API or a link that gave up), with nothing to fix. */
  error: { code: string; message: string; retryable?: boolean } | null;
  /**
   * The signing secret of the generation's webhook (a line with `webhook_url`): the API answers it in
   * the POST only (and its replays), so it is kept here, or no event of the line could be verified.
   */
  webhook_secret: string | null;
  /** The line's Idempotency-Key stem, to match the journal to the file. */
  stem: string;
  /** Succeeded in an earlier run, its files still holding its images: nothing done for it in this one (not journaled). */
  kept?: boolean;
}

/** The journal's record: what changed for a line (appended, never rewritten; the last record of a field wins). */
type JournalRecord = Omit<Partial<LineState>, 'status'> & { stem: string; status?: Status | typeof SUBMITTED };

/** Windows' device names: a file of that name (any extension) is the device, not a file. */
const RESERVED_NAME = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])$/i;
/** The journal's key for the upload of an init file (by its hash): lines that share a file share the upload. */
const uploadStem = (sha256: string) => `upload-${sha256}`;

export async function batch(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      ...connectionOptions,
      dir: { type: 'string', short: 'd' }, parallel: { type: 'string' }, 'retry-failed': { type: 'boolean' }, 'batch-key': { type: 'string' }, 'submit-only': { type: 'boolean' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('give one file of requests, one JSON object a line: clipag remote batch requests.jsonl');
  const file = positionals[0]!;
  const parallel = values.parallel === undefined ? DEFAULT_PARALLEL : /^\d+$/.test(values.parallel) ? Number(values.parallel) : Number.NaN;
  if (!(Number.isSafeInteger(parallel) && parallel >= 1 && parallel <= MAX_PARALLEL)) throw new UsageError(`--parallel must be an integer in [1, ${MAX_PARALLEL}], got "${values.parallel}"`);
  const batchKey = values['batch-key'] ?? '';
  if (batchKey !== '' && !IDEMPOTENCY_KEY.test(batchKey)) throw new UsageError('--batch-key must be visible ASCII characters, no spaces');
  const dir = resolve(values.dir ?? join(dirname(file), `${file.replace(/^.*[\\/]/, '').replace(/\.jsonl$/i, '')}${/\.jsonl$/i.test(file) ? '' : '-out'}`));
  const lines = readLines(file, batchKey, dir);
  for (const warning of sameRequests(lines)) io.err(`clipag remote batch: warning: ${warning}`);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new UsageError(`cannot make -d ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!statSync(dir).isDirectory()) throw new UsageError(`-d ${dir} is not a folder`);
  const s = session(io, { ...values, json: true }, BATCH_TIMEOUT_SEC);
  const unlock = lockDir(dir);
  try {
    return await runBatch(s, io, lines, file, dir, values, parallel);
  } finally {
    unlock();
  }
}

/**
 * One run at a time in DIR: two would each upload a line's init file and POST it under the line's one
 * key (the second refused, 409), and interleave the journal. A lock left by a run that died (its pid
 * gone) is taken over.
 */
function lockDir(dir: string): () => void {
  const path = join(dir, LOCK);
  for (let tries = 0; ; tries++) {
    try {
      const fd = openSync(path, 'wx');
      // The host too: a pid says nothing of another machine's (or container's) runs, over a shared -d.
      writeSync(fd, `${process.pid} ${hostname()}`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 0) throw new UsageError(`cannot lock ${dir} for this run (${path}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { brief: true });
      const [pidText = '', host] = readFileSync(path, 'utf8').trim().split(/\s+/);
      const pid = Number(pidText);
      const removeHint = `(if no such run is going on, remove ${path})`;
      if (host !== undefined && host !== hostname()) throw new UsageError(`another run (pid ${pid} on ${host}) is using ${dir}; wait for it, or give this one another -d ${removeHint}`, { brief: true });
      // Our own pid is a run that died before us: in a container every run is pid 1, and a killed one
      // left its lock (alive(1) is true there, and no run could ever start again).
      if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new UsageError(`another run (pid ${pid}) is using ${dir}; wait for it, or give this one another -d ${removeHint}`, { brief: true });
      }
      rmSync(path, { force: true });
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Why a whole run stopped before its lines did: Ctrl-C, the deadline, or a failure every line would meet. */
type Stop = { kind: 'interrupted' } | { kind: 'timed_out' } | { kind: 'fatal'; message: string; usage: boolean; /** Nothing a person must fix (the API restarting): the same command later goes on. */ tempfail?: boolean };

/**
 * The run stopped, or lines could not be made, for a reason that passes (the API down or restarting, a
 * network that gave up), with nothing a person must fix: the same command again finishes it. BSD's
 * EX_TEMPFAIL, so that a pipeline can retry on it and page a person on 1.
 */
export const TEMPFAIL_EXIT_CODE = 75;

async function runBatch(s: Session, io: RemoteIo, lines: Line[], file: string, dir: string, values: { url?: string; 'batch-key'?: string; 'retry-failed'?: boolean; 'submit-only'?: boolean; json?: boolean }, parallel: number): Promise<number> {
  const json = Boolean(values.json);
  const journal = join(dir, JOURNAL);
  // A journal an older version wrote (0644, before it held secrets) is closed before one is added.
  if (existsSync(journal)) chmodSync(journal, SECRET_FILE_MODE);
  const earlier = readJournal(journal);
  const states = lines.map((l) => startState(l, earlier.get(l.stem), Boolean(values['retry-failed']), dir));
  const record = (r: JournalRecord) => appendFileSync(journal, `${JSON.stringify(r)}\n`, { mode: SECRET_FILE_MODE });
  // An init file is uploaded once a run, whatever the lines that name it, and kept for the next run.
  const uploads = new Map<string, Promise<string>>();
  for (const [stem, r] of earlier) if (stem.startsWith('upload-') && typeof r.upload === 'string') uploads.set(stem.slice('upload-'.length), Promise.resolve(r.upload));
  const ctx: RunContext = { s, dir, record, uploads, earlier, retryFailed: Boolean(values['retry-failed']), submitOnly: Boolean(values['submit-only']) };
  const kept = states.filter((st) => st.status === 'succeeded').length;
  io.err(`clipag remote batch: ${lines.length} line${lines.length === 1 ? '' : 's'} from ${file} → ${dir}${kept ? ` (${kept} kept from an earlier run)` : ''}; ${parallel} at once`);

  let next = 0;
  let stop: Stop | undefined;
  const report = (st: LineState) => io.out(json ? JSON.stringify(printedResultOf(st)) : lineText(st, dir));
  const runner = async () => {
    for (;;) {
      const i = next++;
      if (i >= lines.length) return;
      const st = states[i]!;
      if (st.status === 'succeeded') {
        report(st);
        continue;
      }
      if (stop !== undefined) {
        // Not begun in this run; a generation an earlier run made for it goes on. Reported as every
        // other line is: a script reading stdout sees the whole file (the pipeline review).
        st.status = st.generation_id === null ? 'not_started' : stop.kind === 'interrupted' ? 'interrupted' : stop.kind === 'timed_out' ? 'timed_out' : SUBMITTED;
        // Stdout is every line's only with --json (a script reads it whole); the human summary counts them.
        if (json) report(st);
        continue;
      }
      const stopped = await runLine(ctx, lines[i]!, st);
      if (stopped) stop ??= stopped;
      report(st);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, lines.length) }, runner));

  // The owner's only from its first byte: it holds the lines' webhook secrets.
  writeWhole(join(dir, RESULTS), new TextEncoder().encode(states.map((st) => `${JSON.stringify(resultOf(st))}\n`).join('')), SECRET_FILE_MODE);
  return summarize(io, states, stop, file, dir, values);
}

interface RunContext {
  s: Session;
  dir: string;
  record: (r: JournalRecord) => void;
  /** Upload ids by init file hash: one upload per file a run. */
  uploads: Map<string, Promise<string>>;
  /** The journal of earlier runs into DIR, by line stem: a line it has no record of looks its key up (lookUp). */
  earlier: ReadonlyMap<string, JournalRecord>;
  retryFailed: boolean;
  /** --submit-only: a line ends once its POST is answered (its generation goes on); a run without it collects. */
  submitOnly: boolean;
}

/** FILE read and every line checked, before any request: all of a file's problems at once, by line number. */
/**
 * Lines without an "id" that send the same request with a seed (the same image, byte for byte): each
 * is made, and paid for (the pipeline review found a file with a line pasted twice). Said, not refused:
 * without a seed two such lines are two variants, which is a way to ask for them.
 */
function sameRequests(lines: readonly Line[]): string[] {
  const seen = new Map<string, number[]>();
  for (const line of lines) {
    if (line.id !== `line-${line.number}` || line.body.seed === undefined) continue;
    const same = canonicalJson([line.body, line.initFile?.sha256 ?? null]);
    seen.set(same, [...(seen.get(same) ?? []), line.number]);
  }
  return [...seen.values()].filter((numbers) => numbers.length > 1).map((numbers) => `lines ${numbers.join(', ')} are the same request with the same seed (no "id"): each is made and billed, the same image each time; drop the copies, or give each an "id" if that is what you want`);
}

function readLines(file: string, batchKey: string, dir: string): Line[] {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { brief: true });
  }
  const problems: string[] = [];
  const raw = textLines(bytes, file, problems);
  if (raw.length + problems.length === 0) throw new UsageError(`${file} has no requests (one JSON object a line)`, { brief: true });
  if (raw.length + problems.length > MAX_BATCH_LINES) throw new UsageError(`${file} has ${raw.length + problems.length} requests; a batch takes at most ${MAX_BATCH_LINES} (split the file)`, { brief: true });
  const lines: Line[] = [];
  const ids = new Map<string, number>();
  const files = new Map<string, string>();
  /** Init files by real path: each read and hashed once, its bytes not kept. */
  const hashed = new Map<string, { sha256: string } | { problem: string }>();
  const inits: Array<{ number: number; shown: string; path: string }> = [];
  for (const { t, number } of raw) {
    const bad = (why: string) => void problems.push(`line ${number}: ${why}`);
    let value: unknown;
    try {
      value = JSON.parse(t);
    } catch (e) {
      bad(`not JSON (${(e as Error).message})`);
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      bad('not a JSON object');
      continue;
    }
    const { id = `line-${number}`, init_file: initFile, ...body } = value as Record<string, unknown>;
    if (typeof id !== 'string' || !LINE_ID.test(id)) {
      bad(`"id" must be 1-64 of A-Z a-z 0-9 _ - (it names the line's images), got ${JSON.stringify(id)}`);
      continue;
    }
    if (RESERVED_NAME.test(id)) bad(`"id" ${id} is a device name on Windows, no file name: choose another`);
    if (ids.has(id)) bad(`"id" ${id} is line ${ids.get(id)}'s too`);
    ids.set(id, number);
    let init: Line['initFile'];
    if (initFile !== undefined) {
      if (typeof initFile !== 'string' || initFile === '') bad('"init_file" must be a path to a PNG or JPEG');
      else if (body.init !== undefined) bad('give "init" or "init_file", not both');
      else {
        let path: string;
        try {
          path = realpathSync(resolve(dirname(file), initFile));
        } catch (e) {
          bad(`cannot read "init_file" ${initFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
          path = '';
        }
        if (path) {
          if (!hashed.has(path)) hashed.set(path, hashInit(path, initFile));
          const h = hashed.get(path)!;
          if ('problem' in h) bad(h.problem);
          else {
            init = { path, sha256: h.sha256 };
            inits.push({ number, shown: initFile, path });
          }
        }
      }
    }
    // The API's own schema, with a syntactically valid upload in place of the file not yet uploaded.
    const checked = GenerationRequest.safeParse(initFile !== undefined ? { ...body, init: 'upload:checked-before-upload' } : body);
    if (!checked.success) {
      for (const issue of checked.error.issues) bad(`${issue.path.length ? issue.path.join('.') : 'the request'}: ${issue.message}`);
      continue;
    }
    // An inline image (ADR 0042) gets the API's own check too: the schema reads only its "data:".
    if (isInitDataUri(checked.data.init)) {
      const image = checkInitDataUriSync(checked.data.init, MAX_IMAGE_FILE_BYTES);
      if (!image.ok) bad(`init: ${image.reason}`);
    }
    const n = checked.data.n;
    const names = Array.from({ length: n }, (_, k) => outputPath(`${id}.${outputFileOf(checked.data.output_format ?? 'png').extension}`, k, n));
    for (const name of names) {
      // Case-folded: on macOS and Windows A.png and a.png are one file.
      const folded = name.toLowerCase();
      if (files.has(folded)) bad(`its image ${name} is also ${files.get(folded)}'s (rename one "id")`);
      files.set(folded, `line ${number}`);
    }
    const stem = `clipag-batch-${createHash('sha256')
      .update(JSON.stringify([batchKey, id, canonicalJson(body), init?.sha256 ?? null]))
      .digest('hex')
      .slice(0, 40)}`;
    lines.push({ number, id, body: body as GenerationBody, ...(init ? { initFile: init } : {}), stem, files: names });
  }
  // An init file that is one of the images: the first result would replace it (and the line's key,
  // made from its bytes, would change: every run would make the line again).
  let realDir = dir;
  try {
    realDir = realpathSync(dir);
  } catch {
    // Not made yet: nothing in it can be an init file.
  }
  for (const { number, shown, path } of inits) {
    if (dirname(path).toLowerCase() === realDir.toLowerCase() && files.has(path.slice(realDir.length + 1).toLowerCase())) {
      problems.push(`line ${number}: "init_file" ${shown} is ${files.get(path.slice(realDir.length + 1).toLowerCase())}'s output in ${dir}: the image would replace it; move it, or give another -d`);
    }
  }
  if (problems.length) {
    problems.sort((a, b) => Number(/\d+/.exec(a)![0]) - Number(/\d+/.exec(b)![0]));
    const shown = problems.slice(0, 20);
    // The file's problems, not the command line's: the whole usage after them would push them off the screen.
    throw new UsageError(`${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}, nothing was sent:\n  ${shown.join('\n  ')}${problems.length > shown.length ? `\n  … and ${problems.length - shown.length} more` : ''}`, { brief: true });
  }
  return lines;
}

/**
 * FILE's non-empty lines, each decoded as UTF-8 strictly, with their numbers. A line that is not UTF-8
 * is a problem of the batch, not a prompt sent with U+FFFD in place of its bytes (text its writer never
 * wrote, run and billed): the API refuses such bytes in a body, for that reason.
 */
function textLines(bytes: Uint8Array, file: string, problems: string[]): Array<{ t: string; number: number }> {
  const decoded = decodeUtf8Strictly(bytes);
  // A whole file in another encoding (Notepad's "Unicode") is one problem, not one a line.
  if ('problem' in decoded && decoded.problem.startsWith('UTF-16')) throw new UsageError(`${file} is ${decoded.problem}: save it as UTF-8`, { brief: true });
  const lines: Array<{ t: string; number: number }> = [];
  let start = 0;
  for (let number = 1; start <= bytes.length; number++) {
    // A "\n" byte is never part of a longer UTF-8 character: the file splits into lines before decoding.
    const nl = bytes.indexOf(0x0a, start);
    const end = nl === -1 ? bytes.length : nl;
    const line = decodeUtf8Strictly(bytes.subarray(start, end));
    if ('problem' in line && line.problem.startsWith('UTF-16')) problems.push(`line ${number}: ${line.problem}: save the file as UTF-8`);
    else if ('problem' in line) problems.push(`line ${number}: not UTF-8 (byte ${start + line.offset} of the file, 0x${bytes[start + line.offset]!.toString(16).toUpperCase().padStart(2, '0')}): save the file as UTF-8`);
    else {
      // A byte-order mark, as Windows editors and spreadsheet exports write one; "\r" of a CRLF file.
      const t = (number === 1 ? line.text.replace(/^\uFEFF/, '') : line.text).replace(/\r$/, '');
      if (t.trim() !== '') lines.push({ t, number });
    }
    start = end + 1;
  }
  return lines;
}

/**
 * An init file checked and hashed; its bytes dropped. The check is the API's own (shared/init-image.ts):
 * a damaged or unusable PNG or JPEG is a problem of the batch, found before anything is sent, not a refused
 * upload per line that spends the hour's upload quota.
 */
function hashInit(path: string, shown: string): { sha256: string } | { problem: string } {
  try {
    const size = statSync(path).size;
    if (size > MAX_INIT_BYTES) return { problem: `"init_file" ${shown} is ${size} bytes; the API takes at most ${MAX_INIT_BYTES}` };
    const bytes = readFileSync(path);
    const check = checkInitImageSync(bytes);
    if (!check.ok) return { problem: `"init_file" ${shown} cannot be an init image: ${check.reason}` };
    return { sha256: createHash('sha256').update(bytes).digest('hex') };
  } catch (e) {
    return { problem: `cannot read "init_file" ${shown}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
  }
}

/** The journal of earlier runs into DIR, merged per line (by its key stem). A torn last line (a run killed mid-write) is skipped. */
function readJournal(path: string): Map<string, JournalRecord> {
  const merged = new Map<string, JournalRecord>();
  if (!existsSync(path)) return merged;
  for (const t of readFileSync(path, 'utf8').split('\n')) {
    if (!t.trim()) continue;
    let r: JournalRecord;
    try {
      r = JSON.parse(t) as JournalRecord;
    } catch {
      continue;
    }
    if (typeof r?.stem !== 'string') continue;
    merged.set(r.stem, { ...merged.get(r.stem), ...r });
  }
  return merged;
}

function startState(line: Line, earlier: JournalRecord | undefined, retryFailed: boolean, dir: string): LineState {
  const st: LineState = {
    id: line.id, line: line.number, status: 'not_started', generation_id: null, attempt: 1, upload: null,
    files: [], files_sha256: [], seeds: [], clip_scores: [], withheld: [], cost_usd: null, error: null, webhook_secret: null, stem: line.stem,
  };
  if (!earlier) return st;
  st.attempt = typeof earlier.attempt === 'number' ? earlier.attempt : 1;
  // An upload is the line's for good: its POST body names it, so a resumed POST must name the same one.
  st.upload = typeof earlier.upload === 'string' ? earlier.upload : null;
  const done = earlier.status === 'succeeded' && Array.isArray(earlier.files) && earlier.files.length > 0 && earlier.files.every((f, i) => typeof f === 'string' && holds(join(dir, f), earlier.files_sha256?.[i]));
  if (done) {
    // A journal from before the hashes: the files as they are now (kept because they are there).
    const files_sha256 = Array.isArray(earlier.files_sha256) && earlier.files_sha256.length === earlier.files!.length ? earlier.files_sha256 : earlier.files!.map((f) => createHash('sha256').update(readFileSync(join(dir, f))).digest('hex'));
    return { ...st, ...earlier, files_sha256, status: 'succeeded', stem: line.stem, kept: true } as LineState;
  }
  // Only an attempt seen to end failed or canceled is made again; one submitted goes on (its POST again
  // gets it), whatever an earlier attempt ended as. So is one whose images are gone for good (its
  // generation deleted, or its images expired): nothing of it can be delivered any more.
  if ((earlier.status === 'failed' || earlier.status === 'canceled' || (earlier.status === 'refused' && earlier.error?.code === KEY_USED) || (earlier.status === 'error' && earlier.error?.code === NO_IMAGES)) && retryFailed) {
    st.attempt += 1;
    // The next attempt is a new request: a new upload would do, but the line's own still does.
    return st;
  }
  st.generation_id = typeof earlier.generation_id === 'string' ? earlier.generation_id : null;
  // The generation's secret, for a run that stops before its POST is answered again.
  st.webhook_secret = typeof earlier.webhook_secret === 'string' ? earlier.webhook_secret : null;
  return st;
}

/** The API's 409 for an Idempotency-Key used with another body. */
const KEY_USED = 'idempotency_key_reused';
/** A line whose generation succeeded with no image left to download (deleted, or its images expired). */
const NO_IMAGES = 'no_images';

/**
 * Whether the file is there and holds the bytes a run wrote to it (`sha256`, from the journal). A file
 * another line has written since (a line added above id-less ones renames them all; an "id" reused for
 * another prompt) is not this line's image, and is downloaded again. A journal from before the hashes
 * has none: the file's presence is all it can say.
 */
function holds(path: string, sha256: unknown): boolean {
  if (!existsSync(path)) return false;
  if (typeof sha256 !== 'string') return true;
  try {
    return createHash('sha256').update(readFileSync(path)).digest('hex') === sha256;
  } catch {
    return false;
  }
}

/**
 * Whether a line's failure passes by itself (a network, the API or a signed link that gave up: a 5xx, a
 * 429, an expired link's 403/404), so that the same command finishes the line, or a person must act
 * (a full disk, a folder in the way, a URL fetch will never use). Unknown: a person.
 */
function passes(e: unknown): boolean {
  if (e instanceof GaveUp) return true;
  if (e instanceof ApiError) return e.status >= 500 || e.status === 429 || e.status === 408 || (!e.what.includes('/v1/') && (e.status === 403 || e.status === 404));
  return false;
}

/** A succeeded generation with nothing left to download: deleted, or its images expired. */
const imagesGone = (g: Generation) => g.status === 'succeeded' && g.outputs.length === 0 && (g.deleted_at != null || (g.expired_outputs?.length ?? 0) > 0);
const keyOf = (line: Line, st: LineState) => (st.attempt === 1 ? line.stem : `${line.stem}-${st.attempt}`);

/**
 * For a line the journal does not tell about: what its key made, asked of the API
 * (GET /v1/generations?idempotency_key=), so that a run without the journal (removed, or another -d)
 * gets it. A line with an init_file needs it most: its body names an upload, and a new upload of the
 * file under the key an earlier run used would be another body (409). The generation's upload becomes
 * the line's: sent again with it (journaled in runLine), the line's POST is the key's own request, which
 * the API answers with that generation (queuing it again if its first send failed), no upload made.
 * With --retry-failed, an attempt that failed or was canceled is passed for the next (each attempt has
 * a key of its own; the next one sends the same upload, as after a journal), up to the first attempt
 * that made nothing, or one that goes on or succeeded; `st.attempt` is then the attempt to send.
 */
async function lookUp(ctx: RunContext, s: Session, line: Line, st: LineState): Promise<void> {
  for (;;) {
    const g = await s.client.generationByKey(keyOf(line, st), { deadline: s.deadline });
    if (!g) return;
    if (line.initFile) st.upload = g.request.init;
    if (!(ctx.retryFailed && (g.status === 'failed' || g.status === 'canceled' || imagesGone(g)))) return;
    st.attempt += 1;
  }
}

/** The upload of the line's init file: the line's own (from an earlier run), else the run's for that file, else a new one. */
async function initUpload(ctx: RunContext, line: Line, st: LineState): Promise<string> {
  if (st.upload !== null) return st.upload;
  const { s, uploads, record } = ctx;
  const { path, sha256 } = line.initFile!;
  let upload = uploads.get(sha256);
  if (!upload) {
    upload = (async () => {
      const bytes = readFileSync(path);
      // Changed since the check: its hash is in the line's key, so the key would name other bytes.
      if (createHash('sha256').update(bytes).digest('hex') !== sha256) throw new ApiError(`read ${path}`, 0, 'init_file_changed', `${path} changed since the batch was checked; run the command again`);
      const made = (await s.client.upload(bytes, { deadline: s.deadline })).init;
      record({ stem: uploadStem(sha256), upload: made });
      return made;
    })();
    uploads.set(sha256, upload);
    // A failed upload is not the file's for good: the next line tries again. Except a file over the
    // deployment's limit (the grant's 413): every grant for it would be refused the same.
    upload.catch((e) => !(e instanceof ApiError && e.status === 413) && uploads.get(sha256) === upload && uploads.delete(sha256));
  }
  return upload;
}

/**
 * A failure every line would meet (the key refused, the URL no API's, nothing listening there): the
 * run stops rather than spend it on each line. `usage`: fetch will never send to this URL (exit 2).
 */
function fatalOf(e: unknown, s: Session): Stop | undefined {
  if (e instanceof ApiError && e.status === 401) return { kind: 'fatal', usage: false, message: `the API refused the key from ${s.conn.keySource} (401 ${e.code}: ${e.detail}); check the key: --key, CLIPAG_API_KEY, or for a local server the key file npm start writes` };
  // Every line after it would be refused the same: the lines not begun stay so, for a rerun once the limit is raised.
  if (e instanceof ApiError && e.status === 402) return { kind: 'fatal', usage: false, message: `the account's monthly spend limit is reached (402 ${e.code}: ${e.detail}); raise it (clipag remote spend-limit set USD) and run the same command again: the lines not begun are made then` };
  if (isUnknownRoute(e)) return { kind: 'fatal', usage: false, message: `${e.message}; is ${s.conn.urlSource} ${shownUrl(s.conn.url)} the API's base address (with its stage path, without /v1)?` };
  if (e instanceof CannotSend && e.api) return { kind: 'fatal', usage: true, message: `${s.conn.urlSource} ${shownUrl(s.conn.url)}: ${e.message}` };
  if (e instanceof GaveUp && (e.refused || e.noHost)) return { kind: 'fatal', usage: false, ...(e.refused ? { tempfail: true } : {}), message: `${e.message} (${e.refused ? `connection refused: is the API running at ${shownUrl(s.conn.url)}? (the same command again goes on)` : `no such host: is ${s.conn.urlSource} ${shownUrl(s.conn.url)} right?`})` };
  return undefined;
}

/** One line, from its upload to its images. Returns why the whole run must stop, if it must. */
async function runLine(ctx: RunContext, line: Line, st: LineState): Promise<Stop | undefined> {
  // A session per line: its own progress, the shared client and deadline.
  const s: Session = { ...ctx.s, progress: {} };
  const { record, dir } = ctx;
  st.error = null;
  // A line with an init file and no upload of its own in the journal, or (--retry-failed) one the journal has no record of.
  let lookup = st.generation_id === null && ((line.initFile !== undefined && st.upload === null) || (ctx.retryFailed && !ctx.earlier.has(line.stem)));
  for (let uploadTries = 0; ; uploadTries++) {
    const body: GenerationBody = { ...line.body };
    try {
      if (lookup) {
        lookup = false;
        await lookUp(ctx, s, line, st);
      }
      if (line.initFile) {
        if (st.upload === null && !ctx.uploads.has(line.initFile.sha256)) {
          // Checked first without the init, so that a refused prompt spends no upload of the hour's.
          const { strength: _strength, ...checked } = body;
          await s.client.estimate(checked, { deadline: s.deadline });
        }
        st.upload = await initUpload(ctx, line, st);
        record({ stem: line.stem, id: line.id, upload: st.upload });
        body.init = st.upload;
      }
      const key = keyOf(line, st);
      let created: Awaited<ReturnType<Session['client']['createGeneration']>>;
      try {
        created = await s.client.createGeneration(body, { idempotencyKey: key, waitSec: 0, deadline: s.deadline });
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 409 && e.code === KEY_USED)) throw e;
        throw new ApiError(e.what, e.status, e.code, keyUsedDetail(ctx, line, key, e.detail), e.param, e.requestId);
      }
      st.generation_id = created.generation.id;
      // Every answer to the line's POST (a replay too) carries the secret: a resumed run learns it again.
      st.webhook_secret = created.generation.webhook?.secret ?? null;
      // Kept at once: a run that stops now still knows the line's generation, and that this attempt goes on.
      record({ stem: line.stem, id: line.id, attempt: st.attempt, generation_id: st.generation_id, webhook_secret: st.webhook_secret, status: SUBMITTED, error: null });
      // --submit-only: the line is made; its webhook (or a run without the flag) takes it from here.
      if (ctx.submitOnly && !ended(created.generation)) {
        st.status = SUBMITTED;
        return undefined;
      }
      const g = await untilEnded(s, created.generation, created.held);
      await settle(s, line, st, g, dir);
      record({ stem: line.stem, id: line.id, attempt: st.attempt, ...outcome(st) });
      return undefined;
    } catch (e) {
      if (e instanceof Interrupted) {
        st.status = st.generation_id === null ? 'not_started' : 'interrupted';
        return { kind: 'interrupted' };
      }
      if (e instanceof WaitPastDeadline) {
        st.status = st.generation_id === null ? 'not_started' : 'timed_out';
        st.error = { code: e.code, message: `${e.detail}; retry after ${retryIn(e.retryAfterMs)}` };
        return { kind: 'timed_out' };
      }
      if (e instanceof TimedOut) {
        st.status = st.generation_id === null ? 'not_started' : 'timed_out';
        st.error = { code: 'timed_out', message: e.message };
        return { kind: 'timed_out' };
      }
      const fatal = st.generation_id === null ? fatalOf(e, s) : undefined;
      if (fatal) {
        st.status = 'not_started';
        return fatal;
      }
      if (e instanceof ApiError && e.status === 400 && e.code === 'upload_not_found' && line.initFile && st.generation_id === null && uploadTries === 0) {
        // The upload is gone (AWS removes uploads after 5 days) and no generation was made with it: a
        // new upload makes the same line's request anew. Only then: an upload the API refused as an
        // image (validation_error) would be refused again, each time spending one of the hour's uploads.
        if (st.upload !== null && ctx.uploads.get(line.initFile.sha256) !== undefined) ctx.uploads.delete(line.initFile.sha256);
        st.upload = null;
        continue;
      }
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && st.generation_id === null) {
        // The API said no before a generation was made (the content policy, a model it does not serve, …).
        st.status = 'refused';
        st.error = { code: e.code, message: e.detail };
      } else {
        // The line alone: the request could not be made or its images not kept (a network that gave up,
        // a disk that is full). The rest of the batch goes on; a rerun tries this line again.
        st.status = 'error';
        const code = e instanceof ApiError ? e.code : e instanceof GaveUp ? 'gave_up' : e instanceof CannotSend ? 'cannot_send' : ((e as NodeJS.ErrnoException).code ?? 'error');
        const lost = st.generation_id === null && (e as { lost?: boolean }).lost === true;
        st.error = { code, message: `${(e as Error).message}${lost ? '; the POST may have reached the API: running the command again gets its generation if it was made, never a second one' : ''}`, retryable: passes(e) };
      }
      record({ stem: line.stem, id: line.id, attempt: st.attempt, ...outcome(st) });
      return undefined;
    }
  }
}

/** What a line refused 409 idempotency_key_reused says: what happened, and what to do. */
function keyUsedDetail(ctx: RunContext, line: Line, key: string, detail: string): string {
  const todo = `run with that run's -d to get its generation; --retry-failed makes this line again (a new generation); --batch-key K makes every line again`;
  if (!line.initFile) return `${detail}: an earlier request with this line's key ${key} had another body (another client with this key?); ${todo}`;
  // Without a journaled upload the lookup found nothing, yet the key is used: another run sending this line at once, or an API older than the lookup.
  return `${detail}: an earlier run sent this line (key ${key}) with another upload of its init_file ${line.initFile.path}, and its journal is not in ${ctx.dir}; the API did not name that run's generation (another run sending this line now, or an API without GET /v1/generations?idempotency_key=): ${todo}`;
}

/** The fields an ended line's journal record and result carry. */
function outcome(st: LineState): Partial<LineState> {
  return { status: st.status, files: st.files, files_sha256: st.files_sha256, seeds: st.seeds, clip_scores: st.clip_scores, withheld: st.withheld, cost_usd: st.cost_usd, error: st.error, generation_id: st.generation_id, webhook_secret: st.webhook_secret };
}


/** The generation has ended: its images written (each whole), the line's state filled in. */
async function settle(s: Session, line: Line, st: LineState, g: Generation, dir: string): Promise<void> {
  st.status = g.status as Status;
  st.cost_usd = g.usage?.cost_usd ?? null;
  st.withheld = g.withheld_outputs.map((w) => w.index);
  st.error = g.error ? { code: g.error.code, message: g.error.message } : null;
  st.files = [];
  st.files_sha256 = [];
  st.seeds = [];
  st.clip_scores = [];
  if (g.status !== 'succeeded') return;
  if (g.outputs.length === 0 && (g.withheld_outputs.length === 0 || (g.expired_outputs?.length ?? 0) > 0)) {
    st.status = 'error';
    st.error = { code: NO_IMAGES, message: `${noImagesMessage(g)}; --retry-failed makes this line again (a new generation)` };
    return;
  }
  for (const o of g.outputs) {
    const path = line.files[o.index];
    if (path === undefined) throw new ApiError(`GET /v1/generations/${g.id}`, 200, 'bad_output_index', `image ${o.index} of a generation of ${line.files.length}`);
    const bytes = await s.client.download(o.url, { deadline: s.deadline });
    checkDownloadedImage(o, bytes);
    writeWhole(join(dir, path), bytes);
    st.files.push(path);
    st.files_sha256.push(createHash('sha256').update(bytes).digest('hex'));
    st.seeds.push(o.seed);
    st.clip_scores.push(o.clip_score ?? null);
  }
}

function resultOf(st: LineState): Record<string, unknown> {
  const { stem: _stem, upload: _upload, kept: _kept, attempt, ...rest } = st;
  return { ...rest, attempt };
}

/**
 * A line as --json prints it on stdout: the results file's record without the webhook's signing secret,
 * which a pipeline's captured stdout (a CI log) must not hold; results.jsonl (mode 0600) keeps it.
 */
function printedResultOf(st: LineState): Record<string, unknown> {
  const { webhook_secret: _secret, ...rest } = resultOf(st);
  return rest;
}

function lineText(st: LineState, dir: string): string {
  const what =
    st.status === 'succeeded'
      ? `${st.files.length ? `${st.kept ? 'kept' : 'wrote'} ${st.files.map((f) => join(dir, f)).join(', ')}` : ''}${st.withheld.length ? `; withheld by the output check: image ${st.withheld.join(', ')}` : ''}`
      : st.error
        ? `${st.error.code}: ${st.error.message}`
        : '';
  return `${st.id} ${st.status}${st.generation_id ? ` ${st.generation_id}` : ''}${what ? ` ${what}` : ''}`;
}

/**
 * The summary's cost: the lines' together, and where some were kept from an earlier run (paid then),
 * how much of it this run's lines cost (a resumed run's total is not what it spent: the pipeline review).
 */
export function costText(states: ReadonlyArray<Pick<LineState, 'status' | 'cost_usd' | 'kept'>>): string {
  const costs = states.map((st) => st.cost_usd).filter((c): c is number => c !== null);
  if (costs.length === 0) return '';
  const cost = costs.reduce((sum, c) => sum + c, 0);
  const keptCost = states.filter((st) => st.kept && st.cost_usd !== null).reduce((sum, st) => sum + st.cost_usd!, 0);
  const succeeded = states.filter((st) => st.status === 'succeeded').length;
  return `; cost $${cost.toFixed(4)}${costs.length < succeeded ? ` (${costs.length} priced)` : ''}${keptCost > 0 ? ` (of it $${keptCost.toFixed(4)} for lines kept from earlier runs)` : ''}`;
}

function summarize(io: RemoteIo, states: LineState[], stop: Stop | undefined, file: string, dir: string, values: { url?: string; 'batch-key'?: string; 'submit-only'?: boolean }): number {
  const count = (...ss: Status[]) => states.filter((st) => ss.includes(st.status)).length;
  // A line whose every image the output check withheld ends failed with content_policy: `remote generate`
  // exits 3 for that, not 1, and so does a batch whose only trouble it is.
  const allWithheld = states.filter((st) => st.status === 'failed' && st.error?.code === 'content_policy').length;
  const withheld = states.filter((st) => st.status === 'succeeded' && st.withheld.length > 0).length + allWithheld;
  const parts = (['succeeded', SUBMITTED, 'failed', 'canceled', 'refused', 'error', 'timed_out', 'interrupted', 'not_started'] as Status[])
    .map((k) => [k, count(k)] as const)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${n} ${k.replace('_', ' ')}`);
  if (stop?.kind === 'fatal') io.err(`clipag remote batch: stopped: ${stop.message}`);
  io.err(`clipag remote batch: ${states.length} lines: ${parts.join(', ')}${withheld ? ` (${withheld} with images withheld)` : ''}${costText(states)}; results in ${join(dir, RESULTS)}`);
  // Generations that go on (timed out or interrupted), and lines not begun or whose POST may have
  // landed: the same command again picks each up where it is.
  const goesOn = count('timed_out', 'interrupted');
  const unfinished = goesOn + count('not_started', 'error');
  const submitted = count(SUBMITTED);
  if (unfinished > 0 || submitted > 0) {
    // A --submit-only run's lines not begun are begun by the same command; its submitted ones collected without the flag.
    const again = [...(io.invokedAs ?? ['clipag']), 'remote', 'batch', file, '-d', dir, ...(values.url !== undefined ? ['--url', values.url] : []), ...(values['batch-key'] !== undefined ? ['--batch-key', values['batch-key']] : []), ...(values['submit-only'] && unfinished > 0 ? ['--submit-only'] : [])];
    const going = goesOn + submitted;
    io.err(`clipag remote batch: ${going ? `${going} generation${going === 1 ? '' : 's'} go${going === 1 ? 'es' : ''} on; ` : ''}${again.map(shellWord).join(' ')} ${going ? (unfinished > 0 ? 'picks them up and runs the lines not finished' : 'waits for them and downloads their images') : 'runs the lines not finished'} (no line is made twice)`);
  }
  if (stop?.kind === 'interrupted') return INTERRUPTED_EXIT_CODE;
  if (stop?.kind === 'fatal' && !stop.tempfail) return stop.usage ? 2 : 1;
  if (goesOn > 0 || stop?.kind === 'timed_out') return TIMED_OUT_EXIT_CODE;
  // A person must act (a line refused, failed, canceled, or with no image left: --retry-failed) …
  const gone = states.filter((st) => st.status === 'error' && st.error?.code === NO_IMAGES).length;
  if (count('failed', 'canceled', 'refused') - allWithheld + gone > 0) return 1;
  // … or nothing must be fixed: lines that could not be made (a network or an API that gave up), a
  // stop on a refused connection (the API restarting). The same command finishes them.
  const toFix = states.filter((st) => st.status === 'error' && st.error?.code !== NO_IMAGES && st.error?.retryable !== true).length;
  if (toFix > 0) return 1;
  if (count('error') - gone > 0 || stop?.kind === 'fatal') return TEMPFAIL_EXIT_CODE;
  if (withheld > 0) return WITHHELD_EXIT_CODE;
  return 0;
}
