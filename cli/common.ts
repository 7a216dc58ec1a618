// Options shared by the verbs.
import { randomUUID } from 'node:crypto';
import { accessSync, chmodSync, closeSync, constants, existsSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { makeStagingFolder, syncFolder, syncPath } from '../gpu-worker/engine/io/staging.ts';
import { parsePolicyDocument, type PromptPolicy } from '../shared/prompt-policy.ts';
import { closestName } from '../shared/did-you-mean.ts';
import { parseConfig } from '../shared/config.ts';
import { DEFAULT_JPEG_QUALITY, isLossyOutputFormat, MAX_OUTPUT_QUALITY, MIN_OUTPUT_QUALITY, outputFile as outputFileOf, type OutputFormat } from '../shared/output-format.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The embedded default model bundle (trained by the project, shipped in the repo). */
export const DEFAULT_MODEL_DIR = join(REPO_ROOT, 'models', 'toy');

/**
 * This package's models folder: where every verb looks when CLIPAG_MODELS_DIR is unset (or blank),
 * whatever the working folder. `clipag serve` serves it, and `models push` checks a name against it
 * (a push from another folder used to skip that check, and `models list` to leave its models out).
 * shared/config.ts's own default, `models` in the working folder, is the worker image's (its working
 * folder is the package root); the Lambda bundle has no package folder to point at.
 */
export const PACKAGE_MODELS_DIR = join(REPO_ROOT, 'models');

/** `env` with CLIPAG_MODELS_DIR set to PACKAGE_MODELS_DIR where it is unset or blank (parseConfig's "unset"). */
export function withPackageModelsDir(env: Readonly<Record<string, string | undefined>>): Record<string, string | undefined> {
  return (env.CLIPAG_MODELS_DIR ?? '').trim() === '' ? { ...env, CLIPAG_MODELS_DIR: PACKAGE_MODELS_DIR } : { ...env };
}

/** The models folder of the verbs, absolute: CLIPAG_MODELS_DIR as the config reads it, else this package's. Throws ConfigError for a bad environment. */
export function cliModelsDir(env: Readonly<Record<string, string | undefined>>): string {
  return resolve(parseConfig(withPackageModelsDir(env)).modelsDir);
}

/**
 * The command line itself is wrong (a missing argument, flags that exclude each other, a flag's value
 * out of its range): exit 2 with the usage, as parseArgs errors do. `brief`: a usage error that is not
 * about the command line's shape (no API key configured, a bad line in a file of requests): exit 2
 * with the message and a one-line pointer to --help, not the whole usage, which would hide it.
 */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly brief: boolean;
  constructor(message: string, options: { brief?: boolean } = {}) {
    super(message);
    this.brief = options.brief ?? false;
  }
}

/**
 * The operator verbs' refusal, for verbs that take their stores as arguments and return their exit
 * code (their tests call `run` directly): `clipag <verb>: message`, with the usage for a usage error
 * (exit 2), without it for a failure (exit 1).
 */
export function refusal(verb: string, usage: string): (message: string, code?: number) => number {
  return (message, code = 2) => {
    console.error(`clipag ${verb}: ${message}${code === 2 ? `\n\n${usage}` : ''}`);
    return code;
  };
}

/** The option of `names` (without dashes) closest to `given`, when it is close enough to be a typo. */
export function closestOption(given: string, names: readonly string[]): string | undefined {
  return closestName(given.replace(/^-+/, '').replace(/=.*$/, ''), names);
}

/** What node:util parseArgs returns for `config`. */
type ParsedResults<T extends ParseArgsConfig> = ReturnType<typeof parseArgs<T>>;

/** A value that looks like a negative number ("-1", "-0.5", "-1,2"): never an option, since no option's name is a digit. */
const NEGATIVE_NUMBER = /^-\.?\d/;

/**
 * node:util parseArgs, with the command line's mistakes said as usage errors (exit 2) a user can act on:
 * - an unknown option: "unknown option --stepz (did you mean --steps?)", from the verb's own options;
 * - a negative number after a flag that takes a value (`--seed -1`): taken as the value, so that the
 *   flag's own check says its rule ("--seed must be an integer in [0, 4294967295], got "-1"");
 * - a short option written with "=" (`-o=out.png`, which parseArgs reads as the value "=out.png");
 * - a flag that takes one value given twice ("--steps given twice (3, 4)"); flags declared
 *   `multiple` (and boolean flags) may repeat.
 * Otherwise the same call and the same result as parseArgs (tokens included when asked for, indexed
 * into the caller's argv).
 */
