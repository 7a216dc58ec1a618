/**
 * Static checks of gpu-worker/Dockerfile. There is no Docker engine on the development and
 * CI machines, so the image is never built here; these tests read the file as text and
 * assert the properties the deployment relies on.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers.ts';

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

/** Minimal Dockerfile parser: comments, blank lines and backslash continuations. */
export function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split(/\r?\n/);
  let buffer = '';
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const trimmed = raw.trim();
    if (buffer === '' && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (buffer !== '' && trimmed.startsWith('#')) continue; // comment inside a continuation
    if (buffer === '') start = i + 1;
    if (trimmed.endsWith('\\')) {
      buffer += trimmed.slice(0, -1).trimEnd() + ' ';
      continue;
    }
    buffer += trimmed;
    const m = buffer.match(/^(\S+)\s*(.*)$/s)!;
    out.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start });
    buffer = '';
  }
  if (buffer !== '') throw new Error('Dockerfile ends inside a line continuation');
  return out;
}

const dockerfileText = readFileSync(path.join(REPO_ROOT, 'gpu-worker', 'Dockerfile'), 'utf8');
const instructions = parseDockerfile(dockerfileText);
const all = (kw: string) => instructions.filter((i) => i.keyword === kw);
/** Instructions of the final stage (the image that runs). */
const finalStage = instructions.slice(instructions.map((i) => i.keyword).lastIndexOf('FROM'));
const inFinal = (kw: string) => finalStage.filter((i) => i.keyword === kw);

