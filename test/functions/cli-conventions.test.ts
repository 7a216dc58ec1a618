// The exit-code and message conventions of the command line (a CLI review): a usage error goes to
// stderr with exit 2 and names what is wrong; what was asked for (--help) goes to stdout with exit 0.
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { REPO_ROOT, closestOption, parseCliArgs, sizeShape } from '../../cli/common.ts';
import { main } from '../../cli/main.ts';
import { run as keys } from '../../cli/keys.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';

async function capture(fn: () => Promise<number>): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  try {
    return { code: await fn(), stdout: out.join('\n'), stderr: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
}

describe('clipag with no verb, and --help', () => {
  it('no verb: what is wrong, then the verb list, on stderr, exit 2 (a usage error)', async () => {
    const r = await capture(() => main([]));
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^clipag: give a verb\n\nusage: clipag <verb> \[options\]/);
    expect(r.stderr).toContain('  serve ');
  });

  it.each([['--version'], ['-v']])('%s: the package version on stdout, exit 0; --help says so', async (flag) => {
    const r = await capture(() => main([flag]));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`clipag ${JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')).version}`);
    expect((await capture(() => main(['--help']))).stdout).toMatch(/clipag --version \(or -v\) prints the version/);
  });

  it.each([['--help'], ['-h'], ['help']])('%s: the verb list on stdout, exit 0', async (flag) => {
    const r = await capture(() => main([flag]));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^usage: clipag <verb> \[options\]/);
  });
});

describe('an unknown verb', () => {
  it('is a wrong command line: what was wrong, then the verb list, on stderr, exit 2', async () => {
    const r = await capture(() => main(['bogusverb']));
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^clipag: unknown verb "bogusverb"\n\nusage: clipag <verb> \[options\]\n {7}clipag --version\n\nverbs:\n/);
    expect(r.stderr).toContain('  serve ');
    expect(r.stderr).toContain('  remote ');
  });

  it('a typo of a verb is told the verb (the new-user review)', async () => {
    const r = await capture(() => main(['generat', 'a red circle']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag: unknown verb "generat" \(did you mean generate\?\)\n\nusage: clipag <verb>/);
  });
});