export function parseCliArgs<T extends ParseArgsConfig>(config: T): ParsedResults<T> {
  const argv = config.args ?? process.argv.slice(2);
  const options = config.options ?? {};
  const valueOption = (arg: string): boolean => {
    if (/^--[^=]+$/.test(arg)) return options[arg.slice(2)]?.type === 'string';
    if (/^-[^-]$/.test(arg)) return Object.values(options).some((o) => o.short === arg[1] && o.type === 'string');
    return false;
  };
  // `--seed -1` becomes `--seed=-1` (`-x -1` becomes `-x-1`); `from[i]` is the caller's index of args[i].
  const args: string[] = [];
  const from: number[] = [];
  const joined = new Set<number>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      for (let j = i; j < argv.length; j++) (args.push(argv[j]!), from.push(j));
      break;
    }
    args.push(arg);
    from.push(i);
    if (!valueOption(arg) || i + 1 >= argv.length) continue;
    const next = argv[i + 1]!;
    if (NEGATIVE_NUMBER.test(next)) {
      args[args.length - 1] = arg.startsWith('--') ? `${arg}=${next}` : `${arg}${next}`;
      joined.add(args.length - 1);
      i++;
    } else if (!next.startsWith('-')) {
      // The flag's value: kept as it is.
      args.push(next);
      from.push(i + 1);
      i++;
    } // else an option follows: parseArgs says the value is missing
  }
  let parsed: ParsedResults<T & { tokens: true }>;
  try {
    parsed = parseArgs({ ...config, args, tokens: true }) as ParsedResults<T & { tokens: true }>;
  } catch (e) {
    throw parseArgsUsageError(e, argv, Object.keys(options), config.allowPositionals === true);
  }
  const tokens = (parsed.tokens ?? []).map((t) => {
    const at = from[t.index]!;
    // A joined value reads as parseArgs would have read `--seed 1`: the value in the next argument.
    return t.kind === 'option' && joined.has(t.index) ? { ...t, index: at, inlineValue: false } : { ...t, index: at };
  });
  const seen = new Map<string, { rawNames: Set<string>; values: string[] }>();
  for (const t of tokens) {
    if (t.kind !== 'option' || t.value === undefined) continue;
    if (t.inlineValue && !t.rawName.startsWith('--') && t.value.startsWith('=')) {
      throw new UsageError(`${t.rawName}=${t.value.slice(1)}: a short option takes its value after a space: write ${t.rawName} ${t.value.slice(1) || 'VALUE'} or --${t.name}=${t.value.slice(1) || 'VALUE'}`);
    }
    if (options[t.name]?.multiple) continue;
    const s = seen.get(t.name) ?? { rawNames: new Set<string>(), values: [] };
    s.rawNames.add(t.rawName);
    s.values.push(t.value);
    seen.set(t.name, s);
  }
  for (const [name, s] of seen) {
    if (s.values.length < 2) continue;
    const flag = s.rawNames.size === 1 ? [...s.rawNames][0]! : `--${name}`;
    throw new UsageError(`${flag} given ${s.values.length === 2 ? 'twice' : `${s.values.length} times`} (${s.values.join(', ')}); give it once`);
  }
  return (config.tokens ? { ...parsed, tokens } : { values: parsed.values, positionals: parsed.positionals }) as unknown as ParsedResults<T>;
}

