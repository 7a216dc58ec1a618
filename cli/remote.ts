// clipag remote: the HTTP API from the command line, used as a careful client uses it. `generate` does
// the README's curl walk-through in one command: upload an init image, create the generation with one
// Idempotency-Key (the same on every retry), wait for it with `Prefer: wait`, download its images.
// `get` waits for (or reads) a generation and downloads it; `cancel` cancels one; `webhook-secret`
// manages the account's webhook signing secret (remote-webhook-secret.ts). The retries live in
// api-client.ts; this file parses, checks before any request, and reports.
import { randomUUID } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { setTimeout as sleepFor } from 'node:timers/promises';
import { setMaxListeners } from 'node:events';
import { basename, dirname, extname, isAbsolute, relative, resolve } from 'node:path';
import { parseCliArgs as parseArgs } from './common.ts';
import { RESOURCE_ID_PATTERN } from '../shared/names.ts';
import { checkInitDataUriSync, checkInitImage } from '../shared/init-image.ts';
import { MAX_IMAGE_FILE_BYTES } from '../shared/image-header.ts';
import { MAX_CANCEL_AFTER_SEC, MAX_IMAGES, MAX_SIDE, MAX_STEPS, MIN_SIDE, MODEL_VERSION_PATTERN, PROMPT_MAX_CHARS, SIDE_MULTIPLE, WeightedPrompt, isInitDataUri, isInitToStore, isWellFormedText } from '../shared/schemas/generation.ts';
import { ApiError, CannotSend, ClipagClient, GaveUp, Interrupted, TimedOut, WaitPastDeadline, isLoopbackUrl, isUnknownGeneration, isUnknownRoute, scrubbed, shownUrl, untilText, type Generation, type GenerationBody } from './api-client.ts';
import { INTERRUPTED_EXIT_CODE, OUTPUT_FORMAT_USAGE, UsageError, WITHHELD_EXIT_CODE, decimalNumber, FORMAT_NAME, formatOfFileName, invocation, outputFile, outputFormatArgs, shellWord, sizeShape, writeWhole } from './common.ts';
import { isJpeg } from '../shared/jpeg.ts';
import { isLossyOutputFormat, outputFormatOfContentType } from '../shared/output-format.ts';
import { localServerPorts } from '../shared/adapters/local/servers.ts';
import { invisibleEscaped, promptStart, shownQuoted } from '../shared/shown-text.ts';
// Re-exported: the tests and remote-batch.ts take them from here.
export { INTERRUPTED_EXIT_CODE, WITHHELD_EXIT_CODE, invocation, shellWord };

export const summary = "use a clipag API (deployed or local): generate, get, cancel, list, redeliver a webhook, or run a batch file, and the account's webhook secret and spend limit, honouring Retry-After";
/** Each action's synopsis: the usage's first lines, and what a usage error of that action prints. */
const SYNOPSIS = {
  generate: `clipag remote generate "PROMPT" [--negative T] [--steps N] [--size WxH] [--seed S] [--n N] [--model NAME]
           [--model-version H] [--init KIND] [--strength X] [--cancel-after SEC] [-o out.png] [--format png|jpeg|webp] [--quality Q] [--idempotency-key K] [--timeout SEC] [--cancel-on-interrupt] [--json]`,
  get: 'clipag remote get ID [-o out.png] [--timeout SEC] [--cancel-on-interrupt] [--json]',
  cancel: 'clipag remote cancel ID [--timeout SEC] [--json]',
  batch: 'clipag remote batch FILE.jsonl [-d DIR] [--parallel N] [--retry-failed] [--batch-key K] [--submit-only] [--timeout SEC] [--json]',
  'webhook-secret': 'clipag remote webhook-secret create|show|delete [--idempotency-key K] [--timeout SEC] [--json]',
  'spend-limit': 'clipag remote spend-limit show|set USD|delete [--timeout SEC] [--json]',
  redeliver: 'clipag remote redeliver ID [--timeout SEC] [--json]',
  list: `clipag remote list [--status S] [--webhook-status S] [--api-key-id ID] [--metadata K=V]... [--since T] [--until T]
           [--limit N | --all] [--cursor C] [--timeout SEC] [--json]`,
} as const;
type Action = keyof typeof SYNOPSIS;
const ACTIONS = Object.keys(SYNOPSIS) as Action[];