function execForm(args: string): string[] {
  expect(args.startsWith('['), `exec form expected, got shell form: ${args}`).toBe(true);
  const parsed = JSON.parse(args) as unknown;
  expect(Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')).toBe(true);
  return parsed as string[];
}

describe('parseDockerfile', () => {
  it('joins continuations and skips comments', () => {
    const parsed = parseDockerfile('# c\nFROM a:1 AS b\nRUN x \\\n  # inner\n  && y\nCMD ["node"]\n');
    expect(parsed).toEqual([
      { keyword: 'FROM', args: 'a:1 AS b', line: 2 },
      { keyword: 'RUN', args: 'x && y', line: 3 },
      { keyword: 'CMD', args: '["node"]', line: 6 },
    ]);
  });
});

describe('gpu-worker/Dockerfile', () => {
  it('runs on a pinned CUDA 12 + cuDNN runtime base image', () => {
    const [base] = inFinal('FROM');
    const image = base!.args.split(/\s+/)[0]!;
    expect(image).toMatch(/^nvidia\/cuda:12\.\d+\.\d+-cudnn\d*-runtime-ubuntu\d{2}\.\d{2}$/);
  });

  it('pins every base image to an explicit version (no latest, no bare names)', () => {
    for (const from of all('FROM')) {
      const image = from.args.split(/\s+/)[0]!;
      expect(image, `line ${from.line}`).toMatch(/:[0-9][\w.-]*$/);
      expect(image).not.toMatch(/:latest$/);
    }
  });

  it('installs Node 22, the release CI tests on (scripts/with-node22.sh)', () => {
    const nodeStage = all('FROM').find((f) => f.args.startsWith('node:'));
    expect(nodeStage?.args).toMatch(/^node:22\.\d+\.\d+-/);
    const ciVersion = /version="\$\{CLIPAG_NODE22_VERSION:-([\d.]+)\}"/.exec(readFileSync(path.join(REPO_ROOT, 'scripts/with-node22.sh'), 'utf8'))?.[1];
    expect(ciVersion).toBeDefined();
    expect(nodeStage!.args.split(/\s+/)[0]).toBe(`node:${ciVersion}-bookworm-slim`);
    const copies = inFinal('COPY').filter((c) => c.args.includes('--from=node'));
    expect(copies.some((c) => c.args.includes('/usr/local/bin/node'))).toBe(true);
  });

  it('installs production dependencies with the onnxruntime CUDA 12 execution provider', () => {
    const npmCi = inFinal('RUN').filter((r) => /\bnpm ci\b/.test(r.args));
    expect(npmCi).toHaveLength(1);
    expect(npmCi[0]!.args).toMatch(/--omit=dev\b/);
    expect(npmCi[0]!.args).toMatch(/--onnxruntime-node-install=cuda12\b/);
    // The lockfile must be in the image before `npm ci` runs.
    const copyLock = inFinal('COPY').findIndex((c) => c.args.includes('package-lock.json'));
    const ciIndex = finalStage.indexOf(npmCi[0]!);
    expect(copyLock).toBeGreaterThanOrEqual(0);
    expect(finalStage.indexOf(inFinal('COPY')[copyLock]!)).toBeLessThan(ciIndex);
  });

  it("keeps only this platform's onnxruntime binaries, in the install's own layer (run here on a copy of the package's tree)", () => {
    const npmCi = inFinal('RUN').find((r) => /\bnpm ci\b/.test(r.args))!;
    // The pruning runs in the same RUN as the install: a later layer could not shrink the image.
    const prune = npmCi.args.slice(npmCi.args.indexOf('ort_arch='));
    expect(prune).toMatch(/^ort_arch=/);
    const platforms = ['darwin/arm64', 'linux/arm64', 'linux/x64', 'win32/arm64', 'win32/x64'];
    const kept = (machine: string) => {
      const dir = mkdtempSync(path.join(tmpdir(), 'clipag-prune-'));
      try {
        for (const p of platforms) {
          mkdirSync(path.join(dir, 'node_modules/onnxruntime-node/bin/napi-v6', p), { recursive: true });
          writeFileSync(path.join(dir, 'node_modules/onnxruntime-node/bin/napi-v6', p, 'onnxruntime_binding.node'), '');
        }
        // `uname -m` as the build machine answers it; `sh`, as RUN's shell form runs it.
        mkdirSync(path.join(dir, 'shim'));
        writeFileSync(path.join(dir, 'shim/uname'), `#!/bin/sh\necho ${machine}\n`, { mode: 0o755 });
        execFileSync('sh', ['-c', prune], { cwd: dir, env: { ...process.env, PATH: `${path.join(dir, 'shim')}:${process.env.PATH}` }, stdio: 'pipe' });
        return execFileSync('find', ['node_modules/onnxruntime-node/bin', '-type', 'd'], { cwd: dir, encoding: 'utf8' }).trim().split('\n').sort();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    const tree = (arch: string) => ['node_modules/onnxruntime-node/bin', 'node_modules/onnxruntime-node/bin/napi-v6', 'node_modules/onnxruntime-node/bin/napi-v6/linux', `node_modules/onnxruntime-node/bin/napi-v6/linux/${arch}`];
    expect(kept('x86_64')).toEqual(tree('x64'));
    expect(kept('aarch64')).toEqual(tree('arm64'));
    // A machine with no binaries of its own fails the build (the final ls), rather than shipping none.
    expect(() => kept('riscv64')).toThrow();
  });

  it('fails the build when the CUDA provider links against a library the base image lacks (libcuda aside: the driver\'s, mounted at run time)', () => {
    const checks = inFinal('RUN').filter((r) => /\bldd\b/.test(r.args));
    expect(checks).toHaveLength(1);
    expect(checks[0]!.args).toMatch(/libonnxruntime_providers_cuda\.so/);
    expect(checks[0]!.args).toMatch(/grep 'not found'/);
    expect(checks[0]!.args).toMatch(/grep -v 'libcuda\\\.so'/);
    expect(checks[0]!.args).toMatch(/exit 1/);
    // After the install that puts the provider there.
    const ci = inFinal('RUN').findIndex((r) => /\bnpm ci\b/.test(r.args));
    expect(finalStage.indexOf(checks[0]!)).toBeGreaterThan(finalStage.indexOf(inFinal('RUN')[ci]!));
  });

  it('sets NODE_ENV=production', () => {
    expect(inFinal('ENV').some((e) => /\bNODE_ENV=production\b/.test(e.args))).toBe(true);
  });

  it('runs as a non-root user created in the image', () => {
    const users = inFinal('USER');
    expect(users.length).toBeGreaterThan(0);
    const last = users.at(-1)!.args.split(':')[0]!;
    expect(['root', '0']).not.toContain(last);
    expect(inFinal('RUN').some((r) => new RegExp(`useradd\\b.*\\b${last}\\b`).test(r.args))).toBe(true);
    // Nothing after the USER switch runs as root again.
    const userIdx = finalStage.lastIndexOf(users.at(-1)!);
    expect(finalStage.slice(userIdx).filter((i) => i.keyword === 'RUN')).toEqual([]);
  });

  it('starts Node in exec form so SIGTERM reaches it (tini as PID 1)', () => {
    const cmds = inFinal('CMD');
    expect(cmds).toHaveLength(1);
    const cmd = execForm(cmds[0]!.args);
    expect(cmd[0]).toBe('node');
    expect(cmd).toContain('gpu-worker/main.ts');
    expect(cmd.slice(1, 3)).toEqual(['--import', 'tsx']);
    const [entrypoint] = inFinal('ENTRYPOINT');
    expect(entrypoint).toBeDefined();
    expect(execForm(entrypoint!.args)).toEqual(['/usr/bin/tini', '--']);
    expect(inFinal('RUN').some((r) => /apt-get install\b.*\btini\b/.test(r.args))).toBe(true);
    const stop = inFinal('STOPSIGNAL');
    if (stop.length > 0) expect(stop[0]!.args).toBe('SIGTERM');
  });

  it('decides on a HEALTHCHECK explicitly and carries OCI labels', () => {
    expect(inFinal('HEALTHCHECK')).toHaveLength(1);
    expect(inFinal('LABEL').some((l) => l.args.includes('org.opencontainers.image.title='))).toBe(true);
  });

  it('bakes in no secrets: no credential-like ARG/ENV, no .npmrc, no AWS keys', () => {
    const secretish = /(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|AUTH)/i;
    for (const i of [...all('ARG'), ...all('ENV')]) {
      const names = i.args.split(/\s+/).map((kv) => kv.split('=')[0]!);
      for (const n of names) expect(n, `line ${i.line}`).not.toMatch(secretish);
    }
    expect(dockerfileText).not.toMatch(/AKIA[0-9A-Z]{16}/);
    expect(dockerfileText).not.toMatch(/aws_secret_access_key/i);
    for (const c of all('COPY').concat(all('ADD'))) expect(c.args).not.toMatch(/\.npmrc|\.env\b/);
    expect(all('ADD')).toEqual([]); // COPY only: ADD would fetch URLs / unpack archives
  });

  it('copies only paths that exist in the build context (repo root) and are not dockerignored', () => {
    const ignored = readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const sources = inFinal('COPY')
      .filter((c) => !c.args.includes('--from='))
      .flatMap((c) => c.args.split(/\s+/).slice(0, -1));
    expect(sources).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'shared/', 'gpu-worker/', 'models/']));
    for (const src of sources) {
      expect(existsSync(path.join(REPO_ROOT, src)), `${src} must exist at the repo root`).toBe(true);
      // The file is an allow-list ("*" first): every source must be let back in by name.
      expect(ignored, `${src} is not allowed back in by .dockerignore`).toContain(`!${src}`);
    }
  });
});

