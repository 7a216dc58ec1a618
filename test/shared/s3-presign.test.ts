/**
 * S3BlobStore.signedGetUrl signs with one presigner per store on a request built once (review finding 2:
 * getSignedUrl ran the command's middleware stack and built a presigner for every link, 1–2 ms of CPU
 * each). The links must stay exactly what getSignedUrl gives for the same key, expiry and clock: these
 * compare them byte for byte, on the client configurations the deployment builds (real S3, an endpoint
 * with path-style addressing) and the SDK's defaults, for keys that need encoding.
 */
import { GetObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { S3BlobStore } from '../../shared/adapters/aws/s3-blobstore.ts';
import { s3ClientConfig } from '../../shared/adapters/stores.ts';
import { ValidationError } from '../../shared/errors.ts';

afterEach(() => {
  vi.useRealTimers();
});

let credentials = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', sessionToken: 'session/token+with=odd&chars' };

const CONFIGS: Array<[string, S3ClientConfig]> = [
  ['as deployed on AWS (virtual-hosted, eu-west-1)', { ...s3ClientConfig({ region: 'eu-west-1' }), credentials: async () => credentials }],
  ['as deployed with an S3 endpoint (path style, a port)', { ...s3ClientConfig({ region: 'us-east-1', s3Endpoint: 'http://127.0.0.1:4569' }), credentials: async () => credentials }],
  ['the SDK defaults, static credentials without a session token', { region: 'us-east-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } }],
  ['an endpoint with a base path', { region: 'ap-southeast-2', endpoint: 'https://storage.example.com/s3', forcePathStyle: true, credentials: async () => credentials }],
];

const BUCKETS = ['clipag-test-bucket', 'clipag.dotted.bucket'];

const KEYS = [
  'k',
  'outputs/acct_alice/gen_01jabcdefghjkmnpqrstvwxyz0/0.png',
  'outputs/acct_alice/gen_01jabcdefghjkmnpqrstvwxyz0/frames/3/step-0100-224x224.png',
  'a=b/c+d@e/f-g_h.i/..x/.y',
  'uploads/acct_bob/upl_X.Y=Z+@',
  `${'s'.repeat(200)}/${'t'.repeat(200)}/${'u'.repeat(200)}`,
];

describe('S3BlobStore.signedGetUrl', () => {
  for (const [name, config] of CONFIGS) {
    for (const bucket of BUCKETS) {
      it(`gives getSignedUrl's URL byte for byte: ${name}, bucket ${bucket}`, async () => {
        vi.useFakeTimers({ toFake: ['Date'] });
        const client = new S3Client(config);
        const clone = vi.spyOn(client.middlewareStack, 'clone');
        const store = new S3BlobStore({ client, bucket });
        const reference = new S3Client(config);
        for (const at of ['2025-03-04T05:06:07.891Z', '2025-03-04T23:59:59.999Z', '2025-03-05T00:00:00.000Z']) {
          vi.setSystemTime(new Date(at));
          for (const key of KEYS) {
            for (const expiresSec of [1, 3600, 7 * 24 * 3600]) {
              const expected = await getSignedUrl(reference, new GetObjectCommand({ Bucket: bucket, Key: key }), { expiresIn: expiresSec });
              expect(await store.signedGetUrl(key, expiresSec), `${at} ${key} ${expiresSec}`).toBe(expected);
            }
          }
        }
        expect(clone).toHaveBeenCalledTimes(1); // the reused request, not getSignedUrl on the store's client
      });
    }
  }

  it('signs with the credentials the provider gives now (temporary ones rotate), as getSignedUrl does', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2025-06-01T12:00:00Z'));
    // Near their expiry, so the client's credential memo asks the provider again on every use.
    let current = { accessKeyId: 'AKIDFIRST', secretAccessKey: 'first-secret', sessionToken: 'first-token', expiration: new Date(Date.now() + 60_000) };
    const client = new S3Client({ ...s3ClientConfig({ region: 'eu-west-1' }), credentials: async () => current });
    const store = new S3BlobStore({ client, bucket: 'clipag-test-bucket' });
    const key = 'outputs/acct_alice/gen_x/0.png';
    const reference = () => getSignedUrl(client, new GetObjectCommand({ Bucket: 'clipag-test-bucket', Key: key }), { expiresIn: 900 });
    const first = await store.signedGetUrl(key, 900);
    expect(first).toContain('AKIDFIRST');
    expect(first).toBe(await reference());
    current = { accessKeyId: 'AKIDROTATED', secretAccessKey: 'another-secret', sessionToken: 'another-token', expiration: new Date(Date.now() + 60_000) };
    const second = await store.signedGetUrl(key, 900);
    expect(second).toContain('AKIDROTATED');
    expect(second).toBe(await reference());
  });

  it("runs the client's middleware stack once per store, not once per link", async () => {
    const client = new S3Client(CONFIGS[0]![1]);
    const clone = vi.spyOn(client.middlewareStack, 'clone');
    const store = new S3BlobStore({ client, bucket: 'clipag-test-bucket' });
    const urls = await Promise.all(Array.from({ length: 20 }, (_, i) => store.signedGetUrl(`outputs/acct_alice/gen_x/${i}.png`, 3600)));
    expect(new Set(urls).size).toBe(20);
    expect(clone).toHaveBeenCalledTimes(1);
  });

  it('still validates the key and the expiry first', async () => {
    const store = new S3BlobStore({ client: new S3Client(CONFIGS[0]![1]), bucket: 'clipag-test-bucket' });
    await expect(store.signedGetUrl('../x', 60)).rejects.toThrow(/invalid blob key/);
    // The expiry's own refusal (a ValidationError naming its range), not any error on the way.
    await expect(store.signedGetUrl('k', 0)).rejects.toThrow(/expiresSec must be an integer in 1\.\.604800/);
    await expect(store.signedGetUrl('k', 7 * 24 * 3600 + 1)).rejects.toThrow(/expiresSec must be an integer in 1\.\.604800/);
    await expect(store.signedGetUrl('k', 0)).rejects.toBeInstanceOf(ValidationError);
  });
});