export const usage = `usage: ${SYNOPSIS.generate}
       ${SYNOPSIS.get}
       ${SYNOPSIS.cancel}
       ${SYNOPSIS.batch}
       ${SYNOPSIS['webhook-secret']}
       ${SYNOPSIS['spend-limit']}
       ${SYNOPSIS.redeliver}
       ${SYNOPSIS.list}
       each also takes [--url URL] [--key KEY]

generate: upload --init (if a file), create the generation (one Idempotency-Key, reused on every
retry), wait for it (Prefer: wait), download its images, print id, status, seeds and scores.
  --negative TEXT     push away from TEXT (the API takes one)
  --steps N           optimization steps (1-${MAX_STEPS}; default: the API's, 100)
  --size WxH          ${MIN_SIDE}-${MAX_SIDE} px a side, multiples of ${SIDE_MULTIPLE}; N alone is N×N (default: the model's input size)
  --seed S            uint32 seed (default: the API picks one; each image's seed is printed)
  --n N               images (1-${MAX_IMAGES}); with more than one, -o out.png writes out-0.png, out-1.png, …
  --model NAME        a model id from GET /v1/models (default: the deployment's default)
  --model-version H   run only on that bundle of the model: its content_hash, or the first 12+ hex
                      digits (a generation's model_version, printed with it, makes it again)
  --init KIND         gmm | noise | upload:ID | PATH of a PNG or JPEG (uploaded first; its upload:ID
                      is printed) | an https URL of one (the API fetches it and stores it as an upload)
                      | a data:image/png;base64,… URI (the API decodes it and stores it as an upload)
  --strength X        with an init image: 0 keeps it, 1 replaces it with noise (default 0.6)
  --cancel-after SEC  the API ends it canceled, billed nothing, if it has not ended SEC seconds after it
                      was made (1-86400; cancel_after, ADR 0034)
  -o, --out FILE      output image (default out.png; out.jpg or out.webp with --format jpeg or webp), written whole or not
                      at all (a temporary file, renamed)
${OUTPUT_FORMAT_USAGE}
  --idempotency-key K the POST's Idempotency-Key (default: a new one); the same request with the same
                      key gets the generation an earlier run made, never a second one. With --init
                      PATH.png, run it again with --init upload:ID (the earlier run printed it): the
                      file would be uploaded again, another request (409 idempotency_key_reused)
get: the generation, waited for until it ends (or --timeout); -o downloads its images.
cancel: cancel a queued or running generation.
webhook-secret create: make the account's webhook signing secret, or rotate it (the replaced one keeps
  signing for 24 hours), and print it on stdout: its only showing, so store it where your receiver
  reads it. Its POST has one Idempotency-Key (a new one, or --idempotency-key K), the same on every
  retry: a retry after a lost answer gets the same secret, not a second rotation; when no answer came
  back, the command that gets it (with the key) is printed.
webhook-secret show: whether the account has one, since when, and until when the replaced ones still
  sign (never a secret). webhook-secret delete: delete it and the replaced ones, at once; events are
  then signed with each generation's own secret alone (ADR 0028).
spend-limit show: the account's monthly spend limit, this UTC month's cost and whether new generations
  are refused. spend-limit set USD: set it (0 refuses every new generation); once the month's cost
  reaches it, a new generation is refused 402 spend_limit_reached until it is raised or removed, or the
  next month (ADR 0033). spend-limit delete: remove it.

  --timeout SEC       the whole command's bound: every request, hold, retry wait and download
                      (default 600, cancel, webhook-secret and spend-limit 60; 0: read it once as it stands); the generation goes on
                      after it: clipag remote get ID
  --cancel-on-interrupt   Ctrl-C cancels the generation (default: it goes on; how to pick it up is printed)
  --json              print the generation (the API's view; webhook-secret, spend-limit: the API's answer) on stdout;
                      generate, get and cancel print a refusal there too: {"error": {status, code, message, param, request_id}}
  --url URL           the API (default $CLIPAG_API_URL, else http://127.0.0.1:8787, what npm start serves);
                      no user name or password in it
  --key KEY           an API key (default $CLIPAG_API_KEY, else, for a --url on this machine: localhost,
                      [::1] or 127.x.x.x, the key npm start keeps in $CLIPAG_DATA_DIR/local-api-key,
                      default .data/local-api-key). Prefer CLIPAG_API_KEY: --key shows in ps and in
                      your shell's history

Retries: 429 and 503 wait as Retry-After says (at least 1 s, doubling when it repeats, plus up to 10 %;
a decimal Retry-After is rounded up), said on stderr; the gateway's own 429/5xx and network errors back
off 1, 2, 4 … s with jitter (a connection refused on this machine, or an unknown host: 2 quick retries);
at most 12 tries a request, but a new generation refused 429 too_many_active_jobs (the account has as
many queued or running as it may) waits for room until --timeout; any other 4xx fails at once with its code, param and request_id. When the
POST may have reached the API but its answer was lost, the command that gets its generation (the same
Idempotency-Key) is printed. Uploads have no Idempotency-Key: a grant retried after a lost answer is a
second grant, counted toward the upload quota.

Exit status: 0 done; 1 refused by the API (a content-policy refusal; a rate limit or quota whose
Retry-After is past --timeout, named with when to retry, when no generation was made), a failed or
canceled generation, or --timeout passed before any generation was made; 2 bad usage (a --url fetch
will not use, too), or no API key (no --key, no CLIPAG_API_KEY and, for a --url on this machine, no
key file); 3 withheld by the output check (as clipag generate); 124 --timeout passed while a
generation goes on (or may have been made, or its images are still to download): the printed command
picks it up; 130 interrupted (Ctrl-C; it goes on unless --cancel-on-interrupt), 143 on a SIGTERM (as
Ctrl-C, --cancel-on-interrupt included). webhook-secret: 0 done
(show and delete also when there is none), 1 refused or failed, 124 --timeout passed after a create's
POST may have made a secret (the printed command gets it), 130 interrupted.

redeliver: an ended generation's webhook event sent again, now (its receiver was down, say); prints
whether it was delivered. Exit status: 0 delivered, 1 not delivered (retried on a fresh schedule) or
refused (no webhook, not ended, deleted), 130 interrupted.

list: the account's generations, newest first, a line each (id, status, created, model and size, cost,
prompt), or with --json the API's view of each, one JSON object per line. Filters (all must match):
  --status S          queued, running, succeeded, failed or canceled
  --webhook-status S  pending, delivered or failed (every attempt failed: redeliver with
                      POST /v1/generations/ID/webhook/redeliver)
  --api-key-id ID     made with that API key (its id, the 26 characters after ck_): what a leaked key
                      set going, to cancel
  --metadata K=V      label K is exactly V (repeatable)
  --since T, --until T  created after / before T (RFC 3339, such as 2026-12-01T00:00:00Z; exclusive)
One page (--limit N, default 20; the command for the next page is printed on stderr), or --all of them.
Exit status: 0 listed (also when none matches), 1 refused or failed, 130 interrupted.

batch: runs a file of requests. Each non-empty line of FILE is one JSON object: a POST /v1/generations body (prompt or prompts,
negative_prompt, width, height, steps, seed, n, model, model_version, init, strength, cancel_after, metadata, webhook_url,
webhook_events, output_format, output_quality), plus:
  "id"         the line's name (1-64 of A-Z a-z 0-9 _ -; default line-<number>): its images are
               DIR/<id>.png (n > 1: <id>-0.png, <id>-1.png, …; .jpg or .webp for output_format "jpeg" or "webp")
  "init_file"  a PNG or JPEG (a path from FILE's folder) uploaded as the line's init image (instead of "init")
Every line is checked before the first request: a bad one is named by its number and nothing is sent.
A line with webhook_url gets its signing secret as "webhook_secret" in results.jsonl (never printed,
--json included: a pipeline's captured stdout is a log): the journal and results.jsonl hold secrets,
and are made mode 0600.

  -d, --dir DIR     where the images, results.jsonl and the run's journal go (default: FILE's name
                    without .jsonl, beside it)
  --parallel N      lines in flight at once (1-16, default 4)
  --retry-failed    lines an earlier run of this command saw fail or canceled are made again (by
                    default they stay as they ended: the same Idempotency-Key gets the same generation),
                    lines whose generation has no image left (deleted, or its images expired), and
                    lines refused 409 idempotency_key_reused (see below)
  --batch-key K     mixed into every line's Idempotency-Key: another K makes every line again
  --submit-only     each line ends once its POST is answered (status "submitted": its generation goes
                    on, and its webhook tells when it ends); the same command without it collects them
  --timeout SEC     the whole run's bound (default 3600); generations go on after it
  --json            print each line's result (as results.jsonl has it, without webhook_secret) on stdout as it ends

A line's Idempotency-Key comes from its id (line-<number> without one), its body, its init_file's
bytes and --batch-key: the line is made once per account, and a later run of it (a new DIR too) gets
that generation again; --batch-key K (a date, say) makes every line anew. Without "id", a line added or
removed above renames and remakes the lines after it: give lines an "id" in a file you edit.
Running the same command again resumes: lines that succeeded and whose images are in DIR (the bytes
the run wrote: a file another line wrote since is downloaded again) are kept;
every other line's POST is sent again with its own Idempotency-Key, which gets the generation an
earlier run made (never a second one), and is waited for and downloaded. An init file is uploaded
once however many lines name it, and not again on a resumed run (unless the API no longer has it).
Without DIR's journal (removed, or another -d), an init_file line first asks the API what its key
made (GET /v1/generations?idempotency_key=) and, if it made a generation, gets it with the upload it
was made with: no upload. A key the API still refuses (409 idempotency_key_reused) after the lookup
found nothing is refused, saying so. --retry-failed without the journal looks each attempt's key up.
One run at a time uses DIR (DIR/.lock). A key the API refuses, a URL that is not the API's, or
nothing listening there stops the run at once.

DIR/results.jsonl: one line per input line, in order: id, line, status (succeeded, failed, canceled,
refused: the API said no before any generation was made, error: the request could not be made
(a rerun tries it again), timed_out or interrupted: it goes on, submitted: --submit-only made it, or a
stopped run had it from an earlier one, and it goes on, not_started), generation_id, files,
files_sha256 (each file's sha256 as written), seeds, clip_scores (one per file, null where the image
has none), withheld, cost_usd, error {code, message}, webhook_secret, attempt.

Exit status: 0 every line succeeded; 1 a person must act: a line failed, was canceled or refused, or
has no image left (--retry-failed), or the run stopped on a refused key, a spend limit, no API at that
URL; 75 nothing to fix: lines could not be made (a network or an API that gave up) or the run stopped
on a refused connection (the API restarting): the same command again finishes it; 2 bad usage, a bad
line, no API key, or a URL fetch will not use; 3 images withheld by the output check (and nothing
worse); 124 --timeout passed with generations going on; 130 interrupted (Ctrl-C; generations go on),
143 on a SIGTERM (as Ctrl-C: results.jsonl written, DIR unlocked). Where several apply: 130/143 first,
then a stop a person must fix (1, or 2), then 124, 1, 75, 3; a --submit-only run whose lines were all
made exits 0. An "error" line's error says "retryable": true where the same command may finish it (a
network, the API or a link that gave up; exit 75), else a person must act (a full disk; exit 1).
With --json, stdout has every line's result, those not begun too.
A webhook event carries the generation's metadata, not the line's "id": put the id in "metadata" to
match events to lines.`;

/** Where `npm start` listens by default. */
export const DEFAULT_API_URL = 'http://127.0.0.1:8787';
/** As timeout(1): the command stopped waiting; the generation goes on. */
export const TIMED_OUT_EXIT_CODE = 124;

/** The longest `Prefer: wait` asked for; the deployment caps it lower (in AWS 12 s in dev, 26 s in prod). */
const MAX_WAIT_SEC = 60;
/** Between reads the API did not hold (its budget of waits spent, or no waits in this deployment): a poll interval, growing. */
const POLL_FIRST_MS = 2000;
const POLL_MAX_MS = 10_000;
/** Between reads the API held: at least this, so that an early answer (a store error) is no loop. */
const HELD_GAP_MS = 1000;
export const DEFAULT_TIMEOUT_SEC = 600;
const CANCEL_TIMEOUT_SEC = 60;
/** The POST's Idempotency-Key, as the API checks it. */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;
export const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/**
 * Throws unless `bytes` are the image the view says `o` is (content_type; PNG from an API before it):
 * a proxy's or a store's error page with a 200 is not an image, and is never written as one.
 */
