// Completion webhooks (ADR 0013): URL policy, Standard Webhooks signing, an address-checked POST, and
// the delivery of one job's event with its attempt bookkeeping in the job record. Used by the worker
// (first attempt, right after a job ends), by the cancel of a queued job (its first attempt, bounded)
// and by the queued-job sweep (retries, and jobs whose end nobody announced). A job that asked for it
// also has a `generation.started` event (ADR 0036): first sent by the worker that claims the job, in
// the background, retried by the sweep while the job has not ended.
import { createHmac, randomUUID } from 'node:crypto';
import { lookup as dnsLookup, promises as dnsPromises, type LookupAddress } from 'node:dns';
import * as http from 'node:http';
import * as https from 'node:https';
import { BlockList, isIP } from 'node:net';
import { CorruptDocumentError, ValidationError } from './errors.ts';
import type { BlobStore, JobStore } from './ports.ts';
import { claimFree, isTerminal, startedEventOwed, startedEventState, startedFirstAttemptAllowed, webhookOfDeleted, type JobRecord, type JobWebhook, type JobWebhookStarted } from './schemas/job.ts';
import { generationView, viewOptionsFromConfig, type ViewOptions } from './views.ts';
import { accountSigningSecrets, newWebhookSecret } from './webhook-secrets.ts';

/** Attempts in all; the waits after each failed one (the last failure gives up). About 9 hours. */
export const WEBHOOK_RETRY_DELAYS_SEC = [30, 120, 600, 1800, 7200, 21600] as const;
export const WEBHOOK_MAX_ATTEMPTS = WEBHOOK_RETRY_DELAYS_SEC.length + 1;
/** One attempt: connect, send, and get the status line within this. */
export const WEBHOOK_TIMEOUT_MS = 10_000;
/**
 * The first attempt a cancel while queued makes before it answers (ADR 0013, "a cancel's own
 * attempt"): shorter than WEBHOOK_TIMEOUT_MS, so that a receiver that is down or slow holds the
 * cancel's answer for at most this. A receiver slower than this gets the sweep's retry, 30 s later.
 */
export const CANCEL_WEBHOOK_TIMEOUT_MS = 5_000;
/** A webhook host's name lookup (A and AAAA at once, a lost query asked again once) within this, inside the attempt's. */
export const WEBHOOK_DNS_TIMEOUT_MS = 4_000;
/** The ports a webhook URL may name where private addresses are refused (AWS), unless the operator sets others. */
export const DEFAULT_WEBHOOK_PORTS: readonly number[] = [443];
/** The record's limit on a webhook URL (JobWebhook.url): the canonical form, which may be longer than the one typed. */
const WEBHOOK_URL_MAX_CHARS = 2000;
/** How long a deliverer holds an attempt (longer than one attempt can take). */
const CLAIM_MS = 60_000;

export interface WebhookPolicy {
  /**
   * Whether http: URLs and loopback/private/link-local destinations are allowed. Local mode only:
   * in AWS a webhook to 169.254.169.254 or a VPC address would let a caller probe the inside.
   */
  allowPrivate: boolean;
  /**
   * Where private addresses are refused (AWS): the only ports a webhook URL may name (unset:
   * DEFAULT_WEBHOOK_PORTS). Any port would let a caller learn, from `last_error`, which ports of any
   * public host are open. Where private addresses are allowed (local mode), any port.
   */
  ports?: readonly number[];
}

const PRIVATE = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['224.0.0.0', 4], ['240.0.0.0', 4],
  // The documentation ranges (TEST-NET-1 to 3), as 2001:db8::/32 below: no legitimate receiver's address.
  ['192.0.2.0', 24], ['198.51.100.0', 24], ['203.0.113.0', 24],
] as const) PRIVATE.addSubnet(net, bits, 'ipv4');
// Also the IPv6 forms that embed an IPv4 address (IPv4-compatible ::/96, IPv4-translated ::ffff:0:0:0/96,
// NAT64 64:ff9b::/96 and the
// local-use 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32), the discard prefix 100::/64, the
// documentation 2001:db8::/32 and the deprecated site-local fec0::/10: none is a legitimate receiver's address.
for (const [net, bits] of [
  ['::', 96], ['::1', 128], ['::ffff:0:0:0', 96], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], ['ff00::', 8], ['64:ff9b::', 96], ['64:ff9b:1::', 48], ['2002::', 16], ['2001::', 32], ['100::', 64], ['2001:db8::', 32],
] as const) PRIVATE.addSubnet(net, bits, 'ipv6');

const LINK_LOCAL = new BlockList();
LINK_LOCAL.addSubnet('169.254.0.0', 16, 'ipv4');
LINK_LOCAL.addSubnet('fe80::', 10, 'ipv6');
LINK_LOCAL.addSubnet('fd00:ec2::', 32, 'ipv6'); // EC2's IPv6 instance metadata service

