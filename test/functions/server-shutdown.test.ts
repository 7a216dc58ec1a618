// functions/server.ts closing (a CLI review: Ctrl-C on `clipag serve` dropped held `Prefer: wait`
// requests with no answer, curl's "Empty reply from server"): new connections are refused at once,
// requests in flight see their signal abort and are answered, and only what is still open after the
// grace period is cut.
import { request as httpRequest } from 'node:http';
import { describe, expect, it } from 'vitest';
import { startApiServer } from '../../functions/server.ts';

/** A raw GET on a fresh connection: the answer's status and body, or the error that ended it. */
function get(url: string): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', (e) => resolve({ error: (e as NodeJS.ErrnoException).code ?? e.message }));
    });
    req.on('error', (e) => resolve({ error: (e as NodeJS.ErrnoException).code ?? e.message }));
    req.end();
  });
}

/** An app whose /hold answers when its request's signal aborts ("held"), or after 60 s ("timeout"); /ignore never answers. */
function holdingApp(started: () => void) {
  return {
    fetch: (request: Request): Promise<Response> | Response => {
      const path = new URL(request.url).pathname;
      if (path === '/quick') return new Response('quick');
      started();
      if (path === '/ignore') return new Promise<Response>(() => undefined);
      return new Promise<Response>((resolve) => {
        const timer = setTimeout(() => resolve(new Response('timeout')), 60_000);
        request.signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve(new Response('held'));
        });
      });
    },
  };
}

describe('startApiServer close()', () => {
  it('answers the requests it holds (their signal aborts), refuses new connections, and closes promptly', async () => {
    let holding = 0;
    const running = await startApiServer(holdingApp(() => holding++), 0);
    const held = [get(`${running.url}/hold`), get(`${running.url}/hold`)];
    while (holding < 2) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    const closed = running.close({ graceMs: 10_000 });
    expect(await Promise.all(held)).toEqual([
      { status: 200, body: 'held' },
      { status: 200, body: 'held' },
    ]);
    expect(await get(`${running.url}/quick`)).toEqual({ error: 'ECONNREFUSED' }); // no new connection
    await closed;
    expect(Date.now() - t0).toBeLessThan(2_000); // not the grace period: nothing was left open
    await running.close(); // again: the same close, no ERR_SERVER_NOT_RUNNING
  });

  it('a keep-alive connection with a request in flight gets its answer, then is closed', async () => {
    let holding = 0;
    const running = await startApiServer(holdingApp(() => holding++), 0);
    const res = fetch(`${running.url}/hold`); // fetch keeps its connections alive
    while (holding < 1) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    const closed = running.close({ graceMs: 10_000 });
    const answer = await res;
    expect([answer.status, await answer.text()]).toEqual([200, 'held']);
    await closed;
    expect(Date.now() - t0).toBeLessThan(2_000);
  });

  it('cuts what is still open after the grace period', async () => {
    let holding = 0;
    const running = await startApiServer(holdingApp(() => holding++), 0);
    const stuck = get(`${running.url}/ignore`);
    while (holding < 1) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    await running.close({ graceMs: 300 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(await stuck).toEqual({ error: 'ECONNRESET' });
  });
});