export function checkDownloadedImage(o: { index: number; content_type?: string }, bytes: Uint8Array): void {
  // A format a newer API adds: not this version's to check, and not taken for a PNG.
  const format = o.content_type === undefined ? 'png' : outputFormatOfContentType(o.content_type);
  if (format === undefined) {
    throw new ApiError(`GET image ${o.index}`, 200, 'unknown_image_type', `the image is ${JSON.stringify(o.content_type!.slice(0, 60))}, which this clipag does not know: a newer clipag downloads it (or fetch outputs[].url yourself)`);
  }
  const ok = format === 'jpeg' ? isJpeg(bytes) : format === 'webp' ? isWebp(bytes) : PNG_SIGNATURE.every((b, i) => bytes[i] === b);
  if (!ok) throw new ApiError(`GET image ${o.index}`, 200, `not_${format}`, `the signed URL answered ${bytes.length} bytes that are not a ${FORMAT_NAME[format]}`);
}

/** RIFF, a size, then WEBP: a WebP file's first twelve bytes. */
const isWebp = (bytes: Uint8Array): boolean => bytes.length >= 12 && Buffer.from(bytes.subarray(0, 4)).toString('latin1') === 'RIFF' && Buffer.from(bytes.subarray(8, 12)).toString('latin1') === 'WEBP';

export interface RemoteIo {
  env: Readonly<Record<string, string | undefined>>;
  /** A line of the result (stdout). */
  out: (line: string) => void;
  /** A line of notes or errors (stderr). */
  err: (line: string) => void;
  /** Ctrl-C. */
  signal?: AbortSignal;
  fetch?: typeof fetch;
  /** How a retry waits (default: a timer; tests give a shorter one). */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /**
   * The words that started clipag, as a printed command to go on begins (`npm run clipag --`, `npx
   * clipag`, …: see `invocation`); default `clipag`.
   */
  invokedAs?: readonly string[];
}

