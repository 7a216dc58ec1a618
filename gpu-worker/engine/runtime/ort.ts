// The one module that loads onnxruntime-node (through ort-require.cjs); session.ts and providers.ts
// reach it through loadOrt() and import only its types. It is loaded on first use, not when a module
// imports this one: its native binding exists for a few platforms only, and on any other (an Intel
// Mac, an x64 Node under Rosetta, linux/ia32) the require fails with a bare "Cannot find module
// '../bin/napi-v6/darwin/x64/onnxruntime_binding.node'". Loaded here, that failure becomes an
// EngineError (runtime_unavailable) that names the platform and what to run instead, thrown where
// the engine is first used, which the CLI prints as one line.

import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { EngineError } from '../errors.ts';
import requireOrt from './ort-require.cjs';

/** onnxruntime-node's exports (InferenceSession, Tensor, listSupportedBackends, …). */
export type Ort = ReturnType<typeof requireOrt>;

/**
 * The builds onnxruntime-node 1.30 ships (bin/napi-v6/<platform>/<arch>): what an error names when
 * the package's own folder cannot be read.
 */
export const SHIPPED_ORT_BUILDS: readonly string[] = ['darwin/arm64', 'linux/arm64', 'linux/x64', 'win32/arm64', 'win32/x64'];

let loaded: Ort | undefined;
/** A failed load is not retried: the binding does not appear while the process runs. */
let loadFailure: EngineError | undefined;

/** onnxruntime-node, loaded once; a load failure is an EngineError('runtime_unavailable'). */
export function loadOrt(): Ort {
  if (loaded) return loaded;
  if (loadFailure) throw loadFailure;
  try {
    loaded = requireOrt();
    return loaded;
  } catch (e) {
    loadFailure = ortLoadError(e);
    throw loadFailure;
  }
}

/** onnxruntime-node's package folder (holds package.json and bin/). */
export function ortPackageDir(): string {
  return dirname(dirname(createRequire(import.meta.url).resolve('onnxruntime-node')));
}

/** The installed onnxruntime-node's version, or undefined when its package.json cannot be read. */
function installedVersion(): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(ortPackageDir(), 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/** `<platform>/<arch>` of every native build in the installed package, or undefined when its bin folder cannot be read. */
function installedBuilds(): string[] | undefined {
  try {
    const napi = join(ortPackageDir(), 'bin', 'napi-v6');
    const builds = readdirSync(napi).flatMap((platform) => readdirSync(join(napi, platform)).map((arch) => `${platform}/${arch}`));
    return builds.length > 0 ? builds.sort() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What to say when onnxruntime-node has no native binding for `platform/arch`: the platform, the
 * builds the package ships, and where clipag runs instead. A package that lists this platform lacks
 * the binding file itself (an incomplete install), so the message then says to reinstall as well.
 */
export function missingBindingMessage(p: { platform: string; arch: string; builds: readonly string[]; version?: string }): string {
  const here = `${p.platform}/${p.arch}`;
  const incomplete = p.builds.includes(here)
    ? ` although the package lists that build (an incomplete install: reinstall the dependencies with \`npm ci\`)`
    : ` (this Node is ${p.platform} ${p.arch})`;
  return (
    `onnxruntime-node${p.version ? ` ${p.version}` : ''} has no native binding for ${here}${incomplete}; ` +
    `it ships builds for ${p.builds.join(', ')} only. ` +
    'Run clipag on an Apple Silicon Mac with an arm64 Node (not an x64 Node under Rosetta: `node -p process.arch` must print arm64), ' +
    'on Linux x64/arm64 or Windows x64/arm64, or in a Linux container (e.g. the node:22 image, with `npm ci` run inside it)'
  );
}

/** The error of a failed onnxruntime-node load: a missing native binding says so; anything else keeps its own message. */
export function ortLoadError(
  e: unknown,
  where: { platform: string; arch: string } = { platform: process.platform, arch: process.arch },
): EngineError {
  const err = e as NodeJS.ErrnoException | undefined;
  // A MODULE_NOT_FOUND message goes on with "\nRequire stack:\n- …", which says nothing to a user.
  const message = String(err?.message ?? e).split('\nRequire stack:')[0]!.trim();
  if (err?.code === 'MODULE_NOT_FOUND' && message.includes('onnxruntime_binding.node')) {
    const builds = installedBuilds() ?? [...SHIPPED_ORT_BUILDS];
    return new EngineError('runtime_unavailable', missingBindingMessage({ ...where, builds, version: installedVersion() }), {
      platform: where.platform,
      arch: where.arch,
      builds,
      cause: message,
    });
  }
  if (err?.code === 'MODULE_NOT_FOUND' && /'onnxruntime-(?:node|common)'/.test(message)) {
    return new EngineError('runtime_unavailable', `cannot load onnxruntime-node: ${message}; install the dependencies with \`npm ci\``, { cause: message });
  }
  return new EngineError('runtime_unavailable', `cannot load onnxruntime-node on ${where.platform}/${where.arch}: ${message}`, { cause: message });
}
