// onnxruntime-node ships native bindings for a few platforms only (1.30: darwin/arm64, linux/x64|arm64,
// win32/x64|arm64). Elsewhere (an Intel Mac, an x64 Node under Rosetta, linux/ia32) loading it fails;
// the engine must say so as an EngineError that names the platform and what to run instead, and the
// CLI must print that as one line, not the bare "Cannot find module …onnxruntime_binding.node".
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import ortDirect from 'onnxruntime-node';
import { REPO_ROOT } from '../../cli/common.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { SHIPPED_ORT_BUILDS, loadOrt, missingBindingMessage, ortLoadError } from '../../gpu-worker/engine/runtime/ort.ts';
import { freePort } from '../helpers/serve.ts';

const HOOK = join(REPO_ROOT, 'test', 'helpers', 'ort-binding-hook.cjs');
const HERE = `${process.platform}/${process.arch}`;
const tmp = mkdtempSync(join(tmpdir(), 'clipag-ort-binding-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** `<platform>/<arch>` of every binding the installed onnxruntime-node holds. */
function installedBuilds(): string[] {
  const napi = join(REPO_ROOT, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6');
  return readdirSync(napi).flatMap((p) => readdirSync(join(napi, p)).map((a) => `${p}/${a}`)).sort();
}

/** The error a require of the binding gives on darwin/x64 (onnxruntime-node 1.30, Node 20). */
function darwinX64RequireError(): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(
    "Cannot find module '../bin/napi-v6/darwin/x64/onnxruntime_binding.node'\nRequire stack:\n- /app/node_modules/onnxruntime-node/dist/binding.js\n- /app/node_modules/onnxruntime-node/dist/backend.js",
  );
  e.code = 'MODULE_NOT_FOUND';
  return e;
}

/** `clipag ARGV` in a child process whose onnxruntime-node binding fails to load (see ort-binding-hook.cjs). */
function clipagWithoutBinding(argv: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bin/clipag.ts', ...argv], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 110_000,
    // NODE_OPTIONS, not --require: the engine loads onnxruntime in worker threads, which start with no execArgv.
    env: { ...process.env, ...env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${JSON.stringify(HOOK)}`.trim() },
  });
  return { status: r.status, signal: r.signal, stderr: r.stderr, stdout: r.stdout };
}

describe('the message for a platform onnxruntime-node has no binding for', () => {
  it('names the platform, the builds the package ships, and where clipag runs instead', () => {
    const m = missingBindingMessage({ platform: 'darwin', arch: 'x64', builds: SHIPPED_ORT_BUILDS, version: '1.30.0' });
    expect(m).toContain('onnxruntime-node 1.30.0 has no native binding for darwin/x64 (this Node is darwin x64)');
    expect(m).toContain('it ships builds for darwin/arm64, linux/arm64, linux/x64, win32/arm64, win32/x64 only');
    expect(m).toMatch(/Apple Silicon Mac with an arm64 Node \(not an x64 Node under Rosetta/);
    expect(m).toContain('Linux x64/arm64 or Windows x64/arm64');
    expect(m).toContain('Linux container');
    expect(m).not.toContain('incomplete install');
    expect(m).not.toContain('\n');
  });

  it('on a platform the package lists, says the install is incomplete and to reinstall', () => {
    const m = missingBindingMessage({ platform: 'linux', arch: 'x64', builds: SHIPPED_ORT_BUILDS });
    expect(m).toMatch(/^onnxruntime-node has no native binding for linux\/x64 although the package lists that build \(an incomplete install: reinstall the dependencies with `npm ci`\)/);
  });

  it('the fallback list of builds is what the installed package holds', () => {
    // Read when the package folder cannot be; a newer onnxruntime-node with other builds must update it.
    expect(installedBuilds()).toEqual([...SHIPPED_ORT_BUILDS]);
  });
});

describe('ortLoadError', () => {
  it('turns the missing-binding require error into runtime_unavailable, with the builds read from the installed package', () => {
    const e = ortLoadError(darwinX64RequireError(), { platform: 'darwin', arch: 'x64' });
    expect(e).toBeInstanceOf(EngineError);
    expect(e.code).toBe('runtime_unavailable');
    const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as { version: string }).version;
    expect(e.message).toBe(missingBindingMessage({ platform: 'darwin', arch: 'x64', builds: installedBuilds(), version }));
    expect(e.detail).toMatchObject({ platform: 'darwin', arch: 'x64', builds: installedBuilds() });
    expect(e.detail.cause).toBe("Cannot find module '../bin/napi-v6/darwin/x64/onnxruntime_binding.node'"); // without the require stack
  });

  it('keeps the message of any other load failure (a binding that exists but does not load)', () => {
    const cause: NodeJS.ErrnoException = new Error('/app/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/onnxruntime_binding.node: libonnxruntime.so.1: cannot open shared object file: No such file or directory');
    cause.code = 'ERR_DLOPEN_FAILED';
    const e = ortLoadError(cause, { platform: 'linux', arch: 'x64' });
    expect(e.code).toBe('runtime_unavailable');
    expect(e.message).toBe(`cannot load onnxruntime-node on linux/x64: ${cause.message}`);
    expect(e.message).not.toContain('no native binding');
  });

  it('says to install the dependencies when the package itself is missing', () => {
    const cause: NodeJS.ErrnoException = new Error("Cannot find module 'onnxruntime-node'\nRequire stack:\n- /app/gpu-worker/engine/runtime/ort-require.cjs");
    cause.code = 'MODULE_NOT_FOUND';
    const e = ortLoadError(cause, { platform: 'linux', arch: 'x64' });
    expect(e.code).toBe('runtime_unavailable');
    expect(e.message).toBe("cannot load onnxruntime-node: Cannot find module 'onnxruntime-node'; install the dependencies with `npm ci`");
  });
});

describe('loadOrt', () => {
  it('on this platform loads onnxruntime-node once: the package itself, the same object on every call', () => {
    const ort = loadOrt();
    expect(ort.InferenceSession).toBe(ortDirect.InferenceSession);
    expect(ort.Tensor).toBe(ortDirect.Tensor);
    expect(loadOrt()).toBe(ort);
  });

  it('is the only value load of onnxruntime-node outside the tests (everything else imports its types only)', () => {
    const loads: string[] = [];
    const walk = (dir: string): void => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (name === 'node_modules') continue;
        if (statSync(path).isDirectory()) walk(path);
        else if (/\.(?:[cm]?ts|[cm]?js)$/.test(name) && !name.endsWith('.d.ts') && !name.endsWith('.d.cts')) {
          const text = readFileSync(path, 'utf8');
          const valueLoads = text.split('\n').filter((line) => /(?:from\s+|require\(\s*|import\(\s*)['"]onnxruntime-node['"]/.test(line) && !/^\s*import\s+type\b/.test(line));
          if (valueLoads.length > 0) loads.push(relative(REPO_ROOT, path));
        }
      }
    };
    for (const dir of ['gpu-worker', 'functions', 'shared', 'cli', 'bin', 'bench', 'cdk']) if (existsSync(join(REPO_ROOT, dir))) walk(join(REPO_ROOT, dir));
    expect(loads).toEqual([join('gpu-worker', 'engine', 'runtime', 'ort-require.cjs')]);
  });
});

describe('the CLI on a platform without an onnxruntime binding', () => {
  it('generate exits 1 with one line naming the platform and the remedy, no stack', () => {
    const out = join(tmp, 'generate.png');
    const r = clipagWithoutBinding(['generate', 'a red circle', '-o', out]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(1);
    const lines = r.stderr.split('\n').filter((l) => l.includes('onnxruntime'));
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^clipag generate: onnxruntime-node \\S+ has no native binding for ${HERE}`));
    expect(lines[0]).toContain('Apple Silicon Mac with an arm64 Node');
    expect(lines[0]).toContain('Linux x64/arm64 or Windows x64/arm64');
    expect(lines[0]).toMatch(/\[runtime_unavailable\]$/);
    expect(r.stderr).not.toContain('Require stack');
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(existsSync(out)).toBe(false);
  });

  it('generate reports a binding that exists but does not load with its own message', () => {
    const r = clipagWithoutBinding(['generate', 'a red circle', '-o', join(tmp, 'broken.png')], { CLIPAG_TEST_ORT_BINDING: 'broken' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^clipag generate: cannot load onnxruntime-node on ${HERE}: .*libonnxruntime\\.so\\.1: cannot open shared object file.*\\[runtime_unavailable\\]$`, 'm'));
    expect(r.stderr).not.toContain('no native binding');
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it('serve exits 1 before anything starts, with the same one line (no "running" banner, no data folder)', async () => {
    const port = await freePort();
    const r = clipagWithoutBinding(['serve', '--port', String(port), '--data', join(tmp, 'data')]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(1);
    const lines = r.stderr.split('\n').filter((l) => l.includes('onnxruntime'));
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^clipag serve: onnxruntime-node \\S+ has no native binding for ${HERE}.*Apple Silicon Mac with an arm64 Node.*\\[runtime_unavailable\\]$`));
    expect(r.stderr).not.toContain('running at');
    expect(r.stderr).not.toContain('Require stack');
    expect(existsSync(join(tmp, 'data'))).toBe(false);
  });
});