/** The verb: the composition root. The environment is read here, once, and SIGINT wired to an abort. */
export async function run(argv: string[]): Promise<number> {
  const interrupt = new AbortController();
  // Every request in flight listens to it (a batch at --parallel 16 with retries has dozens): no leak,
  // and Node's warning at 11 listeners was noise on stderr.
  setMaxListeners(0, interrupt.signal);
  let presses = 0;
  let terminated = false;
  const onSigint = () => {
    // A second Ctrl-C does not wait for the first to be handled (a cancel on its way, say).
    if (++presses > 1) process.exit(terminated ? TERMINATED_EXIT_CODE : INTERRUPTED_EXIT_CODE);
    interrupt.abort();
  };
  // A SIGTERM (a scheduler's timeout, docker stop, systemd) stops as Ctrl-C does: a batch writes its
  // results and unlocks its folder. Without a handler Node died at once, and as a container's pid 1 it
  // ignored the signal until the SIGKILL.
  const onSigterm = () => {
    terminated = true;
    onSigint();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  try {
    const env = { ...process.env };
    const code = await remote(argv, { env, out: (line) => console.log(line), err: (line) => void process.stderr.write(`${line}\n`), signal: interrupt.signal, invokedAs: invocation(env, process.argv[1], process.cwd()) });
    return terminated && code === INTERRUPTED_EXIT_CODE ? TERMINATED_EXIT_CODE : code;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
  }
}

/** What a shell reports for a process a SIGTERM ended (128 + 15), as it reports 130 for Ctrl-C. */
export const TERMINATED_EXIT_CODE = 143;

export async function remote(argv: string[], io: RemoteIo): Promise<number> {
  const [action, ...rest] = argv;
  if (action === undefined || !(ACTIONS as string[]).includes(action)) {
    // The actions' synopses, not the whole usage (over 90 lines) that would push the message away.
    const what = action === undefined || action.startsWith('-') ? `give an action: ${ACTIONS.slice(0, -1).join(', ')} or ${ACTIONS.at(-1)}` : `unknown action "${action}" (known: ${ACTIONS.join(', ')})`;
    throw new UsageError(`${what}\nusage: ${ACTIONS.map((a) => SYNOPSIS[a]).join('\n       ')}`, { brief: true });
  }
  try {
    if (action === 'generate') return await generate(rest, io);
    if (action === 'get') return await get(rest, io);
    if (action === 'cancel') return await cancel(rest, io);
    if (action === 'webhook-secret') return await (await import('./remote-webhook-secret.ts')).webhookSecret(rest, io);
    if (action === 'spend-limit') return await (await import('./remote-spend-limit.ts')).spendLimit(rest, io);
    if (action === 'list') return await (await import('./remote-list.ts')).list(rest, io);
    if (action === 'redeliver') return await redeliver(rest, io);
    // Loaded when used: the batch runner builds on this module's pieces.
    return await (await import('./remote-batch.ts')).batch(rest, io);
  } catch (e) {
    // A wrong command line: what is wrong and this action's synopsis, not the usage of all four (88
    // lines, the message scrolled away); --help has the rest.
    const parseError = e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true;
    if ((e instanceof UsageError && !e.brief) || parseError) throw new UsageError(`${(e as Error).message}\nusage: ${SYNOPSIS[action as Action]} [--url URL] [--key KEY]`, { brief: true });
    throw e;
  }
}

export const connectionOptions = { url: { type: 'string' }, key: { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' } } as const;

export interface Connection {
  url: string;
  key: string;
  /** Where the key came from, for a 401's message (never the key itself). */
  keySource: string;
  /** Where the URL came from: --url, CLIPAG_API_URL or the default. */
  urlSource: string;
  /** Said on stderr before any request (a key over plain http to another machine). */
  warning?: string;
}

/** A URL as the user gave it, fit to be shown: without credentials or a query (both may be secrets). */
function shownArg(url: string): string {
  return URL.canParse(url) ? shownUrl(url) : JSON.stringify(scrubbed(url));
}

/** --url and --key, else the environment, else the local server `npm start` runs and the key it keeps. */
function connection(values: { url?: string; key?: string }, env: RemoteIo['env']): Connection {
  const url = values.url ?? (env.CLIPAG_API_URL || DEFAULT_API_URL);
  const urlSource = values.url !== undefined ? '--url' : env.CLIPAG_API_URL ? 'CLIPAG_API_URL' : 'the default';
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`${urlSource} ${shownArg(url)} is not a URL (like ${DEFAULT_API_URL})`);
  }
  // Each of these can never work: refused here, at once, not retried as a network error.
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new UsageError(`${urlSource} ${shownArg(url)}: http or https only`);
  // fetch refuses a URL with credentials; the API takes a bearer key, never a user name or password.
  if (parsed.username || parsed.password) throw new UsageError(`${urlSource} ${shownArg(url)}: a user name or password in the URL is not how the API takes a key; pass the key with --key or CLIPAG_API_KEY`);
  if (parsed.search || parsed.hash) throw new UsageError(`${urlSource} ${shownArg(url)}: the API's base address, without a query`);
  const keyFile = resolve(env.CLIPAG_DATA_DIR || '.data', 'local-api-key');
  let key: string | undefined;
  let keySource: string;
  if (values.key !== undefined) [key, keySource] = [values.key, '--key'];
  else if (env.CLIPAG_API_KEY) [key, keySource] = [env.CLIPAG_API_KEY, 'CLIPAG_API_KEY'];
  else {
    keySource = keyFile;
    // Only for a server on this machine: a local key is no business of a remote deployment.
    if (isLoopbackUrl(parsed)) {
      key = readKeyFile(keyFile);
      // And only to a port a `clipag serve` of this data folder listens on (its record says): on a shared
      // machine another user's listener on a loopback port (the default 8787 while no server runs) would
      // be sent the key (review-tenancy F2).
      const dataDir = dirname(keyFile);
      const served = localServerPorts(dataDir);
      const port = Number(parsed.port || (parsed.protocol === 'https:' ? 443 : 80));
      if (key && !served.unknown && !served.ports.has(port)) {
        const running = [...served.ports].sort((a, b) => a - b);
        throw new UsageError(
          `no clipag serve of ${dataDir} listens on port ${port} (${urlSource} ${shownUrl(parsed.href)}), so its key (${keyFile}) is not sent there: ${running.length ? `it runs on port ${running.join(', ')}; give that --url` : 'start one (npm start), or give the key with --key'}`,
          { brief: true },
        );
      }
    }
  }
  if (!key) {
    // Configuration, not the command line's shape: the message and a pointer to --help, not the whole usage.
    throw new UsageError(
      `no API key for ${parsed.origin} (${urlSource}): pass --key KEY or set CLIPAG_API_KEY (a deployment's operator issues keys with \`clipag keys create\`)` +
        (isLoopbackUrl(parsed) ? `; for a local server, \`npm start\` writes one to ${keyFile}, which does not exist or is empty (CLIPAG_DATA_DIR moves it)` : '') +
        // The names earlier READMEs exported for curl: set, and read by nothing.
        (env.CLIPAG_KEY || env.CLIPAG ? `; ${[env.CLIPAG ? 'CLIPAG' : '', env.CLIPAG_KEY ? 'CLIPAG_KEY' : ''].filter(Boolean).join(' and ')} ${env.CLIPAG && env.CLIPAG_KEY ? 'are' : 'is'} set, but this CLI reads CLIPAG_API_URL and CLIPAG_API_KEY` : ''),
      { brief: true },
    );
  }
  key = key.trim();
  // A key with a space or a newline cannot go in a header; said without echoing it.
  if (!/^[\x21-\x7e]+$/.test(key)) throw new UsageError(`the API key from ${keySource} holds characters no HTTP header can carry (is it the whole key, ck_…?)`, { brief: true });
  const warning =
    parsed.protocol === 'http:' && !isLoopbackUrl(parsed)
      ? `clipag remote: warning: the API key goes to ${parsed.host} over plain http, readable by anyone on the way; use https (a deployment's API Gateway URL is https)`
      : undefined;
  return { url: parsed.toString().replace(/\/$/, ''), key, keySource, urlSource, ...(warning ? { warning } : {}) };
}

function readKeyFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function timeoutSec(value: string | undefined, def: number): number {
  if (value === undefined) return def;
  const n = decimalNumber(value);
  if (!Number.isFinite(n) || n < 0 || n > 86_400) throw new UsageError(`--timeout must be a number of seconds in [0, 86400], got "${value}"`);
  return n;
}

function intFlag(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got "${value}"`);
  return n;
}

/** --size, by the API's limits: refused here, before an upload or a request. */
function parseSize(s: string): [number, number] {
  const [w, h] = sizeShape(s, '128x96');
  for (const v of [w, h]) {
    if (v < MIN_SIDE || v > MAX_SIDE || v % SIDE_MULTIPLE !== 0) throw new UsageError(`--size ${s}: the API takes sides of ${MIN_SIDE}-${MAX_SIDE} px, multiples of ${SIDE_MULTIPLE}`);
  }
  return [w, h];
}

/** The file image `index` goes to: FILE itself for one image, else FILE with -<index> before its extension. */
export function outputPath(out: string, index: number, n: number): string {
  if (n <= 1) return out;
  const dot = out.lastIndexOf('.');
  const slash = Math.max(out.lastIndexOf('/'), out.lastIndexOf('\\'));
  return dot > slash + 1 ? `${out.slice(0, dot)}-${index}${out.slice(dot)}` : `${out}-${index}`;
}

/** Every file the images may go to, checked as `clipag generate` checks -o: before any request. */
function outputPaths(out: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => {
    try {
      return outputFile(outputPath(out, i, n), '-o');
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  });
}


/** A command to print: each word shell-quoted as needed. */
export const command = (words: readonly string[]) => words.map(shellWord).join(' ');

export const ended = (g: Generation) => g.status === 'succeeded' || g.status === 'failed' || g.status === 'canceled';

/** What a run knows when it stops early: for the message that says how to go on. */
export interface Progress {
  id?: string;
  last?: Generation;
  /** The POST was sent, and may have reached the API without its answer coming back: a generation may exist. */
  postLost?: boolean;
  idempotencyKey?: string;
  /** The upload:ID this run's --init file became. */
  uploadInit?: string;
  /** The files written before the run stopped. */
  written?: string[];
}

export interface Session {
  io: RemoteIo;
  /** What a printed command begins with (RemoteIo.invokedAs), then `remote …`. */
  cli: readonly string[];
  client: ClipagClient;
  conn: Connection;
  deadline: number;
  timeoutSec: number;
  json: boolean;
  cancelOnInterrupt: boolean;
  /** The -o as given, for the resume hint. */
  outArg?: string;
  /** The --url as given, for the resume hint (absent: the environment or the default, as the next run finds them too). */
  urlArg?: string;
  progress: Progress;
  /** generate: the POST's body (its re-send after Ctrl-C), and the command that gets its generation again. */
  body?: GenerationBody;
  resumeCommand?: (set?: Record<string, string>) => string;
  /** generate: the --init file uploaded. */
  initFile?: string;
}

export function session(io: RemoteIo, values: { url?: string; key?: string; json?: boolean; timeout?: string; 'cancel-on-interrupt'?: boolean }, def: number, outArg?: string): Session {
  const conn = connection(values, io.env);
  const t = timeoutSec(values.timeout, def);
  if (conn.warning) io.err(conn.warning);
  const client = new ClipagClient({ url: conn.url, key: conn.key, note: io.err, ...(io.signal ? { signal: io.signal } : {}), ...(io.fetch ? { fetch: io.fetch } : {}), ...(io.sleep ? { sleep: io.sleep } : {}) });
  return {
    io,
    cli: io.invokedAs ?? ['clipag'],
    client,
    conn,
    deadline: Date.now() + t * 1000,
    timeoutSec: t,
    json: Boolean(values.json),
    cancelOnInterrupt: Boolean(values['cancel-on-interrupt']),
    ...(outArg !== undefined ? { outArg } : {}),
    ...(values.url !== undefined ? { urlArg: values.url } : {}),
    progress: {},
  };
}

/** `clipag remote get ID` as this run was given it (--url, -o), to pick the generation up again. */
function getCommand(s: Session, id: string): string {
  return command([...s.cli, 'remote', 'get', id, ...(s.urlArg !== undefined ? ['--url', s.urlArg] : []), ...(s.outArg !== undefined ? ['-o', s.outArg] : [])]);
}

function cancelCommand(s: Session, id: string): string {
  return command([...s.cli, 'remote', 'cancel', id, ...(s.urlArg !== undefined ? ['--url', s.urlArg] : [])]);
}

type Token = NonNullable<ReturnType<typeof parseArgs>['tokens']>[number];

/**
 * The options a command was given, as words to print it again: those named in `without` left out, a
 * --key as KEY (never the key itself), and a value that starts with "-" joined with "=" (parseArgs
 * takes it as a value only that way).
 */
export function optionWords(tokens: readonly Token[], without: readonly string[]): string[] {
  return tokens.flatMap((t) => {
    if (t.kind !== 'option' || without.includes(t.name)) return [];
    if (t.name === 'key') return ['--key', 'KEY'];
    if (t.value === undefined) return [t.rawName];
    return t.value.startsWith('-') ? [`--${t.name}=${t.value}`] : [t.rawName, t.value];
  });
}

/**
 * This generate command again, with its Idempotency-Key: it gets the generation the first made (a
 * replay), never a second one. An --init file becomes the upload:ID it was uploaded as (uploading it
 * again would be another request, refused as idempotency_key_reused). A --key is never printed: KEY
 * stands for it.
 */
export function generateCommand(cli: readonly string[], tokens: Token[], key: string, uploadInit: string | undefined, set: Record<string, string> = {}): string {
  // The user's words in their order, the key (and any flag set here) last; but before a "--", after
  // which everything is an argument: there they would join the prompt. A flag in `set` replaces the
  // user's own (a flag given twice is refused).
  const words: string[] = [];
  const added = [...Object.entries(set).flatMap(([name, value]) => [`--${name}`, value]), '--idempotency-key', key];
  let placed = false;
  for (const t of tokens) {
    if (t.kind === 'option-terminator') {
      words.push(...added, '--');
      placed = true;
    } else if (t.kind === 'positional') words.push(t.value);
    else if (t.name === 'idempotency-key' || Object.hasOwn(set, t.name)) continue;
    else if (t.name === 'key') words.push('--key', 'KEY');
    else if (t.value === undefined) words.push(t.rawName);
    else {
      const value = t.name === 'init' && uploadInit !== undefined ? uploadInit : t.value;
      // A value that starts with "-" goes with "=": parseArgs takes it as a value only that way.
      if (value.startsWith('-')) words.push(`--${t.name}=${value}`);
      else words.push(t.rawName, value);
    }
  }
  return command([...cli, 'remote', 'generate', ...words, ...(placed ? [] : added)]);
}

/**
 * A prompt from the command line, checked as the API checks it: by the API's own schema for a prompt's
 * text (trimmed, then counted in code points, so "🐱" is one character, not two UTF-16 units).
 * Node decodes argv lossily: bytes a terminal in another encoding passed (Latin-1 "caf\xe9") arrive as
 * U+FFFD, which the API would run, and bill, as written, on text its caller never typed (the API
 * refuses such bytes in a body). A caller who means U+FFFD can send it from a UTF-8 batch file.
 */
function checkPromptArg(text: string, what: string): void {
  if (text.includes('\uFFFD') || !isWellFormedText(text)) {
    throw new UsageError(
      `${what} holds U+FFFD (or a lone UTF-16 surrogate), what undecodable bytes become: the terminal passed text that is not UTF-8 (set a UTF-8 locale, such as LANG=C.UTF-8, and type it again)`,
    );
  }
  const checked = WeightedPrompt.shape.text.safeParse(text);
  if (checked.success) return;
  if (checked.error.issues.some((issue) => issue.code === 'too_big')) {
    // The count only for the message, in the schema's unit; the schema decided.
    throw new UsageError(`${what} is ${[...text.trim()].length} characters; the API takes at most ${PROMPT_MAX_CHARS}`);
  }
  throw new UsageError(`${what} is empty`);
}

async function generate(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    tokens: true,
    options: {
      ...connectionOptions,
      negative: { type: 'string', multiple: true }, steps: { type: 'string' }, size: { type: 'string' }, seed: { type: 'string' }, n: { type: 'string' },
      model: { type: 'string' }, 'model-version': { type: 'string' }, init: { type: 'string' }, strength: { type: 'string' }, out: { type: 'string', short: 'o' },
      'cancel-after': { type: 'string' }, format: { type: 'string' }, quality: { type: 'string' },
      'idempotency-key': { type: 'string' }, 'cancel-on-interrupt': { type: 'boolean' },
    },
  });
  // Everything is checked before the first request: a bad flag must not cost an upload or a job.
  if (positionals.length !== 1) throw new UsageError('give exactly one prompt, in quotes: clipag remote generate "a large red circle on the left"');
  const prompt = positionals[0]!;
  checkPromptArg(prompt, 'the prompt');
  if ((values.negative?.length ?? 0) > 1) throw new UsageError('--negative: the API takes one negative prompt');
  if (values.negative?.[0] !== undefined) checkPromptArg(values.negative[0], '--negative');
  const body: GenerationBody = { prompt };
  if (values.negative?.[0] !== undefined) body.negative_prompt = values.negative[0];
  if (values.size !== undefined) [body.width, body.height] = parseSize(values.size);
  const steps = intFlag(values.steps, 'steps', 1, MAX_STEPS);
  if (steps !== undefined) body.steps = steps;
  const seed = intFlag(values.seed, 'seed', 0, 2 ** 32 - 1);
  if (seed !== undefined) body.seed = seed;
  const n = intFlag(values.n, 'n', 1, MAX_IMAGES) ?? 1;
  if (values.n !== undefined) body.n = n;
  if (values.model !== undefined) body.model = values.model;
  const cancelAfter = intFlag(values['cancel-after'], 'cancel-after', 1, MAX_CANCEL_AFTER_SEC);
  if (cancelAfter !== undefined) body.cancel_after = cancelAfter;
  const modelVersion = values['model-version'];
  if (modelVersion !== undefined) {
    if (!MODEL_VERSION_PATTERN.test(modelVersion)) throw new UsageError(`--model-version must be 12 to 64 lower-case hex digits (a content_hash from GET /v1/models, or its start), got "${modelVersion.slice(0, 80)}"`);
    body.model_version = modelVersion;
  }
  const init = values.init;
  // A URL is the API's to fetch (ADR 0038), a data: URI its to decode (ADR 0042): sent as given, never read as a path.
  const initToStore = init !== undefined && isInitToStore(init);
  const initFile = init !== undefined && init !== 'gmm' && init !== 'noise' && !init.startsWith('upload:') && !initToStore ? init : undefined;
  if (init !== undefined && initFile === undefined) body.init = init;
  // An inline image (ADR 0042) is checked here as the API would: a bad one is a usage error, before any request.
  if (init !== undefined && isInitDataUri(init)) {
    const image = checkInitDataUriSync(init, MAX_IMAGE_FILE_BYTES);
    if (!image.ok) throw new UsageError(`--init data:…: ${image.reason}`);
  }
  if (values.strength !== undefined) {
    if (initFile === undefined && !init?.startsWith('upload:') && !initToStore) throw new UsageError('--strength needs an init image (--init PATH.png, upload:ID, an https URL or a data: URI); gmm and noise starts have nothing to keep');
    const strength = decimalNumber(values.strength);
    if (!(strength >= 0 && strength <= 1)) throw new UsageError(`--strength must be a number in [0, 1], got "${values.strength}"`);
    body.strength = strength;
  }
  const userKey = values['idempotency-key'];
  const idempotencyKey = userKey ?? `clipag-remote-${randomUUID()}`;
  if (!IDEMPOTENCY_KEY.test(idempotencyKey)) throw new UsageError('--idempotency-key must be 1-255 visible ASCII characters, no spaces');
  // The format asked of the API (ADR 0041): named, or the one -o's extension says.
  const fileFormat = outputFormatArgs(values.format, values.quality, values.out);
  if (isLossyOutputFormat(fileFormat.format)) {
    body.output_format = fileFormat.format;
    if (fileFormat.quality !== undefined) body.output_quality = fileFormat.quality;
  }
  const outArg = values.out ?? fileFormat.defaultOut;
  const paths = outputPaths(outArg, n);
  let initBytes: Uint8Array | undefined;
  if (initFile !== undefined) {
    try {
      initBytes = readFileSync(initFile);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`cannot read --init ${initFile}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'a folder, not a file' : code === 'EACCES' ? 'permission denied' : (code ?? (e as Error).message)}`);
    }
    // The API's own check, here: a damaged PNG or JPEG (or another format) would spend an upload of the hour's, then be refused.
    const check = await checkInitImage(initBytes);
    if (!check.ok) throw new UsageError(`--init ${initFile} cannot be an init image: ${check.reason}`);
    const initStat = statSync(initFile);
    for (const path of paths) {
      const st = statSync(path, { throwIfNoEntry: false });
      if (st && st.dev === initStat.dev && st.ino === initStat.ino) throw new UsageError(`-o ${path} is the --init image: the output would replace it; choose another -o`);
    }
  }
  const s = session(io, values, DEFAULT_TIMEOUT_SEC, outArg);
  s.progress.idempotencyKey = idempotencyKey;
  s.body = body;
  s.resumeCommand = (set) => generateCommand(s.cli, tokens, idempotencyKey, s.progress.uploadInit, set);
  if (fileFormat.warning) io.err(`clipag remote: note: ${fileFormat.warning}`);
  if (initFile !== undefined) s.initFile = initFile;
  if (userKey !== undefined && initFile !== undefined) {
    io.err(
      `clipag remote: note: --idempotency-key with --init ${initFile}: the file is uploaded again on every run, a new upload:ID, so a run that repeats this command is another request to the API (409 idempotency_key_reused); to get this run's generation again, give the upload:ID printed below as --init`,
    );
  }
  try {
    if (initBytes !== undefined) {
      // The request checked first, without its init (and the strength that goes with it): a prompt the
      // content policy refuses, or a size or model the API does not take, spends no upload of the hour's.
      const { init: _init, strength: _strength, ...checked } = body;
      await s.client.estimate(checked, { deadline: s.deadline });
      if (!s.json) io.err(`clipag remote: uploading ${initFile} (${initBytes.length} bytes)`);
      const upload = await s.client.upload(initBytes, { deadline: s.deadline });
      body.init = upload.init;
      s.progress.uploadInit = upload.init;
      if (!s.json || userKey !== undefined) io.err(`clipag remote: uploaded ${initFile} as ${upload.init} (--init ${upload.init} uses it again without uploading)`);
    }
    let created: Awaited<ReturnType<ClipagClient['createGeneration']>>;
    try {
      created = await s.client.createGeneration(body, { idempotencyKey, waitSec: waitSecUntil(s.deadline), deadline: s.deadline });
    } catch (e) {
      s.progress.postLost = (e as { lost?: boolean }).lost === true;
      throw e;
    }
    s.progress.id = created.generation.id;
    s.progress.last = created.generation;
    if (!s.json) io.err(`clipag remote: ${created.replayed ? 'the API replayed generation' : 'created generation'} ${created.generation.id} (${progressText(created.generation)})`);
    const final = await untilEnded(s, created.generation, created.held);
    return await finish(s, final, paths);
  } catch (e) {
    return stopped(s, e);
  }
}