/** parseArgs' own errors, said as usage errors: what is wrong, in the verb's terms. */
function parseArgsUsageError(e: unknown, argv: readonly string[], names: readonly string[], positionals: boolean): unknown {
  const code = (e as { code?: string }).code;
  const message = (e as Error).message ?? '';
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const given = /^Unknown option '([^']*)'/.exec(message)?.[1] ?? '?';
    // The argument as typed: parseArgs names one letter of a group ("-r" of "-red").
    const typed = argv.find((a) => a === given || a.startsWith(`${given}=`)) ?? argv.find((a) => !a.startsWith('--') && a.startsWith(given)) ?? given;
    const near = closestOption(typed, names);
    // serve's --data, given to an operator verb (keys, usage, policy, dlq): they read the folder from the environment.
    const dataFlag = (typed === '--data' || typed.startsWith('--data=')) && !names.includes('data');
    const hint = dataFlag
      ? ': this command reads the data folder from CLIPAG_DATA_DIR (serve\'s --data), as in CLIPAG_DATA_DIR=DIR clipag keys create --name NAME'
      : near !== undefined ? ` (did you mean --${near}?)` : positionals ? ` (an argument that starts with "-" goes after --, as in -- ${JSON.stringify(typed)})` : '';
    return new UsageError(`unknown option ${typed === given || typed.startsWith(`${given}=`) ? given : `${given} (in ${typed})`}${hint}`);
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    const ambiguous = /^Option '([^' ]+)' argument is ambiguous/.exec(message)?.[1];
    if (ambiguous) return new UsageError(`${ambiguous} needs a value (a value that starts with "-" is written ${ambiguous.startsWith('--') ? `${ambiguous}=-…` : `${ambiguous}-…`})`);
    const missing = /^Option '(?:-\w, )?(--?[^' ]+) <value>' argument missing/.exec(message)?.[1];
    if (missing) return new UsageError(`${missing} needs a value`);
    const noValue = /^Option '(?:-\w, )?(--?[^' ]+)' does not take an argument/.exec(message)?.[1];
    if (noValue) return new UsageError(`${noValue} takes no value`);
  }
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
    const arg = /^Unexpected argument '([^']*)'/.exec(message)?.[1];
    if (arg !== undefined) return new UsageError(`unexpected argument "${arg}": this command takes none`);
  }
  return code?.startsWith('ERR_PARSE_ARGS') ? new UsageError(message) : e;
}

/**
 * A --size value's width and height, before any range check (the verb's own): WxH (an x or an X), or
 * one side alone for a square ("64" is 64x64), as the API reads a width or a height given alone.
 */
export function sizeShape(value: string, example = '512x384'): [number, number] {
  const m = /^(\d+)(?:[xX](\d+))?$/.exec(value);
  if (!m) throw new UsageError(`--size must look like ${example} (or ${example.split('x')[0]} for a square), got "${value}"`);
  return [Number(m[1]), Number(m[2] ?? m[1])];
}

export function modelDir(arg: string | undefined): string {
  const dir = resolve(arg ?? DEFAULT_MODEL_DIR);
  if (!existsSync(dir)) {
    // A model's name (as the API takes it) where a folder is meant: the models folder's bundle of that name.
    const named = arg && !/[\\/]/.test(arg) ? modelsFolderHint(arg) : undefined;
    if (named !== undefined && statSync(named, { throwIfNoEntry: false })?.isDirectory()) {
      throw new EngineError('invalid_model', `model bundle ${dir} does not exist; --model takes a folder: for the model named ${arg}, pass --model ${relative(process.cwd(), named) || named}`);
    }
    throw new EngineError('invalid_model', `model bundle ${dir} does not exist${arg ? '' : ' (the default model ships in models/toy)'}; pass --model DIR`);
  }
  if (!statSync(dir).isDirectory()) throw new EngineError('invalid_model', `--model ${dir} is a file; pass the bundle's folder (the one that holds manifest.json)`);
  return dir;
}

/** The models folder's entry named `name`, for a hint; none when the environment's settings do not parse (the hint is not worth that error). */
function modelsFolderHint(name: string): string | undefined {
  try {
    return join(cliModelsDir(process.env), name);
  } catch {
    return undefined;
  }
}

export function intArg(value: string | undefined, name: string, def: number, min: number, max: number): number {
  if (value === undefined) return def;
  // Decimal digits only: Number() would also take "", " ", "0x10" and "1e3".
  const n = /^-?\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got "${value}"`);
  return n;
}

/** A flag's number in decimal notation ("0.5", "2", "1e-4"), else NaN: Number() also takes "", " ", "0x10", "0b1" and "Infinity". */
export function decimalNumber(value: string): number {
  return /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(value) ? Number(value) : Number.NaN;
}

/** A finite number in [min, max] from a flag, or `def` when the flag is absent. */
export function numberArg(value: string | undefined, name: string, def: number | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return def;
  const n = decimalNumber(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number in [${min}, ${max}], got "${value}"`);
  return n;
}

/** The help text of --format and --quality, generate's and remote generate's alike. */
export const OUTPUT_FORMAT_USAGE = `  --format F          png | jpeg | webp (default: what -o's extension says, .jpg/.jpeg or .webp, else png)
  --quality Q         JPEG or WebP quality, ${MIN_OUTPUT_QUALITY}-${MAX_OUTPUT_QUALITY} (default ${DEFAULT_JPEG_QUALITY}); only with JPEG or WebP`;

