// A webhook receiver on 127.0.0.1 for the webhook tests: it answers `answer` (settable per test) and
// records every request it gets. Registers its own start (beforeAll) and close (afterAll).
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll } from 'vitest';

export interface ReceivedWebhook {
  headers: Record<string, string>;
  body: string;
}

export interface WebhookReceiver {
  /** `http://127.0.0.1:<port>/hooks`, once started. */
  url: string;
  port: number;
  /** The status every request is answered with. */
  answer: number;
  /** Every request received, in order. */
  readonly received: ReceivedWebhook[];
  /** Back to answering 200 with nothing received (for a beforeEach). */
  reset(): void;
}

export function webhookReceiver(): WebhookReceiver {
  let server: Server;
  const hook: WebhookReceiver = {
    url: '',
    port: 0,
    answer: 200,
    received: [],
    reset() {
      hook.answer = 200;
      hook.received.length = 0;
    },
  };
  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        hook.received.push({ headers: req.headers as Record<string, string>, body });
        res.writeHead(hook.answer).end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    hook.port = (server.address() as AddressInfo).port;
    hook.url = `http://127.0.0.1:${hook.port}/hooks`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return hook;
}