/**
 * Link-local: the cloud instance metadata services (169.254.169.254, fd00:ec2::254) and their kin.
 * Refused even where private addresses are allowed (local mode): `clipag serve` on a cloud machine
 * must not hand its instance credentials to whoever holds an API key.
 */
export function isLinkLocalAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return LINK_LOCAL.check(address, 'ipv4');
  if (family !== 6) return false;
  // An IPv6 form that wraps an IPv4 address reaches it wherever a translator sits on the path (AWS's
  // NAT64, a 6to4 relay): the wrapped address is checked too.
  return LINK_LOCAL.check(address, 'ipv6') || embeddedIpv4(address).some((v4) => LINK_LOCAL.check(v4, 'ipv4'));
}

/**
 * The IPv4 addresses an IPv6 address wraps: IPv4-mapped ::ffff:a.b.c.d, IPv4-translated
 * ::ffff:0:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d (and the local-use
 * 64:ff9b:1::/48), and 6to4 2002:AABB:CCDD::.
 */
export function embeddedIpv4(address: string): string[] {
  const h = ipv6Hextets(address);
  if (!h) return [];
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zero = (from: number, to: number) => h.slice(from, to).every((x) => x === 0);
  const out: string[] = [];
  if (zero(0, 5) && (h[5] === 0xffff || h[5] === 0)) out.push(v4(h[6]!, h[7]!)); // mapped, compatible
  if (zero(0, 4) && h[4] === 0xffff && h[5] === 0) out.push(v4(h[6]!, h[7]!)); // translated
  if (h[0] === 0x64 && h[1] === 0xff9b) out.push(v4(h[6]!, h[7]!)); // NAT64
  if (h[0] === 0x2002) out.push(v4(h[1]!, h[2]!)); // 6to4
  return out;
}

/** An IPv6 address's eight 16-bit groups (a dotted IPv4 tail read as two), or null. */
function ipv6Hextets(address: string): number[] | null {
  let text = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const part = (t: string) => (t === '' ? [] : t.split(':').map((x) => parseInt(x, 16)));
  const head = part(halves[0]!);
  const rest = halves.length === 2 ? part(halves[1]!) : [];
  const groups = halves.length === 2 ? [...head, ...new Array(8 - head.length - rest.length).fill(0), ...rest] : head;
  return groups.length === 8 && groups.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffff) ? groups : null;
}

/** Loopback, private, link-local (the instance metadata service), CGNAT, multicast or reserved. */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return PRIVATE.check(address, 'ipv4');
  if (family !== 6) return true; // not an address at all: refuse
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return PRIVATE.check(mapped[1]!, 'ipv4');
  return PRIVATE.check(address, 'ipv6');
}

/**
 * The authority (user info, host, port) as typed: what the URL parser reads between an http(s) scheme
 * and the path. The parser drops tabs and newlines anywhere, C0 controls and spaces at the ends, and
 * takes any run of slashes and backslashes after the scheme; so does this.
 */
function typedAuthority(raw: string): string {
  const text = raw.replace(/[\t\n\r]/g, '').replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, '');
  return /^[a-z][a-z0-9+.-]*:[\\/]*([^\\/?#]*)/i.exec(text)?.[1] ?? '';
}

/** "443", "443 or 8443", "80, 443 or 8443". */
function portList(ports: readonly number[]): string {
  return ports.length === 1 ? String(ports[0]) : `${ports.slice(0, -1).join(', ')} or ${ports.at(-1)}`;
}

/**
 * Checks a webhook URL at the API (400 on failure) and again before every attempt. Names are resolved
 * only at send time, where the connection is pinned to an address that passed (no DNS rebinding).
 * Returns the parsed URL: its `href` is the canonical form, the URL an attempt calls, and so the one
 * to store and show (`https:\\host\path` and `https:host/path` are both `https://host/path`).
 */
export function checkWebhookUrl(raw: string, policy: WebhookPolicy): URL {
  return checkOutboundUrl(raw, policy, 'webhook_url');
}

/**
 * The address policy's check of a URL the deployment will call on a caller's behalf (a webhook, an
 * init image to fetch), its refusals naming `field`: scheme, no credentials or fragment, no port 0,
 * never link-local, and where private addresses are refused, a public literal on an allowed port.
 */
export function checkOutboundUrl(raw: string, policy: WebhookPolicy, field: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    const port = /:(\d+)$/.exec(typedAuthority(raw))?.[1];
    if (port !== undefined && Number(port) > 65535) throw new ValidationError(`${field} has port ${port}; a port is 1-65535`, field);
    throw new ValidationError(`${field} is not a valid absolute URL`, field);
  }
  const schemes = policy.allowPrivate ? ['https:', 'http:'] : ['https:'];
  if (!schemes.includes(url.protocol)) throw new ValidationError(`${field} must use ${schemes.join(' or ')}`, field);
  // Empty credentials ("https://@host/") parse to none, but are credentials as typed.
  if (url.username || url.password || typedAuthority(raw).includes('@')) throw new ValidationError(`${field} must not carry credentials`, field);
  // An empty fragment ("…/#") leaves `hash` empty but stays in the URL; a serialized URL has a "#" only there.
  if (url.href.includes('#')) throw new ValidationError(`${field} must not have a #fragment`, field);
  // Port 0 is no port a receiver can listen on, and Node's request reads it as "unset": the POST would
  // go to 80 or 443, not where the stored URL says.
  if (url.port === '0') throw new ValidationError(`${field} must not use port 0`, field);
  // A name's trailing dot (the root) names the same host: "localhost." is localhost.
  const literal = url.hostname.replace(/^\[|\]$/g, '').replace(/\.$/, '');
  if (isIP(literal) !== 0 && isLinkLocalAddress(literal)) throw new ValidationError(`${field} must not point at a link-local address (the instance metadata service)`, field);
  if (!policy.allowPrivate) {
    const host = literal;
    if (host === 'localhost' || host.endsWith('.localhost') || (isIP(host) !== 0 && isPrivateAddress(host))) {
      throw new ValidationError(`${field} must point at a public address`, field);
    }
    const ports = policy.ports ?? DEFAULT_WEBHOOK_PORTS;
    const port = url.port === '' ? 443 : Number(url.port); // https only here
    if (!ports.includes(port)) throw new ValidationError(`${field}'s port ${port} is not allowed here: ${field === 'webhook_url' ? 'webhooks go' : 'the deployment calls out'} to port ${portList(ports)} only${ports.includes(443) ? ' (https\'s default, which the URL need not name)' : ''}`, field);
  }
  // Percent-encoding and punycode can make the canonical form longer than the 2000 characters typed.
  if (url.href.length > WEBHOOK_URL_MAX_CHARS) throw new ValidationError(`${field} is ${url.href.length} characters once encoded (${url.href.slice(0, 40)}…); at most ${WEBHOOK_URL_MAX_CHARS}`, field);
  return url;
}