/** The image format a file name's extension says (.png; .jpg or .jpeg; .webp), if any. */
export function formatOfFileName(path: string): OutputFormat | undefined {
  const ext = extname(path).toLowerCase();
  return ext === '.jpg' || ext === '.jpeg' ? 'jpeg' : ext === '.png' ? 'png' : ext === '.webp' ? 'webp' : undefined;
}

/** A format's name in a sentence. */
export const FORMAT_NAME: Record<OutputFormat, string> = { png: 'PNG', jpeg: 'JPEG', webp: 'WebP' };

/**
 * --format and --quality (ADR 0041, 0043): the format named, else the one -o's extension says (.jpg or
 * .jpeg: JPEG; .webp: WebP; none given: PNG). A quality with PNG is a usage error (it would be ignored),
 * and an -o whose extension says another format than the one written is a warning. `out` is -o as given.
 */
export function outputFormatArgs(format: string | undefined, quality: string | undefined, out: string | undefined): { format: OutputFormat; quality?: number; defaultOut: string; warning?: string } {
  const ext = out === undefined ? '' : extname(out);
  const fromExt = out === undefined ? undefined : formatOfFileName(out);
  let chosen: OutputFormat;
  if (format === undefined) chosen = fromExt ?? 'png';
  else if (format === 'png' || format === 'jpeg' || format === 'jpg' || format === 'webp') chosen = format === 'jpg' ? 'jpeg' : format;
  else throw new UsageError(`--format must be png, jpeg or webp, got "${format.slice(0, 40)}"`);
  if (quality !== undefined && !isLossyOutputFormat(chosen)) throw new UsageError('--quality applies only to JPEG or WebP (--format jpeg|webp, or -o FILE.jpg|FILE.webp): a PNG is lossless');
  const q = quality === undefined ? undefined : intArg(quality, 'quality', DEFAULT_JPEG_QUALITY, MIN_OUTPUT_QUALITY, MAX_OUTPUT_QUALITY);
  const warning = out !== undefined && ext !== '' && fromExt !== chosen ? `-o ${out}: the image is written as a ${FORMAT_NAME[chosen]} whatever the file's extension (${ext})` : undefined;
  return { format: chosen, ...(q !== undefined ? { quality: q } : {}), defaultOut: `out.${outputFileOf(chosen).extension}`, ...(warning ? { warning } : {}) };
}

/**
 * Resolves an output file and checks, before any work, that it can be written: its folder exists
 * and is writable, and the path is not a folder. A long run must not end in a bare ENOENT.
 */
/** The exit status when the policy's output rules withhold the image (nothing is written): generate and remote alike. */
export const WITHHELD_EXIT_CODE = 3;
/** 128 + SIGINT, as a shell reports Ctrl-C: generate and remote alike. */
export const INTERRUPTED_EXIT_CODE = 130;