describe("serve's --data given to an operator verb (the new-user review)", () => {
  it('is told where those verbs read the folder from', async () => {
    const r = await capture(() => main(['keys', 'create', '--name', 'acme', '--data', '/tmp/x']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag keys: unknown option --data: this command reads the data folder from CLIPAG_DATA_DIR \(serve's --data\), as in CLIPAG_DATA_DIR=DIR clipag keys create --name NAME\n/);
  });
});

describe('options npm took for itself (npm run clipag generate … --steps 3, without the --)', () => {
  // npm leaves them in the environment as npm_config_<name> and hands the verb their values as stray arguments.
  const asNpm = (env: Record<string, string>) => {
    for (const [k, v] of Object.entries(env)) vi.stubEnv(k, v);
  };
  afterEach(() => vi.unstubAllEnvs());

  it('the verb says what it saw, then which of its options npm took and where the -- goes; exit 2', async () => {
    asNpm({ npm_lifecycle_event: 'clipag', npm_config_steps: 'true', npm_config_o: 'true', npm_config_yes: '', npm_config_cache: '/root/.npm' });
    const r = await capture(() => main(['generate', 'a', 'red', 'circle', '3', 'x.png']));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'clipag generate: give exactly one prompt, in quotes: clipag generate "a large red circle on the left"\n' +
        'npm took --steps, -o for itself: npm passes options on only after --, so write npm run clipag -- <verb> … (as in: npm run clipag -- generate "a red circle" --steps 3)',
    );
  });

  it('npm start --port 8788: serve is told npm start -- --port', async () => {
    asNpm({ npm_lifecycle_event: 'start', npm_config_port: 'true' });
    const r = await capture(() => main(['serve', '8788']));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('npm took --port for itself: npm passes options on only after --, so write npm start -- … (as in: npm start -- --port 8788)');
  });

  it("outside npm's clipag and start scripts, or with none of the verb's options taken, the usage error is as before", async () => {
    asNpm({ npm_config_steps: 'true' });
    vi.stubEnv('npm_lifecycle_event', undefined);
    expect((await capture(() => main(['generate', 'a', 'b']))).stderr).not.toContain('npm took');
    asNpm({ npm_lifecycle_event: 'test' });
    expect((await capture(() => main(['generate', 'a', 'b']))).stderr).not.toContain('npm took');
    vi.unstubAllEnvs();
    asNpm({ npm_lifecycle_event: 'clipag', npm_config_registry: 'https://registry.npmjs.org/' });
    expect((await capture(() => main(['generate', 'a', 'b']))).stderr).not.toContain('npm took');
  });
});

describe('clipag --help', () => {
  it("names every action of remote in its line, batch included", async () => {
    const r = await capture(() => main(['--help']));
    const line = r.stdout.split('\n').find((l) => l.startsWith('  remote '));
    for (const action of ['generate', 'get', 'cancel', 'list', 'redeliver', 'run a batch file', 'webhook secret']) expect(line, action).toContain(action);
  });
});

describe('a flag whose value is out of its range is a usage error: exit 2, the flag and its range named, the usage shown', () => {
  it.each([
    [['generate', 'a red circle', '--size', '17x17'], /^clipag generate: --size 17x17: each side must be a multiple of 8 in \[16, 2048\]\n\nusage: clipag generate/],
    [['generate', 'a red circle', '--size', '2048x2048'], /^clipag generate: --size 2048x2048 is 4194304 pixels; the limit is 1048576\n\nusage: clipag generate/],
    [['generate', 'a red circle', '--steps', '0'], /^clipag generate: --steps must be an integer in \[1, 1000\], got "0"\n\nusage: clipag generate/],
    [['generate', 'a red circle', '--seed', '4294967296'], /^clipag generate: --seed must be an integer in \[0, 4294967295\], got "4294967296"\n\nusage: clipag generate/],
    [['generate', 'a red circle', '--views', '0,0'], /^clipag generate: --views 0,0: each count at most 256, and at least one view\n\nusage: clipag generate/],
    [['serve', '--port', 'abc'], /^clipag serve: --port must be an integer in \[1, 65535\], got "abc"\n\nusage: clipag serve/],
    [['serve', '--port', '70000'], /^clipag serve: --port must be an integer in \[1, 65535\], got "70000"\n\nusage: clipag serve/],
    [['serve', '--steps', '0'], /^clipag serve: --steps must be an integer in \[1, 1000\], got "0"\n\nusage: clipag serve/],
  ])('%j', async (argv, message) => {
    // A model that does not exist and a data folder never made: the flag is refused before either is reached.
    const extra = argv[0] === 'generate' ? ['--model', '/nonexistent-clipag/model', '-o', '/tmp/clipag-never.png'] : ['--data', '/nonexistent-clipag/data'];
    const r = await capture(() => main([...argv, ...extra]));
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toContain('[invalid_input]');
    expect(r.stderr).not.toMatch(/PORT:/); // the flag given, not the variable it would become
  });
});

describe('the README\'s verb table and the verbs\' help list the same flags', () => {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Command line'), readme.indexOf('## Engine API'));
  const spans = [...section.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
  const inReadme = (start: string) => {
    // The table's cell: the longest span that names the verb (the prose names some bare).
    const span = spans.filter((s) => s === start || s.startsWith(`${start} `)).sort((a, b) => b.length - a.length)[0];
    expect(span, `README: \`${start} …\``).toBeDefined();
    return span!;
  };
  const flagsOf = (text: string) => [...new Set(text.match(/(?<![\w-])--?[a-z][a-z-]*/g) ?? [])].sort();
  /** A help's usage lines (up to the first blank line), each action's continuation lines joined to it. */
  const usageLines = (usage: string, prefix: string) =>
    usage
      .slice(0, usage.indexOf('\n\n'))
      .replace(/^usage: /, '')
      .split(/\n\s+(?=clipag |each )/)
      .map((l) => l.replace(/\s+/g, ' ').trim())
      .filter((l) => l.startsWith(prefix));

  it('serve', async () => {
    const { usage } = await import('../../cli/serve.ts');
    const [line] = usageLines(usage, 'clipag serve');
    expect(flagsOf(inReadme('serve'))).toEqual(flagsOf(line!));
    expect(flagsOf(line!)).toEqual(['--data', '--port', '--steps']);
  });

  it('remote generate, get, cancel and batch (and --url, --key for each)', async () => {
    const { usage } = await import('../../cli/remote.ts');
    for (const action of ['generate', 'get', 'cancel', 'batch']) {
      const [line] = usageLines(usage, `clipag remote ${action} `);
      expect(line, action).toBeDefined();
      expect(flagsOf(inReadme(`remote ${action}`)), action).toEqual(flagsOf(line!));
    }
    expect(usageLines(usage, 'each ')[0]).toContain('[--url URL] [--key KEY]');
    expect(section).toContain('each `[--url URL] [--key KEY]`');
  });

  it('generate: the README lists every option its help describes', async () => {
    const { usage } = await import('../../cli/generate.ts');
    const options = usage.split('\n').filter((l) => /^ {2}-/.test(l)).map((l) => l.trim().split(/\s{2,}/)[0]!);
    expect(flagsOf(inReadme('generate'))).toEqual(flagsOf(options.join(' ')).filter((f) => f !== '--out'));
  });
});

describe('clipag models list', () => {
  it('an extra argument is a usage error: exit 2, the usage shown', async () => {
    const r = await capture(() => main(['models', 'list', 'extra']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag models: models list takes no arguments, got "extra"\n\nusage: clipag models/);
    expect(r.stderr).not.toContain('[invalid_input]');
  });
});

describe('clipag keys create --name', () => {
  let dir: string;
  let store: BlobApiKeyStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-conv-'));
    store = new BlobApiKeyStore(new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' }));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('a name over 100 characters: said of --name (not "invalid API key"), exit 2, nothing stored', async () => {
    const r = await capture(() => keys(['create', '--name', 'n'.repeat(101)], store, () => undefined));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag keys: --name must be at most 100 characters \(got 101\)\n\nusage: clipag keys/);
    expect(r.stderr).not.toMatch(/API key:/);
    expect(await store.list()).toEqual([]);
  });

  it('a name of exactly 100 characters (after trimming) is taken', async () => {
    const r = await capture(() => keys(['create', '--name', ` ${'n'.repeat(100)} `, '--json'], store, (l) => console.log(l)));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).name).toBe('n'.repeat(100));
  });
});

