import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.ts';
import { ConfigError } from '../../shared/errors.ts';
import { MAX_IMAGE_FILE_BYTES } from '../../shared/image-header.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { resolveInit, type SynthesisJob } from '../../gpu-worker/worker/synthesizer.ts';
import { pngChunk } from '../helpers/png.ts';

describe('parseConfig', () => {
  it('defaults to local mode with working values', () => {
    const config = parseConfig({});
    expect(config).toMatchObject({ mode: 'local', dataDir: '.data', port: 8787, visibilityTimeoutSec: 60, maxReceives: 3 });
  });

  it('parses a full aws config, coercing numbers and trimming URLs', () => {
    const config = parseConfig({
      CLIPAG_MODE: 'aws',
      AWS_REGION: 'eu-west-1',
      CLIPAG_BUCKET: 'clipag-prod-outputs',
      CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs/',
      CLIPAG_DLQ_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs-dlq',
      CLIPAG_VISIBILITY_TIMEOUT_SEC: '300',
      CLIPAG_PUBLIC_BASE_URL: 'https://api.example.com/',
    });
    expect(config).toMatchObject({
      mode: 'aws',
      region: 'eu-west-1',
      queueUrl: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs',
      visibilityTimeoutSec: 300,
      publicBaseUrl: 'https://api.example.com',
    });
  });

  it('retries a failed job at once locally and after 30 s × its receive count in AWS; an AWS job timeout fits in SQS\'s 12 h of hiding', () => {
    const aws = {
      CLIPAG_MODE: 'aws',
      AWS_REGION: 'eu-west-1',
      CLIPAG_BUCKET: 'clipag-prod-outputs',
      CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs',
      CLIPAG_VISIBILITY_TIMEOUT_SEC: '300',
    };
    expect(parseConfig({}).retryDelaySec).toBe(2);
    expect(parseConfig(aws).retryDelaySec).toBe(30);
    expect(parseConfig({ ...aws, CLIPAG_RETRY_DELAY_SEC: '5' }).retryDelaySec).toBe(5);
    expect(() => parseConfig({ ...aws, CLIPAG_RETRY_DELAY_SEC: '901' })).toThrow(/CLIPAG_RETRY_DELAY_SEC/);
    expect(parseConfig({ ...aws, CLIPAG_JOB_TIMEOUT_SEC: String(43_200 - 300) }).jobTimeoutSec).toBe(42_900);
    expect(() => parseConfig({ ...aws, CLIPAG_JOB_TIMEOUT_SEC: String(43_200 - 299) })).toThrow(/CLIPAG_JOB_TIMEOUT_SEC: with CLIPAG_VISIBILITY_TIMEOUT_SEC, must not exceed 43200 s/);
    // The local queue has no such limit.
    expect(parseConfig({ CLIPAG_JOB_TIMEOUT_SEC: String(24 * 3600) }).jobTimeoutSec).toBe(86_400);
  });

  it('the worker may drop weight prepacking (CLIPAG_DISABLE_PREPACKING), off by default; the wait cap defaults to 60 s', () => {
    expect(parseConfig({}).disablePrepacking).toBe(false);
    expect(parseConfig({ CLIPAG_DISABLE_PREPACKING: 'true' }).disablePrepacking).toBe(true);
    expect(() => parseConfig({ CLIPAG_DISABLE_PREPACKING: 'yes' })).toThrow(/CLIPAG_DISABLE_PREPACKING/);
    expect(parseConfig({}).maxWaitSec).toBe(60);
    expect(() => parseConfig({ CLIPAG_MAX_WAIT_SEC: '901' })).toThrow(/CLIPAG_MAX_WAIT_SEC/);
  });

  it('local mode allows webhooks to private addresses by default only while it listens on loopback', () => {
    expect(parseConfig({}).webhookAllowPrivate).toBe(true);
    expect(parseConfig({ CLIPAG_HOST: '::1' }).webhookAllowPrivate).toBe(true);
    expect(parseConfig({ CLIPAG_HOST: '0.0.0.0' }).webhookAllowPrivate).toBe(false);
    expect(parseConfig({ CLIPAG_HOST: '192.168.1.20' }).webhookAllowPrivate).toBe(false);
    expect(parseConfig({ CLIPAG_HOST: '0.0.0.0', CLIPAG_WEBHOOK_ALLOW_PRIVATE: 'true' }).webhookAllowPrivate).toBe(true); // said outright
  });

  it('fails fast listing every problem, naming the variables and hiding secrets', () => {
    let error: unknown;
    try {
      parseConfig({ CLIPAG_MODE: 'aws', PORT: 'eighty', CLIPAG_QUEUE_URL: 'ftp://x', CLIPAG_MAX_RECEIVES: '0' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.join('\n');
    for (const name of ['AWS_REGION', 'CLIPAG_BUCKET', 'CLIPAG_QUEUE_URL', 'PORT', 'CLIPAG_MAX_RECEIVES']) expect(problems).toContain(name);
    expect((error as ConfigError).problems).toHaveLength(5);

    expect(() => parseConfig({ CLIPAG_SIGNING_SECRET: 'short-secret-value' })).toThrow(/CLIPAG_SIGNING_SECRET/);
    try {
      parseConfig({ CLIPAG_SIGNING_SECRET: 'short-secret-value' });
    } catch (e) {
      expect((e as Error).message).not.toContain('short-secret-value');
    }
    expect(() => parseConfig({ CLIPAG_MODE: 'gcp' })).toThrow(ConfigError);
  });
});

describe('CLIPAG_MAX_UPLOAD_BYTES and the worker use one limit', () => {
  // It went up to 100 MiB while the worker decodes at most 32 MiB: every upload between the two was
  // taken by the API (202) and failed every job that named it.
  it('above the worker\'s decode limit is a config error that says the limit', () => {
    expect(MAX_IMAGE_FILE_BYTES).toBe(32 * 1024 * 1024);
    for (const over of [MAX_IMAGE_FILE_BYTES + 1, 64 * 1024 * 1024, 100 * 1024 * 1024]) {
      expect(() => parseConfig({ CLIPAG_MAX_UPLOAD_BYTES: String(over) })).toThrow(/CLIPAG_MAX_UPLOAD_BYTES: must be an integer in \[1, 33554432\]: 32 MiB is the largest init image the worker decodes/);
    }
    expect(parseConfig({}).maxUploadBytes).toBe(10 * 1024 * 1024);
    expect(parseConfig({ CLIPAG_MAX_UPLOAD_BYTES: String(MAX_IMAGE_FILE_BYTES) }).maxUploadBytes).toBe(MAX_IMAGE_FILE_BYTES);
  });

  it('an upload of the largest size the config allows is decoded by the worker\'s resolveInit', async () => {
    const max = parseConfig({ CLIPAG_MAX_UPLOAD_BYTES: String(MAX_IMAGE_FILE_BYTES) }).maxUploadBytes;
    const png = encodePng(solidImage(2, 2, [1, 0, 0]));
    // Padded to exactly `max` bytes with an ancillary chunk before IEND (its 12 bytes of framing included).
    const pad = pngChunk('zzPd', new Uint8Array(max - png.length - 12));
    const body = Buffer.concat([png.subarray(0, png.length - 12), pad, png.subarray(png.length - 12)]);
    expect(body.length).toBe(max);
    const blobs = { get: async () => ({ body }) } as unknown as BlobStore;
    const job = { id: 'j', owner: 'o', spec: { init: 'upload:u1', strength: 0.5 } } as unknown as SynthesisJob;
    const init = await resolveInit(job, blobs);
    expect(init).toMatchObject({ kind: 'image', strength: 0.5, image: { width: 2, height: 2 } });
  });
});