export function outputFile(path: string, flag: string): string {
  if (path === '') throw new UsageError(`${flag} is empty; give a file name`);
  // The usual spelling of "standard output" elsewhere: a file named "-" in the working folder is never what was meant.
  if (path === '-') throw new UsageError(`${flag} - (standard output) is not supported; give a file name`);
  try {
    return checkedOutputFile(path, flag);
  } catch (e) {
    if (e instanceof EngineError) throw e;
    // A name the file system refuses (ENAMETOOLONG, ELOOP, EACCES on the way): said in the verb's format.
    throw new EngineError('invalid_input', `${flag} ${path.length > 80 ? `${path.slice(0, 80)}…` : path}: cannot be written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

function checkedOutputFile(path: string, flag: string): string {
  let out = resolve(path);
  if (lstatSync(out, { throwIfNoEntry: false })?.isSymbolicLink()) {
    // A link is written through: to where it leads, which must exist as a folder (a loop or a dangling link would fail only after the run).
    try {
      out = realpathSync(out);
    } catch (e) {
      // A link to a file not made yet is written through, when the folder it names exists.
      const target = (e as NodeJS.ErrnoException).code === 'ENOENT' ? resolve(dirname(out), readlinkSync(out)) : undefined;
      if (target === undefined || !statSync(dirname(target), { throwIfNoEntry: false })?.isDirectory()) {
        throw new EngineError('invalid_input', `${flag} ${resolve(path)} is a symbolic link that leads nowhere (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); give another file name`);
      }
      out = target;
    }
  }
  const existing = statSync(out, { throwIfNoEntry: false });
  if (existing?.isDirectory()) throw new EngineError('invalid_input', `${flag} ${out} is a folder; give a file name`);
  // The output is renamed over the path (writeWhole): over a device, a pipe or a socket that would put
  // a plain file in its place (-o /dev/null once replaced the machine's /dev/null).
  if (existing && !existing.isFile()) {
    throw new EngineError('invalid_input', `${flag} ${out} is not a regular file (a device, a pipe or a socket); give a file name`);
  }
  // A file its owner made read-only is not replaced behind their back (the rename needs only the
  // folder's permission). Its mode says so for root too, whom access(2) lets write anything.
  if (existing) {
    let writable = (existing.mode & 0o222) !== 0;
    try {
      accessSync(out, constants.W_OK);
    } catch {
      writable = false;
    }
    if (!writable) throw new EngineError('invalid_input', `${flag} ${out} is read-only; make it writable or give another file name`);
  }
  const dir = dirname(out);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new EngineError('invalid_input', `${flag} ${out}: the folder ${dir} does not exist`);
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new EngineError('invalid_input', `${flag} ${out}: the folder ${dir} is not writable`);
  }
  return out;
}

/**
 * `bytes` at `path`, whole or not at all: written to a temporary file in the same folder, flushed,
 * and renamed over `path`. A write that fails (a full disk, a file-size limit, Ctrl-C) leaves the file
 * that was there as it was, never half an image.
 */
export function writeWhole(path: string, bytes: Uint8Array, mode = 0o644): void {
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`);
  try {
    const fd = openSync(temporary, 'wx', mode);
    try {
      for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at, bytes.length - at);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, path);
  } catch (e) {
    rmSync(temporary, { force: true });
    throw e;
  }
}

/**
 * A training checkpoint's absolute path, its folder made: a file (to resume from, or to write), never
 * a folder, under a folder that can be made. A symbolic link is followed to the file it leads to (the
 * run resumes from it and saves over it, keeping the link); one that leads nowhere (dangling, a loop)
 * is refused. Checked before training starts.
 */
