/**
 * Settings as an operator types them: numbers in decimal with their range said, a base URL links can be
 * made under, typos of a setting's name said at start (not silently ignored), and operator verbs that
 * refuse to write to the local data folder while the shell names a deployment (config review, 2026-12-07).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { run as keysCli } from '../../cli/keys.ts';
import { ENV_VARS, operatorConfig, parseConfig, settingWarnings, storeDescription } from '../../shared/config.ts';
import { ConfigError } from '../../shared/errors.ts';

describe('numbers in settings', () => {
  it('take decimal digits only, and a refusal names the range', () => {
    for (const [name, value, range] of [
      ['PORT', '0x1f90', '[1, 65535]'], ['PORT', '8e3', '[1, 65535]'], ['PORT', '-1', '[1, 65535]'], ['PORT', '1.5', '[1, 65535]'],
      ['PORT', '99999999999999999999', '[1, 65535]'], ['CLIPAG_OUTPUT_RETENTION_DAYS', '0b11', '[1, 3650]'], ['CLIPAG_OUTPUT_RETENTION_DAYS', '1e1', '[1, 3650]'],
      ['CLIPAG_MAX_WAIT_SEC', '901', '[0, 900]'], ['CLIPAG_DEFAULT_MODEL_INPUT_SIZE', '0', '[1, 4096]'],
    ] as const) {
      expect(() => parseConfig({ [name]: value }), `${name}=${value}`).toThrow(`${name}: must be an integer in ${range} (got "${value}")`);
    }
    expect(parseConfig({ PORT: ' 8080 ', CLIPAG_OUTPUT_RETENTION_DAYS: '7', CLIPAG_MAX_WAIT_SEC: '0' })).toMatchObject({ port: 8080, outputRetentionDays: 7, maxWaitSec: 0 });
    expect(parseConfig({})).toMatchObject({ port: 8787, maxWaitSec: 60, receiveWaitSec: 20 });
    expect(parseConfig({}).outputRetentionDays).toBeUndefined();
  });

  it('a price is decimal dollars', () => {
    expect(parseConfig({ CLIPAG_WORKER_HOURLY_USD: '2.5' }).workerHourlyUsd).toBe(2.5);
    expect(parseConfig({ CLIPAG_WORKER_HOURLY_USD: '0' }).workerHourlyUsd).toBe(0);
    // Any number of decimals: AWS's price lists write 1.0060000000; a computed price has 17.
    for (const [given, read] of [['1.0060000000', 1.006], [String(0.1 + 0.2), 0.1 + 0.2], ['.5', 0.5], ['2.', 2]] as const) {
      expect(parseConfig({ CLIPAG_WORKER_HOURLY_USD: given }).workerHourlyUsd, given).toBe(read);
    }
    for (const bad of ['0x1', '1e2', '-1', '1000.5', '$2', '.', '1.2.3']) {
      expect(() => parseConfig({ CLIPAG_WORKER_HOURLY_USD: bad }), bad).toThrow(`CLIPAG_WORKER_HOURLY_USD: must be a decimal number of dollars in [0, 1000], such as 2.5 (got "${bad}")`);
    }
  });
});

describe('CLIPAG_PUBLIC_BASE_URL', () => {
  it('refuses a query or fragment, which would swallow the paths of the links made under it', () => {
    for (const bad of ['https://files.example.com/?x=1', 'https://files.example.com/#top']) {
      expect(() => parseConfig({ CLIPAG_PUBLIC_BASE_URL: bad })).toThrow(/CLIPAG_PUBLIC_BASE_URL: must have no query/);
    }
    expect(parseConfig({ CLIPAG_PUBLIC_BASE_URL: 'https://files.example.com/clipag/' }).publicBaseUrl).toBe('https://files.example.com/clipag');
  });
});

describe('settingWarnings', () => {
  it('names a CLIPAG_ name that is no setting, with the closest setting; ours and the shell\'s are not warned about', () => {
    expect(settingWarnings({ CLIPAG_OUTPUT_RETENTON_DAYS: '7', CLIPAG_KEY: 'ck_x', CLIPAG: 'http://127.0.0.1:8787', CLIPAG_STAGE: 'dev', CLIPAG_API_URL: 'x', CLIPAG_API_KEY: 'y', PATH: '/bin', CLIPAG_STOP_TIMEOUT_SEC: '120' })).toEqual([
      'CLIPAG_OUTPUT_RETENTON_DAYS is not a clipag setting (did you mean CLIPAG_OUTPUT_RETENTION_DAYS?); ignored',
    ]);
    expect(settingWarnings({ CLIPAG_JOB_TIMEOUT_SECS: '600', clipag_max_active_jobs: '5', CLIPAG_FROBNICATE: '1' }, 'linux')).toEqual([
      'CLIPAG_FROBNICATE is not a clipag setting; ignored',
      'CLIPAG_JOB_TIMEOUT_SECS is not a clipag setting (did you mean CLIPAG_JOB_TIMEOUT_SEC?); ignored',
      'clipag_max_active_jobs is not a clipag setting (did you mean CLIPAG_MAX_ACTIVE_JOBS?); ignored',
    ]);
    // On Windows the environment is case-insensitive: a lower-case setting is read, so it is no misspelling there.
    expect(settingWarnings({ CLIPAG_JOB_TIMEOUT_SECS: '600', clipag_max_active_jobs: '5', Clipag_Api_Key: 'k', clipag_frobnicate: '1' }, 'win32')).toEqual([
      'CLIPAG_JOB_TIMEOUT_SECS is not a clipag setting (did you mean CLIPAG_JOB_TIMEOUT_SEC?); ignored',
      'clipag_frobnicate is not a clipag setting; ignored',
    ]);
    // No setting is warned about (the AWS-only ones are said apart, in local mode).
    const every = Object.fromEntries(Object.keys(ENV_VARS).map((name) => [name, 'x']));
    expect(settingWarnings({ ...every, CLIPAG_MODE: 'aws' })).toEqual([]);
  });

  it('says that AWS-only settings are ignored in local mode, and not in AWS mode', () => {
    expect(settingWarnings({ CLIPAG_BUCKET: 'b', CLIPAG_QUEUE_URL: 'https://q' })).toEqual(['CLIPAG_BUCKET, CLIPAG_QUEUE_URL are set, but CLIPAG_MODE is not aws: the local store is used and they are ignored']);
    expect(settingWarnings({ CLIPAG_MODE: 'aws', CLIPAG_BUCKET: 'b', CLIPAG_QUEUE_URL: 'https://q' })).toEqual([]);
    expect(settingWarnings({ CLIPAG_BUCKET: '  ' })).toEqual([]);
  });
});

describe('operator verbs', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('refuse AWS-only settings without CLIPAG_MODE=aws, naming the fix; pass other warnings on', () => {
    const warned: string[] = [];
    expect(() => operatorConfig({ AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-prod', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q' }, (l) => warned.push(l))).toThrow(ConfigError);
    expect(() => operatorConfig({ CLIPAG_BUCKET: 'clipag-prod' }, () => {})).toThrow('CLIPAG_MODE: is not aws, yet CLIPAG_BUCKET is set: set CLIPAG_MODE=aws to work on that deployment, or unset it to work on the local data folder');
    const config = operatorConfig({ CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-prod', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q', CLIPAG_WORKER_HOURLY_USDD: '2' }, (l) => warned.push(l));
    expect(storeDescription(config)).toBe('s3://clipag-prod');
    expect(warned).toEqual(['CLIPAG_WORKER_HOURLY_USDD is not a clipag setting (did you mean CLIPAG_WORKER_HOURLY_USD?); ignored']);
  });

  it('keys create says which store the key went to', async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-settings-'));
    const saved = process.env.CLIPAG_DATA_DIR;
    process.env.CLIPAG_DATA_DIR = dir;
    try {
      const lines: string[] = [];
      expect(await keysCli(['create', '--name', 'acme'], undefined, (l) => lines.push(l))).toBe(0);
      expect(lines).toContain(`store:   the local data folder ${dir}`);
      const json: string[] = [];
      expect(await keysCli(['create', '--name', 'acme', '--json'], undefined, (l) => json.push(l))).toBe(0);
      expect(JSON.parse(json[0]!)).toMatchObject({ store: `the local data folder ${dir}` });
      // A folder that did not exist (a typo, or the server runs with --data elsewhere) is said to be new.
      process.env.CLIPAG_DATA_DIR = join(dir, 'not-yet');
      const fresh: string[] = [];
      expect(await keysCli(['create', '--name', 'acme'], undefined, (l) => fresh.push(l))).toBe(0);
      expect(fresh).toContain(`store:   the local data folder ${join(dir, 'not-yet')} (new: no clipag serve has used it; a server started with another --data or CLIPAG_DATA_DIR does not accept keys made here)`);
    } finally {
      if (saved === undefined) delete process.env.CLIPAG_DATA_DIR;
      else process.env.CLIPAG_DATA_DIR = saved;
    }
  });
});