async function get(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { ...connectionOptions, out: { type: 'string', short: 'o' }, 'cancel-on-interrupt': { type: 'boolean' } },
  });
  const id = generationId(positionals, 'get');
  // The folder at least, now; each file once the generation says how many images it has.
  if (values.out !== undefined) outputPaths(values.out, 1);
  const s = session(io, values, DEFAULT_TIMEOUT_SEC, values.out);
  s.progress.id = id;
  try {
    const first = await s.client.getGeneration(id, { waitSec: waitSecUntil(s.deadline), deadline: s.deadline });
    s.progress.last = first.generation;
    // Every file its images go to, checked now that the first read says how many: not after the wait.
    const paths = values.out === undefined ? undefined : outputPaths(values.out, first.generation.request.n);
    const final = await untilEnded(s, first.generation, first.held);
    return await finish(s, final, paths);
  } catch (e) {
    return stopped(s, e);
  }
}

async function cancel(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options: connectionOptions });
  const id = generationId(positionals, 'cancel');
  const s = session(io, values, CANCEL_TIMEOUT_SEC);
  s.progress.id = id;
  try {
    const g = await s.client.cancelGeneration(id, { deadline: s.deadline });
    if (s.json) io.out(JSON.stringify(g));
    else io.out(`${g.id} ${g.status === 'canceled' ? 'canceled' : `${g.status}, cancel requested: it stops within about a second`}`);
    return 0;
  } catch (e) {
    if (e instanceof ApiError && e.code === 'job_terminal') {
      if (s.json) io.out(JSON.stringify(apiErrorJson(e)));
      io.err(`clipag remote: nothing to cancel: ${e.detail}`);
      return 1;
    }
    return stopped(s, e);
  }
}