describe('the command line as every verb parses it (parseCliArgs): mistakes are usage errors that say what to do', () => {
  // A model and a data folder that do not exist: the command line is refused before either is reached.
  const NO_MODEL = ['--model', '/nonexistent-clipag/model', '-o', '/tmp/clipag-never.png'];
  it.each([
    [['generate', 'a red circle', '--stepz', '5', ...NO_MODEL], /^clipag generate: unknown option --stepz \(did you mean --steps\?\)\n\nusage: clipag generate/],
    [['generate', 'a red circle', '--neg', 'blue', ...NO_MODEL], /^clipag generate: unknown option --neg \(did you mean --negative\?\)/],
    [['generate', 'a red circle', '--seed', '-1', ...NO_MODEL], /^clipag generate: --seed must be an integer in \[0, 4294967295\], got "-1"\n\nusage/],
    [['generate', 'a red circle', '--views', '-1,2', ...NO_MODEL], /^clipag generate: --views must look like 32,32, got "-1,2"/],
    [['generate', 'a red circle', '--steps', '--seed', '1', ...NO_MODEL], /^clipag generate: --steps needs a value \(a value that starts with "-" is written --steps=-…\)/],
    [['generate', 'a red circle', '--model', '/nonexistent-clipag/model', '-o=/tmp/clipag-never.png'], /^clipag generate: -o=\/tmp\/clipag-never\.png: a short option takes its value after a space: write -o \/tmp\/clipag-never\.png or --out=\/tmp\/clipag-never\.png\n\nusage/],
    [['generate', 'a red circle', '--steps', '3', '--steps', '4', ...NO_MODEL], /^clipag generate: --steps given twice \(3, 4\); give it once\n\nusage/],
    [['generate', 'a red circle', '-o', 'a.png', '--out', 'b.png', '--model', '/nonexistent-clipag/model'], /^clipag generate: --out given twice \(a\.png, b\.png\)/],
    [['serve', '--port', '-1', '--data', '/nonexistent-clipag/data'], /^clipag serve: --port must be an integer in \[1, 65535\], got "-1"/],
    [['serve', '--prot', '8080'], /^clipag serve: unknown option --prot \(did you mean --port\?\)/],
    [['embed', '--txt', 'a'], /^clipag embed: unknown option --txt \(did you mean --text\?\)/],
    [['dlq', 'list', '--limt', '3'], /^clipag dlq: unknown option --limt/],
  ])('%j', async (argv, message) => {
    const r = await capture(() => main(argv));
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/Unknown option '|is ambiguous|\[invalid_input\]/);
  });

  it('a flag declared repeatable (--negative) may repeat: the run goes on to the model', async () => {
    const r = await capture(() => main(['generate', 'a red circle', '--negative', 'blue', '--negative', 'green', ...NO_MODEL]));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model bundle \/nonexistent-clipag\/model does not exist/);
  });

  it('returns what parseArgs returns; tokens index the caller\'s argv, a negative value read as a value in the next argument', () => {
    const argv = ['x', '--seed', '-1', '-n', '-2', '--json', '--', '-3'];
    const r = parseCliArgs({ args: argv, allowPositionals: true, tokens: true, options: { seed: { type: 'string' }, n: { type: 'string', short: 'n' }, json: { type: 'boolean' } } });
    expect(r.values).toEqual({ seed: '-1', n: '-2', json: true });
    expect(r.positionals).toEqual(['x', '-3']);
    expect(r.tokens!.map((t) => [t.kind, t.index, 'inlineValue' in t ? t.inlineValue : null])).toEqual([
      ['positional', 0, null], ['option', 1, false], ['option', 3, false], ['option', 5, undefined], ['option-terminator', 6, null], ['positional', 7, null],
    ]);
    expect('tokens' in parseCliArgs({ args: ['--seed', '1'], options: { seed: { type: 'string' } } })).toBe(false);
  });

  it('did you mean: a near name or a prefix, nothing for a far one', () => {
    expect(closestOption('--stepz', ['steps', 'seed', 'size'])).toBe('steps');
    expect(closestOption('--neg', ['negative', 'model'])).toBe('negative');
    expect(closestOption('--frobnicate', ['steps', 'seed'])).toBeUndefined();
  });
});