export function checkpointFile(path: string): string {
  let ckpt: string;
  try {
    ckpt = followLink(path, '--checkpoint');
  } catch (e) {
    if (e instanceof EngineError) throw e;
    ckpt = resolve(path); // ENOTDIR (a part of the path is a file): the mkdir below says so
  }
  let isFolder = false;
  try {
    isFolder = statSync(ckpt, { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    // ENOTDIR (a part of the path is a file): the mkdir below says so.
  }
  if (isFolder) throw new EngineError('invalid_input', `--checkpoint ${ckpt} is a folder; give a file name (for example ${join(ckpt, 'run.ckpt')})`);
  try {
    mkdirSync(dirname(ckpt), { recursive: true });
  } catch (e) {
    throw new EngineError('invalid_input', `--checkpoint ${ckpt}: cannot make its folder ${dirname(ckpt)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; is a part of the path a file?)`);
  }
  return ckpt;
}

/**
 * An output folder's absolute path; a symbolic link is followed to where it leads, which must exist
 * (a dangling link or a loop is refused here, not after the work). Used by bundleOut and by
 * `models import -o`.
 */
export function followLink(path: string, flag: string): string {
  const out = resolve(path);
  if (!lstatSync(out, { throwIfNoEntry: false })?.isSymbolicLink()) return out;
  try {
    return realpathSync(out);
  } catch (e) {
    throw new EngineError('invalid_input', `${flag} ${out} is a symbolic link that leads nowhere (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/**
 * A bundle folder a command will write, checked before any work: absent, an empty folder, or (with
 * `force`) a bundle to replace, one holding a manifest.json and nothing but files. Anything else in
 * the folder (a subfolder, a repository) is never replaced. A link is followed to its folder, which
 * is replaced in place. The parent must be writable, since the new bundle is renamed in there.
 */
export function bundleOut(path: string, force: boolean, flag = '--out'): string {
  const out = followLink(path, flag);
  const st = statSync(out, { throwIfNoEntry: false });
  if (st && !st.isDirectory()) throw new EngineError('invalid_input', `${flag} ${out} is a file, not a folder`);
  if (st) {
    const entries = readdirSync(out, { withFileTypes: true });
    if (entries.length > 0 && !force) throw new EngineError('invalid_input', `${flag} ${out} already holds files (a bundle?); pass --force to replace them, or choose another ${flag}`);
    const foreign = entries.filter((e) => !e.isFile()).map((e) => e.name);
    if (entries.length > 0 && (foreign.length > 0 || !entries.some((e) => e.name === 'manifest.json'))) {
      throw new EngineError('invalid_input', `${flag} ${out} is not a bundle (${foreign.length ? `it holds ${foreign.slice(0, 3).join(', ')}` : 'no manifest.json'}): --force replaces a bundle, never another folder`);
    }
  }
  let parent = dirname(out);
  while (!existsSync(parent)) parent = dirname(parent);
  if (!statSync(parent).isDirectory()) throw new EngineError('invalid_input', `${flag} ${out}: ${parent} is a file, not a folder`);
  try {
    accessSync(parent, constants.W_OK);
  } catch {
    throw new EngineError('invalid_input', `${flag} ${out}: the folder ${parent} is not writable (the bundle is written beside ${basename(out)}, then renamed into place)`);
  }
  return out;
}

/**
 * Writes a folder in a staging folder beside `out`, then swaps it in: an interrupted write (Ctrl-C,
 * a crash) leaves the previous folder whole, and a reader never sees half a bundle. When the swap
 * itself fails (`out` is a mount point, say), the new folder is kept and the error says where.
 */
export async function replaceFolder<T>(out: string, write: (dir: string) => Promise<T>): Promise<T> {
  mkdirSync(dirname(out), { recursive: true });
  const staging = makeStagingFolder(out, 'writing');
  const old = `${staging}.old`;
  let kept = false;
  try {
    const result = await write(staging);
    syncFolder(staging);
    const previous = statSync(out, { throwIfNoEntry: false });
    if (previous) chmodSync(staging, previous.mode & 0o7777); // the replaced folder's mode, not mkdtemp's
    try {
      if (previous) renameSync(out, old);
      try {
        renameSync(staging, out);
      } catch (e) {
        if (previous) renameSync(old, out); // put the previous folder back
        throw e;
      }
    } catch (e) {
      kept = true;
      throw new EngineError('runtime_failed', `cannot move the new folder into ${out} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); it is kept at ${staging}`, { path: staging });
    }
    syncPath(dirname(out)); // the swap itself
    rmSync(old, { recursive: true, force: true });
    return result;
  } finally {
    if (!kept) rmSync(staging, { recursive: true, force: true });
  }
}

/** A policy document from a file (`--policy`), checked as the API checks `config/prompt-policy.json`. */
export function policyFile(path: string): PromptPolicy {
  let body: Uint8Array;
  try {
    body = readFileSync(path);
  } catch (e) {
    throw new EngineError('invalid_input', `cannot read --policy ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const parsed = parsePolicyDocument(body);
  if ('problem' in parsed) throw new EngineError('invalid_input', `--policy ${path} is not a valid policy document: ${parsed.problem}`);
  return parsed.policy;
}

/** One word for a POSIX shell: as it is when it is plain, else in single quotes. */
export function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * How this process was started, as the words a user pastes to start clipag again the same way: what a
 * command printed to pick a run up begins with. A README reader has no `clipag` on PATH: they typed
 * `npm run clipag -- …` (npm names the script it runs), `npx clipag …` (npm's exec), or `node [--import
 * tsx] bin/clipag.…` (the script's path, relative when it is under the working folder). `clipag` alone
 * only for an installed command of that name, which is on PATH.
 */
export function invocation(env: Readonly<Record<string, string | undefined>>, script: string | undefined, cwd: string): string[] {
  if (env.npm_lifecycle_event === 'clipag') return ['npm', 'run', 'clipag', '--'];
  // npm's exec runs the package's bin link, named clipag (a variable a child process inherits: only then).
  if (env.npm_lifecycle_event === 'npx' && (script === undefined || basename(script) === 'clipag')) return ['npx', 'clipag'];
  if (script) {
    const rel = relative(cwd, script);
    const path = rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : script;
    if (/\.ts$/.test(script)) return ['node', '--import', 'tsx', path];
    if (/\.[cm]?js$/.test(script)) return ['node', path];
    if (basename(script) === 'clipag') return ['clipag'];
  }
  return ['npx', 'clipag'];
}