async function redeliver(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options: connectionOptions });
  const id = generationId(positionals, 'redeliver');
  const s = session(io, values, CANCEL_TIMEOUT_SEC);
  try {
    const g = await s.client.redeliverWebhook(id, { deadline: s.deadline });
    const hook = g.webhook as { status?: unknown; last_error?: unknown } | null;
    if (s.json) io.out(JSON.stringify(g));
    else if (hook?.status === 'delivered') io.out(`${g.id} webhook delivered`);
    else io.out(`${g.id} webhook ${String(hook?.status ?? 'unknown')}${typeof hook?.last_error === 'string' ? ` (${hook.last_error})` : ''}: retried on its schedule`);
    return hook?.status === 'delivered' ? 0 : 1;
  } catch (e) {
    return requestFailed(s, e);
  }
}

/** The one positional of get and cancel, as the API's ids look (so that it is refused here, not by a 400). */
function generationId(positionals: string[], verb: string): string {
  if (positionals.length !== 1) throw new UsageError(`give exactly one generation id: clipag remote ${verb} ID`);
  const id = positionals[0]!;
  if (!RESOURCE_ID_PATTERN.test(id)) throw new UsageError(`"${id}" is not a generation id (letters, digits, "_" and "-", as the API's "id")`);
  return id;
}

/** The `Prefer: wait` to ask for: what is left of --timeout, whole seconds, at most MAX_WAIT_SEC; 0 asks for none. */
function waitSecUntil(deadline: number): number {
  return Math.max(0, Math.min(MAX_WAIT_SEC, Math.floor((deadline - Date.now()) / 1000)));
}

function progressText(g: Generation): string {
  const p = g.progress;
  const steps = g.status === 'running' && p.total > 0 ? ` step ${p.step}/${p.total}` : '';
  // While queued, what the API says of the fleet (ADR 0040): a wait of minutes is a cold start, not a hang.
  // (The answer as sent: a queue of another shape, which the schema let pass, says nothing here.)
  const note = g.status === 'queued' ? (g.queue as { note?: unknown } | undefined)?.note : undefined;
  const queue = typeof note === 'string' ? ` (${note})` : '';
  return `${g.status}${steps}${queue}${p.attempt > 1 ? ` (attempt ${p.attempt})` : ''}${g.cancel_requested && !ended(g) ? ', cancel requested' : ''}`;
}

/** Reads the generation until it has ended, or throws TimedOut once a read at (or after) the deadline found it still going. */
export async function untilEnded(s: Session, first: Generation, firstHeld: boolean): Promise<Generation> {
  let g = first;
  let held = firstHeld;
  let shown = progressText(g);
  let pollMs = POLL_FIRST_MS;
  let sentAt = Date.now();
  let saidUnheld = false;
  while (!ended(g)) {
    const left = s.deadline - Date.now();
    if (left <= 0) throw new TimedOut(`generation ${g.id} is still ${progressText(g)}`);
    if (!held && !saidUnheld && waitSecUntil(s.deadline) > 0) {
      saidUnheld = true;
      if (!s.json) s.io.err("clipag remote: the API answered at once (no Preference-Applied: this deployment does not hold requests, or this account's budget of held requests is spent for now); polling every few seconds");
    }
    const gap = held ? HELD_GAP_MS - (Date.now() - sentAt) : pollMs;
    if (!held) pollMs = Math.min(POLL_MAX_MS, Math.round(pollMs * 1.5));
    // Never past the deadline: a gap that would run past it ends there, with one last read.
    const ms = Math.min(gap, left);
    if (ms > 0) await pause(ms, s.io.signal);
    sentAt = Date.now();
    ({ generation: g, held } = await s.client.getGeneration(g.id, { waitSec: waitSecUntil(s.deadline), deadline: s.deadline }));
    s.progress.last = g;
    const now = progressText(g);
    if (now !== shown && !s.json && !ended(g)) s.io.err(`clipag remote: ${g.id}: ${now}`);
    shown = now;
  }
  return g;
}

async function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await sleepFor(ms, undefined, signal ? { signal } : {});
  } catch (e) {
    if (signal?.aborted) throw new Interrupted('interrupted while waiting');
    throw e;
  }
}

/** Why a succeeded generation lists no image to download: deleted (ADR 0021), or past its outputs_expire_at. */
export function noImagesMessage(g: Generation): string {
  const gone = g.expired_outputs ?? [];
  // The API's list says so; an older API's, the time (by this machine's clock).
  const expired = gone.length > 0 || (typeof g.outputs_expire_at === 'string' && Date.parse(g.outputs_expire_at) <= Date.now());
  const seeds = gone.length > 0 ? `; their seeds make them again: ${gone.map((o) => `image ${o.index} seed ${o.seed}`).join(', ')}` : '';
  const why = g.deleted_at ? ` (deleted at ${g.deleted_at})` : expired ? ` (its images expired at ${g.outputs_expire_at}${seeds})` : '';
  return `generation ${g.id} has no images to download${why}`;
}

/** A refusal as --json prints it on stdout: the API's envelope, with the HTTP status. */
function apiErrorJson(e: ApiError): { error: { status: number; code: string; message: string; param: string | null; request_id: string | null } } {
  return { error: { status: e.status, code: e.code, message: e.detail, param: e.param, request_id: e.requestId } };
}