describe("the worker's code in the image", () => {
  it('every module the worker runs is in a folder the image copies, and every package it imports is a production dependency', async () => {
    // The worker's entry and its threads' (tsx in the image: pool-worker-tsx.mjs loads pool-worker.ts and
    // the init image's decode thread).
    const entries = ['gpu-worker/main.ts', 'gpu-worker/engine/runtime/pool-worker-tsx.mjs', 'gpu-worker/engine/runtime/pool-worker.ts', 'gpu-worker/worker/init-decode-thread.ts'];
    const result = await build({ entryPoints: entries.map((e) => path.join(REPO_ROOT, e)), absWorkingDir: REPO_ROOT, bundle: true, platform: 'node', format: 'esm', packages: 'external', write: false, outdir: 'out', metafile: true, logLevel: 'silent' });
    const copied = inFinal('COPY')
      .filter((c) => !c.args.includes('--from='))
      .flatMap((c) => c.args.split(/\s+/).slice(0, -1))
      .filter((src) => src.endsWith('/'));
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs).toContain('gpu-worker/worker/worker.ts');
    expect(inputs.filter((p) => !copied.some((dir) => p.startsWith(dir)))).toEqual([]); // e.g. nothing from cli/, test/, bench/
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const packages = new Set(
      Object.values(result.metafile.outputs)
        .flatMap((o) => o.imports)
        .filter((i) => i.external && !i.path.startsWith('node:'))
        .map((i) => (i.path.startsWith('@') ? i.path.split('/').slice(0, 2).join('/') : i.path.split('/')[0]!)),
    );
    expect([...packages].sort()).toEqual(expect.arrayContaining(['onnxruntime-node', 'tsx', 'unicode-confusables', 'zod']));
    expect([...packages].filter((name) => !(name in pkg.dependencies))).toEqual([]); // npm ci --omit=dev leaves devDependencies out
  });
});

describe('.dockerignore', () => {
  it('is an allow-list: only what the image needs is in the context, never dependencies or secrets', () => {
    const entries = readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    // Everything out first, so README, docs, cli/ or test edits never change the image hash.
    expect(entries[0]).toBe('*');
    expect(entries.filter((e) => e.startsWith('!')).sort()).toEqual(['!THIRD_PARTY_NOTICES.md', '!gpu-worker/', '!models/', '!package-lock.json', '!package.json', '!shared/', '!tsconfig.json']);
    for (const e of ['**/node_modules', '**/.env', '**/.env.*', '**/.npmrc', '**/*.pem']) expect(entries).toContain(e);
    // The exclusions come after the allow-list, so they win inside the allowed folders.
    expect(entries.indexOf('**/node_modules')).toBeGreaterThan(entries.indexOf('!gpu-worker/'));
  });
});
