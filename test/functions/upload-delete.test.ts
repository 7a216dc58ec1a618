// DELETE /v1/uploads/{id} (the privacy review of 2026-12-07): an init image, often the most personal
// input (a photo of a person), removed at once instead of after the upload retention (5 days in AWS,
// never by default locally). Refused 409 upload_in_use while a queued or running generation uses it.
import { encode as pngEncode } from 'fast-png';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { uploadKey } from '../../shared/keys.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** An upload of alice's, made as the signed PUT would: a real grant, then the bytes at its key. */
async function upload(owner: 'alice' | 'bob' = 'alice'): Promise<string> {
  const png = pngEncode({ width: 4, height: 4, data: new Uint8Array(48), channels: 3, depth: 8 });
  const res = await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: png.byteLength }, key: owner === 'alice' ? h.alice : h.bob });
  expect(res.status).toBe(201);
  const { upload_id: id } = (await res.json()) as { upload_id: string };
  await h.blobs.put(uploadKey(`acct_${owner}`, id), png, { contentType: 'image/png' });
  return id;
}
const del = (id: string, key = h.alice) => h.request(`/v1/uploads/${id}`, { method: 'DELETE', key });

describe('DELETE /v1/uploads/{id}', () => {
  it('removes the file at once; a new request naming it is then upload_not_found; a second DELETE says there was none', async () => {
    const id = await upload();
    const res = await del(id);
    expect([res.status, await res.json()]).toEqual([200, { object: 'upload', upload_id: id, deleted: true }]);
    expect(await h.blobs.head(uploadKey('acct_alice', id))).toBeNull();
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'apple', init: `upload:${id}` } }), 400, 'upload_not_found');
    expect(await (await del(id)).json()).toEqual({ object: 'upload', upload_id: id, deleted: false });
  });

  it("is refused while a queued or running generation uses it, and allowed once that one has ended; another account's id is none of the caller's", async () => {
    const id = await upload();
    const made = await h.request('/v1/generations', { json: { prompt: 'apple', init: `upload:${id}` } });
    expect(made.status).toBe(202);
    const { id: jobId } = (await made.json()) as { id: string };
    const e = await expectEnvelope(await del(id), 409, 'upload_in_use');
    expect([e.param, e.message]).toEqual(['id', expect.stringContaining(jobId)]);
    expect(await h.blobs.head(uploadKey('acct_alice', id))).not.toBeNull();
    await h.jobs.update('acct_alice', jobId, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: new Date().toISOString() }));
    await expectEnvelope(await del(id), 409, 'upload_in_use');

    // Bob cannot remove alice's upload by its id: it is none of his (deleted false), and hers stays.
    expect(await (await del(id, h.bob)).json()).toEqual({ object: 'upload', upload_id: id, deleted: false });
    expect(await h.blobs.head(uploadKey('acct_alice', id))).not.toBeNull();

    await h.jobs.update('acct_alice', jobId, (cur) => ({ ...cur, status: 'succeeded', finished_at: new Date().toISOString(), progress: { step: cur.progress.total, total: cur.progress.total } }));
    expect(((await (await del(id)).json()) as { deleted: boolean }).deleted).toBe(true);
    // Another upload of alice's, used by no generation, was never in the way.
    const other = await upload();
    expect((await del(other)).status).toBe(200);
  });

  it("a generation whose record a newer clipag wrote (a status this version does not know) may still use it: 503, retry (ADR 0030); the upload stays", async () => {
    const id = await upload();
    const made = (await (await h.request('/v1/generations', { json: { prompt: 'apple', init: `upload:${id}` } })).json()) as { id: string };
    const key = BlobJobStore.keyFor('acct_alice', made.id);
    const raw = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString());
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...raw, status: 'preempted' })));
    await expectEnvelope(await del(id), 503, 'unavailable');
    expect(await h.blobs.head(uploadKey('acct_alice', id))).not.toBeNull();
    // A newer record this version reads enough of (an unknown field only) is judged by what it reads: queued, so in use.
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...raw, priority: 'high' })));
    await expectEnvelope(await del(id), 409, 'upload_in_use');
  });

  it('refuses an id that is not one (400, param id) and other methods (405 with Allow)', async () => {
    const bad = await expectEnvelope(await del('not an id!'), 400, 'validation_error');
    expect(bad.param).toBe('id');
    const get = await h.request('/v1/uploads/upl0000000000000000000001');
    await expectEnvelope(get.clone(), 405, 'method_not_allowed');
    expect(get.headers.get('Allow')).toBe('DELETE');
    await expectEnvelope(await h.request('/v1/uploads/upl0000000000000000000001', { method: 'DELETE', key: null }), 401, 'unauthorized');
  });
});
