// A client that goes away before its body ends, on the real Node server (security review F2): the key
// is checked before any body is read, and a cut-off body is a refusal logged at info, never a 500
// `request failed` line (the one the error alarm keys on) that anyone who can reach the port could write.
import { connect } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { startApiServer, type RunningServer } from '../../functions/server.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
let server: RunningServer;
beforeEach(async () => {
  h = await harness();
  server = await startApiServer(createApp(h.deps), 0);
});
afterEach(async () => {
  await server.close({ graceMs: 100 });
  await h.close();
});

/** Sends the head and part of a body on a raw connection; `leave`: destroy it after 300 ms. The first status line answered, if any. */
async function partial(head: string, part: string, leave: boolean): Promise<string | undefined> {
  const port = new URL(server.url).port;
  const socket = connect(Number(port), '127.0.0.1');
  let answer = '';
  socket.on('data', (d) => (answer += d));
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(`POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${head}\r\n\r\n${part}`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  if (leave) socket.destroy();
  else socket.end();
  await new Promise((resolve) => setTimeout(resolve, 300));
  return answer.split('\r\n')[0] || undefined;
}

const errorLines = () => (h.logs as Array<{ level?: string }>).filter((l) => l.level === 'error');
const requestLines = () => (h.logs as Array<{ msg?: string; status?: number; error_code?: string; level?: string }>).filter((l) => l.msg === 'request' || l.msg === 'request failed');

describe('a body cut off by its client', () => {
  it('without a key: 401 at once, before the chunked body ends, and nothing at error level', async () => {
    expect(await partial('Transfer-Encoding: chunked', 'a\r\n{"prompt":\r\n', false)).toBe('HTTP/1.1 401 Unauthorized');
    expect(await partial('Transfer-Encoding: chunked', 'a\r\n{"prompt":\r\n', true)).toBe('HTTP/1.1 401 Unauthorized');
    expect(errorLines()).toEqual([]);
  });

  it('with a key: a chunked body whose client leaves is a 400 logged at info, not a 500', async () => {
    expect(await partial(`Authorization: Bearer ${h.alice}\r\nTransfer-Encoding: chunked`, 'a\r\n{"prompt":\r\n', true)).toBeUndefined();
    // The answer has nobody to go to; the log line is the request's record.
    for (let i = 0; i < 50 && requestLines().length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(requestLines().map((l) => [l.level, l.status, l.error_code])).toEqual([['info', 400, 'invalid_json']]);
    expect(errorLines()).toEqual([]);
  });
});