describe('--size: WxH, WXH, or one side for a square (as the API takes a width or a height alone)', () => {
  it('parses the shape; the verb checks the range', () => {
    expect(sizeShape('64')).toEqual([64, 64]);
    expect(sizeShape('64X32')).toEqual([64, 32]);
    expect(sizeShape('64x32')).toEqual([64, 32]);
    expect(() => sizeShape('64x')).toThrow(/--size must look like 512x384 \(or 512 for a square\), got "64x"/);
  });

  it.each([['64'], ['64X64']])('generate --size %s is taken (the run goes on to the model)', async (size) => {
    const r = await capture(() => main(['generate', 'a red circle', '--size', size, '--model', '/nonexistent-clipag/model', '-o', '/tmp/clipag-never.png']));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model bundle \/nonexistent-clipag\/model does not exist/);
  });

  it('generate --size 12: the range, said of the square', async () => {
    const r = await capture(() => main(['generate', 'a red circle', '--size', '12', '--model', '/nonexistent-clipag/model']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag generate: --size 12: each side must be a multiple of 8 in \[16, 2048\]/);
  });
});

describe('an empty or blank prompt is a usage error (exit 2), as a missing one is', () => {
  it.each([[['generate', '']], [['generate', '   ']], [['embed', '--text', '']], [['embed', '--text', ' \t']]])('%j', async (argv) => {
    const r = await capture(() => main([...argv, '--model', '/nonexistent-clipag/model']));
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^clipag (generate: the prompt is empty|embed: --text is empty)\n\nusage: clipag/);
  });
});

describe('generate: a prompt the content policy refuses', () => {
  it('is tagged with the API\'s code, content_policy, exit 1', async () => {
    const r = await capture(() => main(['generate', 'pikachu on a hill', ...NO_MODEL_FLAGS]));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^clipag generate: refused by the content policy \(copyright, rule protected-characters\): "pikachu" .* \[content_policy\]$/);
  });

  it('with --json: the refusal as a JSON object on stdout too ({output: null, error: {code, message}})', async () => {
    const r = await capture(() => main(['generate', 'pikachu on a hill', '--json', ...NO_MODEL_FLAGS]));
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ output: null, prompt: 'pikachu on a hill', error: { code: 'content_policy', rule: 'protected-characters', category: 'copyright', message: expect.stringMatching(/^refused by the content policy/) } });
  });
});

describe('generate: small messages', () => {
  it('-o "": said to be empty (exit 2), not "is a folder"', async () => {
    const r = await capture(() => main(['generate', 'a red circle', '-o', '', '--model', '/nonexistent-clipag/model']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag generate: -o is empty; give a file name/);
  });

  it('--init with a typo: what --init takes', async () => {
    const r = await capture(() => main(['generate', 'a red circle', '--init', 'gnm', ...NO_MODEL_FLAGS]));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read init image gnm: ENOENT.*\(--init takes gmm, noise or a PNG or JPEG file\) \[invalid_input\]/);
  });

  it('--model NAME (an API model name) points at the models folder\'s bundle of that name', async () => {
    const r = await capture(() => main(['generate', 'a red circle', '--model', 'toy-plain', '-o', '/tmp/clipag-never.png']));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/does not exist; --model takes a folder: for the model named toy-plain, pass --model \S*models\/toy-plain \[invalid_model\]/);
  });
});

const NO_MODEL_FLAGS = ['--model', '/nonexistent-clipag/model', '-o', '/tmp/clipag-never.png'];

describe('clipag models: the first thing to fix is said first', () => {
  it('push of a judge bundle: named as another kind of bundle (as generate --model says), not a tokenizer complaint', async () => {
    const r = await capture(() => main(['models', 'push', join(REPO_ROOT, 'models', 'toy-judge'), '--name', 'judge']));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/manifest\.json is a "clipag-toy-judge" bundle, not a CLIP model bundle/);
    expect(r.stderr).not.toMatch(/"tokenizer" must name a file/);
  });

  it('import of a source file that does not exist, without --vocab: the missing file, not the missing tokenizer', async () => {
    const r = await capture(() => main(['models', 'import', '/nonexistent-clipag/nope.pt', '-o', '/nonexistent-clipag/out']));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^clipag models: models import: SRC \/nonexistent-clipag\/nope\.pt does not exist \[invalid_input\]/);
  });
});