/** The generation has ended: its images downloaded (to `paths`, by index), it reported, the exit status chosen. */
async function finish(s: Session, g: Generation, paths: string[] | undefined): Promise<number> {
  const { io } = s;
  const written = new Map<number, string>();
  if (g.status === 'succeeded' && paths) {
    if (g.outputs.length === 0 && (g.withheld_outputs.length === 0 || (g.expired_outputs?.length ?? 0) > 0)) {
      // Deleted (ADR 0021), or its images expired: nothing to download, and -o asked for files.
      if (s.json) io.out(JSON.stringify(g));
      io.err(`clipag remote: ${noImagesMessage(g)}`);
      return 1;
    }
    for (const o of g.outputs) {
      const path = paths[o.index];
      if (path === undefined) throw new ApiError(`GET /v1/generations/${g.id}`, 200, 'bad_output_index', `image ${o.index} of a generation of ${paths.length} (its request.n)`);
      // Each file is written as soon as it is downloaded: a later failure keeps the images already here (and says which).
      const bytes = await s.client.download(o.url, { deadline: s.deadline });
      checkDownloadedImage(o, bytes);
      // `get -o out.png` of a generation that asked for JPEG: the file is what the API made, said once
      // (generate said it before the request, from --format and -o).
      const format = outputFormatOfContentType(typeof o.content_type === 'string' ? o.content_type : undefined) ?? 'png';
      const kind = FORMAT_NAME[format];
      if (s.body === undefined && written.size === 0 && extname(path) !== '' && formatOfFileName(path) !== format) io.err(`clipag remote: note: ${path} is a ${kind} whatever its extension (${extname(path)}): the generation's images are ${kind}s`);
      try {
        writeWhole(path, bytes);
      } catch (e) {
        const done = [...written.values()];
        io.err(`clipag remote: cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}${done.length ? `; wrote ${done.join(', ')}` : ''}; ${getCommand(s, g.id)} downloads ${done.length ? 'them all' : 'its images'} again`);
        return 1;
      }
      written.set(o.index, path);
      s.progress.written = [...written.values()];
    }
  }
  if (s.json) io.out(JSON.stringify(g));
  else {
    const r = g.request;
    // The bundle that made it, by the start of its hash (a --model-version that makes it again).
    const made = typeof g.model_version === 'string' ? ` ${g.model_version.slice(0, 12)}` : '';
    io.out(`${g.id} ${g.status} (model ${r.model}${made}, ${r.width}x${r.height}, ${r.steps} steps, n ${r.n})`);
    for (const o of g.outputs) {
      io.out(`  image ${o.index}: seed ${o.seed}${o.clip_score !== undefined ? `, clip score ${o.clip_score.toFixed(3)}` : ''}, ${written.has(o.index) ? `wrote ${written.get(o.index)}` : o.url}`);
    }
    for (const w of g.withheld_outputs) io.out(`  image ${w.index}: withheld by the output check (${w.content_flags.map((f) => f.rule).join(', ')})`);
    // A warning quotes the prompt: its bidi overrides escaped here too (a worker before the text review sent them raw).
    for (const w of g.warnings) io.err(`warning: ${invisibleEscaped(w)}`);
    for (const f of g.content_flags) io.err(`content policy (${f.category}): "${f.term}" ${f.message}`);
    for (const o of g.outputs) for (const f of o.content_flags ?? []) io.err(`output check (${f.category}, ${f.action}) on image ${o.index}: looks like "${f.concept}" (cosine ${f.cosine.toFixed(3)}): ${f.message}`);
  }
  const withheld = g.withheld_outputs.map((w) => w.index);
  if (g.status === 'failed' && g.error?.code === 'content_policy') {
    // Every image withheld: what `clipag generate --policy` exits with when it withholds its image.
    io.err(`clipag remote: generation ${g.id}: the output check withheld every image: ${g.error.message}; nothing was written`);
    return WITHHELD_EXIT_CODE;
  }
  if (g.status === 'failed') {
    io.err(`clipag remote: generation ${g.id} failed: ${g.error?.message ?? 'no reason given'} [${g.error?.code ?? 'unknown'}]`);
    return 1;
  }
  if (g.status === 'canceled') {
    // Its cancel_after deadline ended it (ADR 0034): say so, or it reads as if someone had canceled it.
    const why = g.error?.code === 'deadline_exceeded' ? `: ${g.error.message} [deadline_exceeded]` : '';
    io.err(`clipag remote: generation ${g.id} was canceled${why}`);
    return 1;
  }
  if (withheld.length > 0) {
    // Some delivered, some kept back: the files asked for are not all there, so not a plain success.
    io.err(`clipag remote: generation ${g.id}: the output check withheld image${withheld.length > 1 ? 's' : ''} ${withheld.join(', ')}; ${paths ? 'those files were not written' : 'they have no URL'}`);
    return WITHHELD_EXIT_CODE;
  }
  return 0;
}

/** How long the re-send and the cancel after a Ctrl-C may take (the command's own --timeout may be spent). */
const INTERRUPT_CANCEL_MS = 10_000;

/**
 * --cancel-on-interrupt: cancels the generation. With no id yet (Ctrl-C during the POST, held by
 * `Prefer: wait`: its job exists from the start of the hold), the same POST is sent again with the
 * same Idempotency-Key and no wait: a replay, answered at once with that job (or, if the first never
 * arrived, a new one, canceled all the same); then that job is canceled.
 */
async function cancelAfterInterrupt(s: Session, known: string | undefined): Promise<void> {
  const { io, progress } = s;
  // A client of its own: the interrupted one's signal has fired.
  const client = new ClipagClient({ url: s.conn.url, key: s.conn.key, note: io.err, ...(io.fetch ? { fetch: io.fetch } : {}), ...(io.sleep ? { sleep: io.sleep } : {}) });
  const deadline = Date.now() + INTERRUPT_CANCEL_MS;
  let id = known;
  try {
    if (id === undefined) {
      const again = await client.createGeneration(s.body!, { idempotencyKey: progress.idempotencyKey!, waitSec: 0, deadline });
      id = again.generation.id;
      if (ended(again.generation)) {
        io.err(`clipag remote: interrupted; generation ${id} had already ended (${again.generation.status}), nothing to cancel: ${getCommand(s, id)} downloads it`);
        return;
      }
    }
    const g = await client.cancelGeneration(id, { deadline });
    io.err(`clipag remote: interrupted; generation ${id} ${g.status === 'canceled' ? 'canceled' : 'asked to cancel (it stops within about a second)'} (--cancel-on-interrupt)`);
  } catch (ce) {
    if (ce instanceof ApiError && ce.code === 'job_terminal' && id !== undefined) {
      io.err(`clipag remote: interrupted; generation ${id} had already ended, nothing to cancel (${ce.detail}): ${getCommand(s, id)} downloads it`);
      return;
    }
    const how = id !== undefined ? cancelCommand(s, id) : `${s.resumeCommand!({ timeout: '0' })} prints its id; ${command([...s.cli, 'remote', 'cancel'])} ID cancels it`;
    io.err(`clipag remote: interrupted; the cancel ${id !== undefined ? `of ${id} ` : ''}failed (${(ce as Error).message}): ${how}`);
  }
}

