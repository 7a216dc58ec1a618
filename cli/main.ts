// Verb dispatch. Each verb module exports `run(argv): Promise<number>` (the exit code) and `usage`.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isEngineError } from '../gpu-worker/engine/errors.ts';
import { closestName } from '../shared/did-you-mean.ts';
import { REPO_ROOT, UsageError } from './common.ts';

type Verb = { run(argv: string[]): Promise<number>; usage: string; summary: string };

const VERBS: Record<string, () => Promise<Verb>> = {
  embed: () => import('./embed.ts'),
  gradcheck: () => import('./gradcheck.ts'),
  generate: () => import('./generate.ts'),
  remote: () => import('./remote.ts'),
  screen: () => import('./screen.ts'),
  serve: () => import('./serve.ts'),
  keys: () => import('./keys.ts'),
  policy: () => import('./policy.ts'),
  usage: () => import('./usage.ts'),
  dlq: () => import('./dlq.ts'),
  models: () => import('./models.ts'),
  prior: () => import('./prior.ts'),
  'train-toy': () => import('./train-toy.ts'),
  'train-judge': () => import('./train-judge.ts'),
  'eval-pag': () => import('./eval-pag.ts'),
};

/** The top-level usage: the verbs, each with its summary. */
async function verbList(): Promise<string> {
  const lines = await Promise.all(Object.entries(VERBS).map(async ([name, load]) => `  ${name.padEnd(12)} ${(await load()).summary}`));
  return `usage: clipag <verb> [options]\n       clipag --version\n\nverbs:\n${lines.join('\n')}\n\nclipag <verb> --help shows a verb's options; clipag --version (or -v) prints the version.`;
}

/** The package's version, from package.json. */
function version(): string {
  return (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

export async function main(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === '--version' || verb === '-v') {
    console.log(`clipag ${version()}`);
    return 0;
  }
  if (!verb || verb === '--help' || verb === '-h' || verb === 'help') {
    const text = await verbList();
    // Asked for (--help, -h, help): the answer, on stdout, exit 0. No verb at all is a usage error:
    // what is wrong, then the usage, on stderr, exit 2, as every verb's usage error is (stdout stays
    // for what a command produces).
    if (verb) console.log(text);
    else console.error(`clipag: give a verb\n\n${text}`);
    return verb ? 0 : 2;
  }
  const load = VERBS[verb];
  if (!load) {
    // A wrong command line: the usage, as for no verb, after what was wrong.
    const near = closestName(verb, Object.keys(VERBS));
    console.error(`clipag: unknown verb "${verb}"${near ? ` (did you mean ${near}?)` : ''}\n\n${await verbList()}`);
    return 2;
  }
  const mod = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(mod.usage);
    return 0;
  }
  try {
    return await mod.run(rest);
  } catch (e) {
    if (isEngineError(e)) {
      console.error(`clipag ${verb}: ${e.message} [${e.code}]`);
      return 1;
    }
    const npmTook = e instanceof UsageError || (e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) ? npmTookFlags(process.env, mod.usage) : '';
    if (npmTook) {
      // The command line as npm left it: what it reports is a symptom, the missing -- the cause.
      console.error(`clipag ${verb}: ${(e as Error).message}\n${npmTook}`);
      return 2;
    }
    if (e instanceof UsageError && e.brief) {
      // Not the command line's shape (no key configured, a bad line in a file): the whole usage would hide the message.
      console.error(`clipag ${verb}: ${e.message}\n(clipag ${verb} --help shows the usage)`);
      return 2;
    }
    if (e instanceof UsageError || (e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))) {
      console.error(`clipag ${verb}: ${e.message}\n\n${mod.usage}`);
      return 2;
    }
    throw e;
  }
}

/**
 * Under `npm run` (`npm run clipag generate … --steps 3`, `npm start --port 8788`), npm takes the options
 * written before a `--` for its own configuration: the verb sees their values as stray arguments, and
 * says something true but beside the point ("give exactly one prompt"). npm leaves each such option in the
 * environment as npm_config_<name>; those that are the verb's options are named here, with the fix. '' when none.
 */
export function npmTookFlags(env: Readonly<Record<string, string | undefined>>, usage: string): string {
  // The package's scripts that hand the user's arguments to this CLI (npx and npm test run it otherwise).
  const script = env.npm_lifecycle_event;
  if (script !== 'clipag' && script !== 'start') return '';
  const flags = Object.keys(env)
    // Set, not npm's own empty defaults (npm_config_yes= is in every script's environment).
    .filter((k) => k.startsWith('npm_config_') && env[k] !== '')
    .map((k) => k.slice('npm_config_'.length).replace(/_/g, '-'))
    .map((name) => (name.length === 1 ? `-${name}` : `--${name}`))
    .filter((flag) => new RegExp(`(^|[\\s\\[(,|])${flag.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=[\\s\\]=,|)]|$)`, 'm').test(usage));
  if (flags.length === 0) return '';
  flags.sort();
  const run = script === 'start' ? 'npm start --' : `npm run ${script} --`;
  return `npm took ${flags.join(', ')} for itself: npm passes options on only after --, so write ${run} ${script === 'start' ? '' : '<verb> '}… (as in: ${run}${script === 'start' ? ' --port 8788' : ' generate "a red circle" --steps 3'})`;
}