/** The lookup's error for a name with no allowed (public) address. */
export const PRIVATE_ONLY = 'EPRIVATEONLY';
/** The lookup's error for a name whose DNS servers did not answer within the lookup's bound. */
export const DNS_TIMEOUT = 'EDNSTIMEOUT';

/**
 * What the caller's record says of a connection that failed before an HTTP status: one class whatever
 * the socket said. Told apart, refused, reset, unreachable and a failed TLS handshake say which ports of
 * a host are open and what answers there; the hint names what the receiver's owner can check.
 */
export const COULD_NOT_CONNECT = 'could not connect (refused, reset or unreachable, or the TLS handshake failed): check the host, the port, and that its certificate is valid for the name';

/**
 * What the caller's record says of a failed attempt: a name that resolves to no public address (its
 * DNS servers silent, named as such), "could not connect", "no answer within N s", or (deliverWebhook)
 * "HTTP <status>". A name that does not resolve and one that resolves only to private addresses read
 * the same: otherwise `last_error` would tell a caller which internal names exist behind the
 * deployment. The operator's log keeps the socket's own text.
 */
export function callerError(cause: unknown, url: string): string {
  const code = (cause as { code?: unknown } | null)?.code;
  const hostname = () => new URL(url).hostname;
  if (code === DNS_TIMEOUT) {
    const ms = (cause as { timeoutMs?: unknown }).timeoutMs;
    return `${hostname()} does not resolve to a public address: no answer from its DNS servers${typeof ms === 'number' ? ` within ${ms / 1000} s` : ''}`;
  }
  if (code === PRIVATE_ONLY || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'ENODATA') {
    return `${hostname()} does not resolve to a public address`;
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  // The URL's own check, made again at send time (a rule tightened since the job was made): its
  // message is about the caller's URL, and says what to change.
  if (cause instanceof ValidationError) return message;
  if (/^no answer within/.test(message)) return message;
  return COULD_NOT_CONNECT;
}

export { newWebhookSecret };

/** Standard Webhooks signature: base64 HMAC-SHA256 of `id.timestamp.body` under the secret's bytes. */
export function signWebhook(secret: string, id: string, timestampSec: number, body: string): string {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  return `v1,${createHmac('sha256', key).update(`${id}.${timestampSec}.${body}`).digest('base64')}`;
}

/**
 * The `webhook-signature` header: one signature per secret, space-separated, as Standard Webhooks
 * allows, so a receiver holding any one of the secrets verifies the event.
 */
export function signWebhookWithEach(secrets: readonly string[], id: string, timestampSec: number, body: string): string {
  return secrets.map((secret) => signWebhook(secret, id, timestampSec, body)).join(' ');
}

export interface WebhookRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** Every address a name resolves to (node:dns lookup with `all`); tests give names answers of their choosing. */
export type WebhookResolver = (hostname: string, options: object, callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

/** Sends one attempt; resolves with the HTTP status, rejects on a network error, a refused address or the timeout. */
export type WebhookSender = (request: WebhookRequest) => Promise<number>;

/** The DNS resolver of the attempts that do not use the system's (see httpWebhookSender). */
export interface WebhookDnsOptions {
  /** The whole lookup's bound, A and AAAA queried at once (default WEBHOOK_DNS_TIMEOUT_MS). */
  timeoutMs?: number;
  /** DNS servers, as `Resolver.setServers` takes them; default: the system's (resolv.conf). */
  servers?: string[];
}

/**
 * One attempt's lookup through c-ares (a `dns.promises.Resolver` of its own): A and AAAA at once on
 * the event loop, bounded, and cancelled with the attempt. Not getaddrinfo: that runs on libuv's
 * threadpool, at most two lookups at a time, and cannot be cancelled, so names whose DNS never answers
 * (anyone's, for the price of a canceled job) would hold both slots and make every other webhook's
 * lookup, and the AWS SDK's, wait out its deadline.
 */
function dnsLookupOf(options: WebhookDnsOptions): { resolve: WebhookResolver; cancel: () => void } {
  const timeoutMs = options.timeoutMs ?? WEBHOOK_DNS_TIMEOUT_MS;
  // Half the bound a query: one lost to the network is asked again once.
  const resolver = new dnsPromises.Resolver({ timeout: Math.max(1, Math.floor(timeoutMs / 2)), tries: 2 });
  if (options.servers) resolver.setServers(options.servers);
  const resolve: WebhookResolver = (hostname, lookupOptions, callback) => {
    const family = (lookupOptions as { family?: number }).family;
    // c-ares's own give-up comes later than the bound (its back-off doubles the second try's wait).
    const bound = setTimeout(() => resolver.cancel(), timeoutMs);
    const none = Promise.resolve<string[]>([]);
    void Promise.allSettled([family === 6 ? none : resolver.resolve4(hostname), family === 4 ? none : resolver.resolve6(hostname)]).then(([v4, v6]) => {
      clearTimeout(bound);
      const addresses: LookupAddress[] = [
        ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
        ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
      ];
      if (addresses.length > 0) return callback(null, addresses);
      const codes = [v4, v6].flatMap((r) => (r.status === 'rejected' ? [String((r.reason as { code?: unknown }).code ?? (r.reason as Error).message)] : []));
      const silent = codes.some((c) => c === 'ETIMEOUT' || c === 'ECANCELLED');
      // Other failures (no such name, no record, SERVFAIL, REFUSED) read as a name that does not resolve.
      const error = silent
        ? Object.assign(new Error(`${hostname}: no answer from DNS within ${timeoutMs / 1000} s (${codes.join(', ')})`), { code: DNS_TIMEOUT, timeoutMs })
        : Object.assign(new Error(`${hostname}: DNS gave no address (${codes.join(', ') || 'no records'})`), { code: 'ENOTFOUND' });
      callback(error, []);
    });
  };
  return { resolve, cancel: () => resolver.cancel() };
}

/** A `lookup` for node:http(s) that only ever connects to an address the policy allows. */
export type CheckedLookup = (hostname: string, options: object, callback: (error: Error | null, address: string | LookupAddress[], family?: number) => void) => void;

/**
 * One outbound request's name lookup under the address policy: the connection goes to an address the
 * policy allows, whatever the name resolves to (no DNS rebinding between a check and the connect).
 * Through c-ares (dnsLookupOf) where private addresses are refused or `dns` is given; the system's
 * resolver otherwise (local mode: see httpWebhookSender). `cancel` ends a lookup still running.
 */
export function addressCheckedLookup(policy: WebhookPolicy, options: { resolve?: WebhookResolver; dns?: WebhookDnsOptions } = {}): { lookup: CheckedLookup; cancel: () => void } {
  const viaDns = options.resolve === undefined && (options.dns !== undefined || !policy.allowPrivate);
  const systemResolve: WebhookResolver = (hostname, lookupOptions, callback) => dnsLookup(hostname, { ...lookupOptions, all: true }, callback);
  const dns = viaDns ? dnsLookupOf(options.dns ?? {}) : undefined;
  const resolveName = options.resolve ?? dns?.resolve ?? systemResolve;
  const lookup: CheckedLookup = (hostname, lookupOptions, callback) => {
    resolveName(hostname, lookupOptions, (error, addresses) => {
      if (error) return callback(error, '');
      const allowed = addresses.filter((a) => !isLinkLocalAddress(a.address) && (policy.allowPrivate || !isPrivateAddress(a.address)));
      if (allowed.length === 0) return callback(Object.assign(new Error(`${hostname} resolves only to private addresses`), { code: PRIVATE_ONLY }), '');
      if ((lookupOptions as { all?: boolean }).all) return callback(null, allowed);
      return callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
  return { lookup, cancel: () => dns?.cancel() };
}

/**
 * POST over node:http(s), redirects not followed (a 3xx is a failure). The connection goes to an
 * address the policy allows: the lookup itself refuses the others, so a name that resolves to a
 * private address is refused however it was written.
 *
 * Names are resolved through c-ares (dnsLookupOf) where private addresses are refused (AWS: every
 * caller's name, an attacker's included), or where `dns` is given. Local mode keeps the system's
 * resolver: a receiver on this machine is named `localhost` or in the hosts file, which c-ares's
 * queries never read; and its callers are this machine's own key holders.
 */
export function httpWebhookSender(policy: WebhookPolicy, options: { timeoutMs?: number; resolve?: WebhookResolver; dns?: WebhookDnsOptions } = {}): WebhookSender {
  const timeoutMs = options.timeoutMs ?? WEBHOOK_TIMEOUT_MS;
  return (request) =>
    new Promise<number>((resolve, reject) => {
      // Literal addresses are refused here; names, by the lookup below.
      const url = checkWebhookUrl(request.url, policy);
      const client = url.protocol === 'https:' ? https : http;
      const dns = addressCheckedLookup(policy, options);
      const req = client.request(
        url,
        {
          method: 'POST',
          headers: { ...request.headers, 'content-length': String(Buffer.byteLength(request.body)) },
          lookup: dns.lookup as never,
          agent: false,
        },
        (res) => {
          clearTimeout(deadline);
          // Only the status counts: the body is not read, and the socket is closed at once (a body
          // that never ends must not hold it).
          res.destroy();
          resolve(res.statusCode ?? 0);
        },
      );
      // One deadline for the whole attempt, name lookup included. A socket timeout alone would let a
      // receiver that trickles its headers hold the attempt (and a drain, and the claim) for ever.
      const deadline = setTimeout(() => {
        dns.cancel();
        req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      req.on('error', (error) => {
        clearTimeout(deadline);
        reject(error);
      });
      req.end(request.body);
    });
}

/** The delivery settings a process takes from its config: the address policy, link lifetime and price. */
export function webhookDeliveryFromConfig(config: { webhookAllowPrivate: boolean; webhookPorts?: readonly number[]; signedUrlTtlSec: number; workerHourlyUsd?: number | undefined; outputRetentionDays?: number | undefined }): {
  send: WebhookSender;
  signedUrlTtlSec: number;
  view: ViewOptions;
} {
  return {
    send: httpWebhookSender({ allowPrivate: config.webhookAllowPrivate, ...(config.webhookPorts ? { ports: config.webhookPorts } : {}) }),
    signedUrlTtlSec: config.signedUrlTtlSec,
    view: viewOptionsFromConfig(config),
  };
}

export type DeliveryResult = 'delivered' | 'failed' | 'gave_up' | 'not_due' | 'held_elsewhere' | 'nothing_to_send';

export interface WebhookDeliveryDeps {
  jobs: JobStore;
  blobs: BlobStore;
  send: WebhookSender;
  /** Lifetime of the output URLs in the event body. */
  signedUrlTtlSec: number;
  /** The deployment's figures in the event body (as in GET): price, output retention. */
  view?: ViewOptions;
  clock: () => Date;
  log?: (entry: { level: 'info' | 'warn'; msg: string; [field: string]: unknown }) => void;
}

/**
 * Whether the job still owes its caller a webhook (delivered or given up: no). A job that failed to
 * enqueue owes none: its caller got a 503 (without the webhook's secret), and a retry with the same
 * Idempotency-Key queues the same job again, owing it afresh.
 */
export function webhookOwed(job: JobRecord): boolean {
  return job.webhook !== undefined && job.webhook.delivered_at === null && job.webhook.given_up_at === null && job.error?.code !== 'enqueue_failed';
}

/** The webhook's delivery state as new (the job is queued again). */
export function freshWebhookState(webhook: JobWebhook): JobWebhook {
  return { ...webhook, attempts: 0, delivered_at: null, given_up_at: null, next_attempt_at: null, claimed_until: null, last_error: null };
}

/** The fields of a delivery state that say when its next attempt may go (the end event's, or the started event's). */
type AttemptTimes = Pick<JobWebhookStarted, 'next_attempt_at' | 'claimed_until'>;

function due(w: AttemptTimes, now: Date): 'due' | 'not_due' | 'held_elsewhere' {
  if (w.next_attempt_at !== null && Date.parse(w.next_attempt_at) > now.getTime()) return 'not_due';
  if (w.claimed_until !== null && Date.parse(w.claimed_until) > now.getTime()) return 'held_elsewhere';
  return 'due';
}

/**
 * The end event's turn: due, and no attempt of the job's `generation.started` held elsewhere at the
 * moment (ADR 0036): a started attempt claimed before the job ended is let finish first, so that no
 * started event goes out after the end event. The end attempt is then made by the next deliverer
 * (the queued-job sweep), at most one claim's length later.
 */
function endDue(w: JobWebhook, now: Date): 'due' | 'not_due' | 'held_elsewhere' {
  const state = due(w, now);
  if (state !== 'due') return state;
  const started = w.started?.claimed_until;
  return started != null && Date.parse(started) > now.getTime() ? 'held_elsewhere' : 'due';
}

/** A delivery state's fields after an attempt (the end event's, in the webhook; the started event's, in `webhook.started`). */
type AttemptOutcome = Pick<JobWebhookStarted, 'attempts' | 'claimed_until' | 'last_error' | 'delivered_at' | 'given_up_at' | 'next_attempt_at'>;

/** What an attempt that made `attempts` in all and ended with `error` (null: delivered) leaves. */
function attemptOutcome(attempts: number, error: string | null, after: Date): AttemptOutcome {
  const gaveUp = error !== null && attempts >= WEBHOOK_MAX_ATTEMPTS;
  return {
    attempts,
    claimed_until: null,
    last_error: error === null ? null : error.slice(0, 500),
    delivered_at: error === null ? after.toISOString() : null,
    given_up_at: gaveUp ? after.toISOString() : null,
    next_attempt_at: error === null || gaveUp ? null : new Date(after.getTime() + WEBHOOK_RETRY_DELAYS_SEC[attempts - 1]! * 1000).toISOString(),
  };
}

/** What one send of an event came to: its error (null: a 2xx). */
interface SentEvent {
  error: string | null;
  httpStatus?: number;
  sentAt: Date;
}

/**
 * Builds, signs and sends one event of a claimed attempt: `{type, timestamp, data}` with `data` the
 * generation view of `job` (of the latest record once it is deleted). Never throws: a failure is the
 * attempt's error.
 */
async function sendEvent(
  deps: WebhookDeliveryDeps,
  job: JobRecord,
  webhook: JobWebhook,
  now: Date,
  event: { id: string; type: string; timestamp: string },
): Promise<SentEvent> {
  const { owner, id: jobId } = job;
  const timestampSec = Math.floor(now.getTime() / 1000);
  let error: string | null = null;
  let sending = false;
  let httpStatus: number | undefined;
  let sentAt = now;
  try {
    // Inside the attempt: a body that cannot be built (the store cannot sign a link) is a failed
    // attempt like any other, so it backs off and ends, instead of retrying for ever.
    let data = await generationView(job, deps.blobs, deps.signedUrlTtlSec, now, deps.view ?? {});
    // Deleted since the claim read it (signing the links takes a moment): the event announces the
    // deleted view, never the prompts and labels its owner has just removed (ADR 0021).
    const latest = job.deleted_at === undefined ? await deps.jobs.get(owner, jobId) : null;
    if (latest && latest.deleted_at !== undefined) data = await generationView(latest, deps.blobs, deps.signedUrlTtlSec, now, deps.view ?? {});
    const body = JSON.stringify({ type: event.type, timestamp: event.timestamp, data });
    // The account's secrets (ADR 0028), read at each attempt so that a rotation or a delete applies
    // to retries too; the job's own secret always signs as well (receivers that keep it, as before).
    const secrets = [...(await accountSecretsOrNone(deps, owner, jobId, now)), webhook.secret];
    sending = true;
    sentAt = deps.clock();
    const status = await deps.send({
      url: webhook.url,
      body,
      headers: {
        'content-type': 'application/json',
        'user-agent': 'clipag-webhooks/1',
        'webhook-id': event.id,
        'webhook-timestamp': String(timestampSec),
        'webhook-signature': signWebhookWithEach(secrets, event.id, timestampSec, body),
      },
    });
    httpStatus = status;
    if (status < 200 || status >= 300) error = `HTTP ${status}`;
  } catch (cause) {
    // Before the request went out, the fault is the deployment's (a link it could not sign), never the
    // caller's URL: the record says so, and the operator's log keeps the detail.
    error = sending ? callerError(cause, webhook.url) : 'the event could not be prepared (a fault on our side); it is retried';
    // The operator's log keeps the detail the caller's record does not show.
    if (error !== (cause instanceof Error ? cause.message : String(cause))) deps.log?.({ level: 'warn', msg: 'webhook: attempt refused or unresolved', job_id: jobId, owner, detail: cause instanceof Error ? cause.message : String(cause) });
  }
  return { error, sentAt, ...(httpStatus !== undefined ? { httpStatus } : {}) };
}

/** The log line of a settled attempt. */
function logAttempt(deps: WebhookDeliveryDeps, owner: string, jobId: string, eventId: string, attempts: number, sent: SentEvent, outcome: AttemptOutcome, after: Date): void {
  if (sent.error !== null) {
    deps.log?.({ level: 'warn', msg: outcome.given_up_at !== null ? 'webhook: last attempt failed; giving up' : 'webhook: attempt failed; will retry', job_id: jobId, owner, event_id: eventId, attempts, error: sent.error });
  } else {
    // "Did the customer's webhook arrive?" answered from the log. Never the URL (the caller's, and it
    // may carry a token) nor anything signed.
    deps.log?.({ level: 'info', msg: 'webhook delivered', job_id: jobId, owner, event_id: eventId, attempts, http_status: sent.httpStatus, ms: Math.max(0, after.getTime() - sent.sentAt.getTime()) });
  }
}

/**
 * One delivery attempt of a job's completion event, if the job has ended, still owes it, and it is
 * due. Of concurrent deliverers only the one whose conditional write claims the attempt sends. The
 * event id is the same on every attempt, so a receiver can drop repeats (delivery is at least once).
 */
export async function deliverWebhook(deps: WebhookDeliveryDeps, owner: string, jobId: string): Promise<DeliveryResult> {
  const now = deps.clock();
  const found = await deps.jobs.get(owner, jobId);
  if (!found || !isTerminal(found.status) || !webhookOwed(found)) return 'nothing_to_send';
  const state = endDue(found.webhook!, now);
  if (state !== 'due') return state;
  let claimed = false;
  const token = randomUUID();
  const job = await deps.jobs.update(owner, jobId, (cur) => {
    // Our own claim, written though its reply was lost (the retried write failed its condition): it
    // is ours already, and taking it for another deliverer's would delay the event by the claim's length.
    if (cur.webhook_claim === token && cur.webhook?.claimed_until != null) {
      claimed = true;
      return null;
    }
    claimed = isTerminal(cur.status) && webhookOwed(cur) && endDue(cur.webhook!, now) === 'due';
    return claimed ? { ...cur, webhook: { ...cur.webhook!, claimed_until: new Date(now.getTime() + CLAIM_MS).toISOString() }, webhook_claim: token } : null;
  });
  if (!claimed) return 'held_elsewhere';
  const webhook = job.webhook!;

  const eventId = `evt_${job.id}_${job.status}`;
  const sent = await sendEvent(deps, job, webhook, now, { id: eventId, type: `generation.${job.status}`, timestamp: job.finished_at ?? now.toISOString() });

  const after = deps.clock();
  const attempts = webhook.attempts + 1;
  const outcome = attemptOutcome(attempts, sent.error, after);
  await deps.jobs.update(owner, jobId, (cur) => {
    if (cur.webhook?.claimed_until !== webhook.claimed_until || cur.webhook_claim !== token) return null; // the claim lapsed and another deliverer took it
    const { webhook_claim: _done, ...rest } = cur;
    // The webhook as it now stands (a started event's state written meanwhile stays), with this attempt's outcome.
    const next: JobWebhook = { ...rest.webhook!, ...outcome };
    // Deleted while its event was owed: now that it has settled, the URL goes too (ADR 0021).
    return { ...rest, webhook: rest.deleted_at !== undefined ? webhookOfDeleted(next) : next };
  });
  logAttempt(deps, owner, jobId, eventId, attempts, sent, outcome, after);
  return sent.error === null ? 'delivered' : outcome.given_up_at !== null ? 'gave_up' : 'failed';
}

/** Whether an attempt of the job's started event may go now: owed, not backing off, not held by another deliverer. */
export function startedEventDue(job: JobRecord, now: Date): boolean {
  return startedEventOwed(job) && due(startedEventState(job.webhook!), now) === 'due';
}

/**
 * Whether a worker that has just claimed the job makes the started event's first attempt: it is
 * owed and no attempt of it was made or is out. A later attempt of the run (a redelivery after a
 * crash, a retry) finds it delivered, backing off or claimed, and leaves it to the queued-job sweep.
 */
export function startedEventUntried(job: JobRecord, now: Date): boolean {
  if (!startedEventOwed(job)) return false;
  const state = startedEventState(job.webhook!);
  return state.attempts === 0 && claimFree(state, now);
}

/**
 * One delivery attempt of a job's `generation.started` event (ADR 0036), if the job owes it and it
 * is due: claimed, signed, sent and recorded as the end event's attempts are, in its own state
 * (`webhook.started`), with its own webhook-id (`evt_<job>_started`). A retry is claimed only while
 * the job has not ended; the worker's first attempt (`first`) only while no attempt of the end event
 * has been made. The end event is not claimed while a started attempt is (endDue). So a started event
 * never goes out after the end event, and no retry of it once the job has ended.
 */
export async function deliverStartedEvent(deps: WebhookDeliveryDeps, owner: string, jobId: string, options: { first?: boolean } = {}): Promise<DeliveryResult> {
  const now = deps.clock();
  const allowed = (job: JobRecord) => (options.first ? startedFirstAttemptAllowed(job, now) : startedEventOwed(job));
  const found = await deps.jobs.get(owner, jobId);
  if (!found || !allowed(found)) return 'nothing_to_send';
  const state = due(startedEventState(found.webhook!), now);
  if (state !== 'due') return state;
  let claimed = false;
  const token = randomUUID();
  const job = await deps.jobs.update(owner, jobId, (cur) => {
    const mine = cur.webhook?.started;
    // Our own claim, written though its reply was lost (as deliverWebhook's).
    if (mine?.claim === token && mine.claimed_until != null) {
      claimed = true;
      return null;
    }
    claimed = allowed(cur) && due(startedEventState(cur.webhook!), now) === 'due';
    if (!claimed) return null;
    const started: JobWebhookStarted = { ...startedEventState(cur.webhook!), claimed_until: new Date(now.getTime() + CLAIM_MS).toISOString(), claim: token };
    return { ...cur, webhook: { ...cur.webhook!, started } };
  });
  if (!claimed) return 'held_elsewhere';
  const webhook = job.webhook!;
  const held = webhook.started!;
  const ours = (cur: JobRecord) => cur.webhook?.started?.claim === token && cur.webhook.started.claimed_until === held.claimed_until;

  const eventId = `evt_${job.id}_started`;
  const sent = await sendEvent(deps, job, webhook, now, { id: eventId, type: 'generation.started', timestamp: job.started_at ?? now.toISOString() });

  const after = deps.clock();
  const attempts = held.attempts + 1;
  const outcome = attemptOutcome(attempts, sent.error, after);
  await deps.jobs.update(owner, jobId, (cur) => {
    if (!ours(cur)) return null; // the claim lapsed and another deliverer took it
    const { claim: _done, ...rest } = cur.webhook!.started!;
    return { ...cur, webhook: { ...cur.webhook!, started: { ...rest, ...outcome } } };
  });
  logAttempt(deps, owner, jobId, eventId, attempts, sent, outcome, after);
  return sent.error === null ? 'delivered' : outcome.given_up_at !== null ? 'gave_up' : 'failed';
}

/**
 * The owner's account secrets that sign this attempt. A document that does not read signs nothing
 * (the job's secret still does), and the operator's log says so: holding every event of the owner
 * back for it would fail receivers that verify with the job's secret too. Its owner mends it with
 * POST /v1/webhook-secret, and GET says it is unreadable. A store that fails throws: the attempt
 * fails as "could not be prepared" and is retried, rather than go out without a signature its
 * receiver may need.
 */
async function accountSecretsOrNone(deps: WebhookDeliveryDeps, owner: string, jobId: string, now: Date): Promise<string[]> {
  try {
    return await accountSigningSecrets(deps.blobs, owner, now);
  } catch (error) {
    if (!(error instanceof CorruptDocumentError)) throw error;
    deps.log?.({ level: 'warn', msg: "webhook: the owner's webhook secret does not read; signed with the job's secret alone", job_id: jobId, owner, key: error.key, detail: error.detail });
    return [];
  }
}

/** Starts deliveries in the background (the worker's first attempt) and can wait for them (its drain). */
export interface WebhookNotifier {
  /** A job ended: deliver its event now if it owes one. Never throws. */
  notify(owner: string, jobId: string): void;
  /**
   * A worker has claimed the job (ADR 0036): deliver its `generation.started` event now if it owes
   * one, in the background (the run never waits for the receiver). The job's end event, told later,
   * waits for this attempt, so that the two go out in order. Never throws. Optional: a notifier
   * without it announces ends only.
   */
  notifyStarted?(owner: string, jobId: string): void;
  /**
   * Resolves when every delivery started so far has settled (each attempt is bounded by
   * WEBHOOK_TIMEOUT_MS), or after `capMs` whatever is still out (the sweep retries those).
   */
  drain(capMs?: number): Promise<void>;
}

export function webhookNotifier(deps: WebhookDeliveryDeps): WebhookNotifier {
  const inflight = new Set<Promise<void>>();
  /** The started event's attempt in flight, by job: the end event's attempt goes after it. */
  const startedOf = new Map<string, Promise<void>>();
  const track = (owner: string, jobId: string, attempt: () => Promise<DeliveryResult>): Promise<void> => {
    const p: Promise<void> = attempt()
      .then(() => undefined)
      .catch((error: unknown) => {
        // The attempt is not recorded (the store failed): the queued-job sweep tries again.
        deps.log?.({ level: 'warn', msg: 'webhook: delivery failed before it was recorded; the sweep retries', job_id: jobId, owner, error: error instanceof Error ? error.message : String(error) });
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
    return p;
  };
  return {
    notify(owner, jobId) {
      const before = startedOf.get(`${owner}/${jobId}`);
      // `before` never rejects (track's catch).
      track(owner, jobId, () => (before ? before.then(() => deliverWebhook(deps, owner, jobId)) : deliverWebhook(deps, owner, jobId)));
    },
    notifyStarted(owner, jobId) {
      const key = `${owner}/${jobId}`;
      const p = track(owner, jobId, () => deliverStartedEvent(deps, owner, jobId, { first: true }));
      startedOf.set(key, p);
      void p.finally(() => {
        if (startedOf.get(key) === p) startedOf.delete(key);
      });
    },
    async drain(capMs = 3 * WEBHOOK_TIMEOUT_MS) {
      let timer: NodeJS.Timeout | undefined;
      const cap = new Promise<void>((r) => (timer = setTimeout(r, capMs)));
      const all = (async () => {
        while (inflight.size > 0) await Promise.allSettled([...inflight]);
      })();
      await Promise.race([all, cap]);
      clearTimeout(timer);
    },
  };
}