/** The run stopped before its end (an error, the deadline, Ctrl-C): say why, and how to go on. */
async function stopped(s: Session, e: unknown): Promise<number> {
  const { io, progress } = s;
  const id = progress.id;
  // Stopped while downloading: the generation has ended, and only the download is left to do.
  const over = progress.last !== undefined && ended(progress.last);
  const goesOn = id !== undefined && !over;
  // No id came back, but the POST may have reached the API: a generation may exist; its Idempotency-Key gets it.
  const mayExist = id === undefined && progress.postLost === true;
  const wrote = progress.written?.length ? `wrote ${progress.written.join(', ')}; ` : '';
  // `notCanceled`: said after Ctrl-C, where a reader may think the job stopped with the command.
  const resumeText = (notCanceled: boolean) =>
    id !== undefined
      ? over
        ? `generation ${id} has ended (${progress.last!.status}): ${wrote}${getCommand(s, id)} downloads ${wrote ? 'them all again' : 'its images'}`
        : `generation ${id} goes on${notCanceled ? ' (not canceled)' : ''}: ${getCommand(s, id)} waits for it again; ${cancelCommand(s, id)} stops it`
      : mayExist
        ? `the POST was sent and no answer came back, so it may have made a generation${notCanceled ? ', not canceled' : ''} (Idempotency-Key ${progress.idempotencyKey}): ${s.resumeCommand!()} gets it, never a second one`
        : 'no generation was made';
  const resume = resumeText(false);
  if (e instanceof Interrupted) {
    if (s.json && progress.last) io.out(JSON.stringify(progress.last));
    if (!s.cancelOnInterrupt || over) io.err(`clipag remote: interrupted; ${resumeText(true)}`);
    else if (id === undefined && !mayExist) io.err('clipag remote: interrupted; no generation was made');
    else await cancelAfterInterrupt(s, id);
    return INTERRUPTED_EXIT_CODE;
  }
  // Exit 124 only while there is something to pick up: a generation that goes on (or may exist), or its images.
  const somethingLeft = goesOn || over || mayExist;
  if (e instanceof WaitPastDeadline) {
    if (s.json && progress.last) io.out(JSON.stringify(progress.last));
    const refusal = `${e.what}: ${e.status} ${e.code}: ${e.detail}${e.policy ? ` (the limit: ${e.policy})` : ''}; it asks to wait ${retryIn(e.retryAfterMs)} (until ${untilText(e.retryAt)}), past --timeout ${s.timeoutSec} s`;
    if (!somethingLeft) {
      io.err(`clipag remote: refused for now: ${refusal}; retry after that${progress.uploadInit ? ` (--init ${progress.uploadInit} uses the upload this run made)` : ''}; no generation was made`);
      return 1;
    }
    io.err(`clipag remote: timed out: ${refusal}; ${resume}`);
    return TIMED_OUT_EXIT_CODE;
  }
  if (e instanceof TimedOut) {
    if (s.json && progress.last) io.out(JSON.stringify(progress.last));
    io.err(`clipag remote: timed out (--timeout ${s.timeoutSec} s): ${e.message}; ${resume}`);
    return somethingLeft ? TIMED_OUT_EXIT_CODE : 1;
  }
  if (e instanceof CannotSend) {
    // The --url (or its port) is one fetch will never use: a usage error, as a malformed --url is.
    if (e.api) throw new UsageError(`${s.conn.urlSource} ${shownUrl(s.conn.url)}: ${e.message}`);
    io.err(`clipag remote: ${e.message}; ${resume}`);
    return 1;
  }
  if (e instanceof ApiError) {
    // With --json, a refusal is on stdout too, as the API said it (and as generate --json says its own):
    // a pipeline reads the code there, not from stderr. The generation, where there is one, with it.
    if (s.json) io.out(JSON.stringify({ ...apiErrorJson(e), ...(progress.last ? { generation: progress.last } : {}) }));
    const rid = e.requestId ? ` [request_id ${e.requestId}]` : '';
    const trouble = connectionTrouble(s.conn, e);
    if (trouble !== undefined) {
      io.err(`clipag remote: ${trouble}`);
      return 1;
    }
    if (id !== undefined && isUnknownGeneration(e)) {
      io.err(`clipag remote: no generation ${id} for this key's account (404 not_found: ${e.detail}${rid}); check the id`);
      return 1;
    }
    if (e.status === 409 && e.code === 'idempotency_key_reused') {
      const why = s.initFile
        ? `this run uploaded --init ${s.initFile} again (as ${progress.uploadInit}), which makes it another request than the earlier run with this key: give that run's upload:ID as --init (it printed it), or a new --idempotency-key`
        : 'an earlier request with this key had another prompt or options: give the same ones, or a new --idempotency-key';
      io.err(`clipag remote: ${e.message}; ${why}`);
      return 1;
    }
    // A JPEG asked of an API from before output_format (ADR 0041; -o FILE.jpg alone asks for one): its
    // strict body check names the key, not the reason. A WebP asked of one from before WebP (ADR 0043):
    // its enum names the formats it has.
    const olderApi = e.status === 400 && s.body?.output_format !== undefined && /output_(format|quality)/.test(`${e.param ?? ''} ${e.detail}`) && /unrecognized|unknown/i.test(e.detail);
    const beforeWebp = e.status === 400 && s.body?.output_format === 'webp' && e.param === 'output_format' && !/webp/.test(e.detail);
    // A data: URI init sent to an API from before them (ADR 0042): its init rule does not name them.
    const beforeDataInit = e.status === 400 && typeof s.body?.init === 'string' && isInitDataUri(s.body.init) && e.param === 'init' && !/data:/.test(e.detail);
    const hint = olderApi
      ? '; this API is from before JPEG outputs: ask for a PNG (--format png, or -o FILE.png)'
      : beforeWebp
        ? '; this API is from before WebP outputs: ask for a JPEG or a PNG (--format jpeg|png, or -o FILE.jpg|FILE.png)'
        : beforeDataInit
          ? '; this API is from before data: URI inits: save the image to a file and give its path as --init (it is uploaded first)'
          : '';
    io.err(`clipag remote: ${e.message}${hint}${(goesOn && progress.last) || over || mayExist ? `; ${resume}` : ''}`);
    return 1;
  }
  if (e instanceof GaveUp) {
    io.err(`clipag remote: ${connectionTrouble(s.conn, e)}; ${resume}`);
    return 1;
  }
  throw e;
}

/**
 * What a failure says about the connection rather than the request, in the same words for every
 * action: the key refused (401), a URL that is not the API's base address (the app's 404 for a path
 * it has no route for), retries given up (with why: nothing listening, no such host). The words after
 * `clipag remote: `; undefined for any other failure.
 */
export function connectionTrouble(conn: Connection, e: unknown): string | undefined {
  if (e instanceof ApiError) {
    const rid = e.requestId ? ` [request_id ${e.requestId}]` : '';
    if (e.status === 401) return `the API refused the key from ${conn.keySource} (401 ${e.code}: ${e.detail}${rid}); check the key: --key, CLIPAG_API_KEY, or for a local server the key file npm start writes`;
    if (isUnknownRoute(e)) return `${e.message}; is ${conn.urlSource} ${shownUrl(conn.url)} the API's base address (with its stage path, without /v1)?`;
    return undefined;
  }
  if (e instanceof GaveUp) {
    // Refused: nothing listens there. Any other failure means something answered (or may have).
    const hint = e.refused
      ? isLoopbackUrl(new URL(conn.url))
        ? ` (is the API running at ${shownUrl(conn.url)}? npm start runs one)`
        : ` (connection refused: is ${conn.urlSource} ${shownUrl(conn.url)} right, and the API up?)`
      : e.noHost
        ? ` (no such host: is ${conn.urlSource} ${shownUrl(conn.url)} right?)`
        : '';
    return `${e.message}${hint}`;
  }
  return undefined;
}

/** A Retry-After as a reader takes it: seconds, or minutes and hours when long. */
/**
 * How a command with no generation to follow (webhook-secret, list) reports a request that got no
 * usable answer, and its exit status: interrupted 130; refused past --timeout or timed out
 * `timedOutExit` (124 where something may be left to pick up, else 1); a --url fetch will not use is a
 * usage error; any other failure 1, its message with `advice` and `tail` after it.
 */
export function requestFailed(s: Session, e: unknown, o: { tail?: string; timedOutExit?: number; advice?: (e: ApiError) => string } = {}): number {
  const { io } = s;
  const tail = o.tail ?? '';
  const timedOutExit = o.timedOutExit ?? 1;
  if (e instanceof Interrupted) {
    io.err(`clipag remote: interrupted${tail}`);
    return INTERRUPTED_EXIT_CODE;
  }
  if (e instanceof WaitPastDeadline) {
    io.err(`clipag remote: refused for now: ${e.what}: ${e.status} ${e.code}: ${e.detail}${e.policy ? ` (the limit: ${e.policy})` : ''}; it asks to wait ${retryIn(e.retryAfterMs)} (until ${untilText(e.retryAt)}), past --timeout ${s.timeoutSec} s${tail}`);
    return timedOutExit;
  }
  if (e instanceof TimedOut) {
    io.err(`clipag remote: timed out (--timeout ${s.timeoutSec} s): ${e.message}${tail}`);
    return timedOutExit;
  }
  if (e instanceof CannotSend) {
    // The --url (or its port) is one fetch will never use: a usage error, as a malformed --url is.
    if (e.api) throw new UsageError(`${s.conn.urlSource} ${shownUrl(s.conn.url)}: ${e.message}`);
    io.err(`clipag remote: ${e.message}${tail}`);
    return 1;
  }
  const trouble = connectionTrouble(s.conn, e);
  if (trouble !== undefined) {
    io.err(`clipag remote: ${trouble}${tail}`);
    return 1;
  }
  if (e instanceof ApiError) {
    io.err(`clipag remote: ${e.message}${o.advice?.(e) ?? ''}${tail}`);
    return 1;
  }
  throw e;
}

export function retryIn(ms: number): string {
  const sec = Math.ceil(ms / 1000);
  if (sec < 120) return `${sec} s`;
  return `${sec} s, about ${sec < 7200 ? `${Math.round(sec / 60)} min` : `${(sec / 3600).toFixed(1)} h`}`;
}

/**
 * A prompt as a terminal line shows it: its first `maxChars` code points (never half of a surrogate
 * pair, which JSON.stringify would show as a literal "\ud83d"), "…" where it was cut, quoted as the
 * engine's warnings quote text (shownQuoted: control characters, bidirectional controls and other
 * invisible characters escaped, not run).
 */
export function quotedPrompt(text: string, maxChars: number): string {
  // maxChars in all: a cut leaves maxChars - 1 code points and "…".
  return shownQuoted([...text].length > maxChars ? promptStart(text, maxChars - 1) : text);
}
