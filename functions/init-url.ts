// An init image named by URL (`init: "https://…"`): the API fetches it once, when the generation is
// made, under the same address policy as webhooks (public addresses on allowed ports in AWS, the
// connection pinned to a checked address), checks it as it checks an upload, and stores it as an
// upload, so that the job names `upload:<id>` and the worker reads it as any other (ADR 0038).

import * as http from 'node:http';
import * as https from 'node:https';
import { ValidationError } from '../shared/errors.ts';
import { checkInitImage, type InitImageType } from '../shared/init-image.ts';
import { addressCheckedLookup, callerError, checkOutboundUrl, type WebhookPolicy, type WebhookResolver } from '../shared/webhooks.ts';

/** The whole fetch (every lookup, connection, redirect and the body) within this. */
export const INIT_FETCH_TIMEOUT_MS = 10_000;
/** Redirects followed (a CDN or a presigned link often answers one); each target is checked again. */
export const INIT_FETCH_MAX_REDIRECTS = 3;

export interface InitFetchOptions {
  policy: WebhookPolicy;
  maxBytes: number;
  timeoutMs?: number;
  /** Tests give names answers of their choosing (as httpWebhookSender's). */
  resolve?: WebhookResolver;
}

export interface FetchedInitImage {
  bytes: Uint8Array;
  contentType: InitImageType;
}

const refused = (message: string) => new ValidationError(`init ${message}`, 'init');

/**
 * The image at `raw`: fetched (GET, redirects followed up to INIT_FETCH_MAX_REDIRECTS), at most
 * `maxBytes`, and checked as an upload is (a PNG whole, a JPEG's segments). Every failure is a 400 on
 * `init` saying what happened in terms that reveal nothing of the deployment's own network (as a
 * webhook's last_error: a name with no public address, "could not connect", "no answer").
 */
export async function fetchInitImage(raw: string, options: InitFetchOptions): Promise<FetchedInitImage> {
  const timeoutMs = options.timeoutMs ?? INIT_FETCH_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  let url = checkOutboundUrl(raw, options.policy, 'init');
  for (let hop = 0; ; hop++) {
    const answer = await getOnce(url, options, deadline, timeoutMs);
    if (answer.kind === 'redirect') {
      if (hop >= INIT_FETCH_MAX_REDIRECTS) throw refused(`URL redirected more than ${INIT_FETCH_MAX_REDIRECTS} times; give the image's final URL`);
      let next: URL;
      try {
        next = new URL(answer.location, url);
      } catch {
        throw refused(`URL redirected to an address that is not a URL (${answer.location.slice(0, 80)})`);
      }
      // A Location's fragment is never sent (RFC 9110), and nothing of this URL is stored: it goes.
      next.hash = '';
      // The same policy for every hop: a public URL that redirects inside is refused.
      try {
        url = checkOutboundUrl(next.href, options.policy, 'init');
      } catch (error) {
        const where = next.origin === 'null' ? `a ${next.protocol} URL` : next.origin;
        throw refused(`URL redirected to ${where}, which is not allowed: ${(error as Error).message.replace(/^init('s)? /, (_m, s: string | undefined) => (s ? 'its ' : ''))}`);
      }
      continue;
    }
    const check = await checkInitImage(answer.body);
    if (!check.ok) throw refused(`URL's content cannot be an init image (a PNG or a JPEG): ${check.reason}`);
    return { bytes: answer.body, contentType: check.contentType };
  }
}

type Answer = { kind: 'redirect'; location: string } | { kind: 'body'; body: Uint8Array };

function getOnce(url: URL, options: InitFetchOptions, deadline: number, timeoutMs: number): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const left = deadline - Date.now();
    if (left <= 0) return reject(refused(`URL gave no image within ${timeoutMs / 1000} s`));
    const dns = addressCheckedLookup(options.policy, options.resolve ? { resolve: options.resolve } : {});
    const client = url.protocol === 'https:' ? https : http;
    let settled = false;
    const fail = (error: ValidationError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      dns.cancel();
      req.destroy();
      reject(error);
    };
    const timer = setTimeout(() => fail(refused(`URL gave no image within ${timeoutMs / 1000} s`)), left);
    const req = client.get(url, { headers: { accept: 'image/png, image/jpeg', 'user-agent': 'clipag (init image fetch)' }, lookup: dns.lookup as never, agent: false }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && status !== 304) {
        const location = res.headers.location;
        res.destroy();
        if (!location) return fail(refused(`URL answered HTTP ${status} without a Location`));
        settled = true;
        clearTimeout(timer);
        return resolve({ kind: 'redirect', location });
      }
      if (status !== 200) {
        res.destroy();
        const hint = status >= 500 || status === 429 ? '; retry once it answers' : status === 401 || status === 403 ? ': the URL must be readable without credentials (a presigned link will do)' : '';
        return fail(refused(`URL answered HTTP ${status}${hint}`));
      }
      const encoding = String(res.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
      if (encoding !== 'identity' && encoding !== '') {
        // Never inflated here (no bomb to defuse): the stored bytes are the image as served.
        res.destroy();
        return fail(refused(`URL's image is served with Content-Encoding: ${encoding.slice(0, 40)}; serve the file as it is (no compression: PNG and JPEG are compressed already)`));
      }
      const declared = Number(res.headers['content-length']);
      if (Number.isFinite(declared) && declared > options.maxBytes) {
        res.destroy();
        return fail(refused(`URL's image is ${declared} bytes, over the ${options.maxBytes}-byte limit`));
      }
      // Each chunk is copied into one buffer: kept as they come, a server that sends its body a byte
      // at a time would hold a socket read buffer per byte (hundreds of bytes of memory for each).
      let body = Buffer.allocUnsafe(Math.min(options.maxBytes, Number.isFinite(declared) && declared > 0 ? declared : 64 * 1024));
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        if (settled) return;
        // Counted as it comes: a server that sends more than it declared (or declares nothing) is cut off.
        if (size + chunk.length > options.maxBytes) return fail(refused(`URL's image is over the ${options.maxBytes}-byte limit`));
        if (size + chunk.length > body.length) {
          const grown = Buffer.allocUnsafe(Math.min(options.maxBytes, Math.max(size + chunk.length, body.length * 2)));
          body.copy(grown, 0, 0, size);
          body = grown;
        }
        chunk.copy(body, size);
        size += chunk.length;
      });
      res.on('end', () => {
        if (settled) return;
        // Closed before the length it declared: a cut-short file, not the image.
        if (!res.complete) return fail(refused(`URL's answer broke off before its end; retry`));
        settled = true;
        clearTimeout(timer);
        resolve({ kind: 'body', body: new Uint8Array(body.buffer, body.byteOffset, size) });
      });
      res.on('error', () => fail(refused(`URL's answer broke off before its end; retry`)));
      res.on('aborted', () => fail(refused(`URL's answer broke off before its end; retry`)));
    });
    req.on('error', (error) => {
      // The host answered, but not with HTTP this client reads (headers over 16 KB, a length given
      // twice, not HTTP at all): said so, not "could not connect".
      const code = String((error as { code?: unknown }).code ?? '');
      if (code.startsWith('HPE_')) return fail(refused('URL answered with an invalid HTTP response (headers over 16 KB, or a malformed message)'));
      fail(refused(`URL: ${callerError(error, url.href)}`));
    });
  });
}
