// Device -> onnxruntime execution providers. The runtime folder is the only place that uses
// onnxruntime-node (loaded by ort.ts); everything else talks TensorData and EngineSession.

import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { EngineError } from '../errors.ts';
import { loadOrt, ortPackageDir } from './ort.ts';

export type Device = 'cpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

export interface BackendInfo {
  name: string;
  /** false: the backend is known to this build but its provider library is a separate download. */
  bundled: boolean;
}

const CUDA_INSTALL_HINT =
  'install the CUDA execution provider with `npm install onnxruntime-node --onnxruntime-node-install=cuda12` ' +
  '(and remove onnxruntime-node-install=skip from .npmrc), on a machine with an NVIDIA driver, CUDA 12 and cuDNN 9; ' +
  "or run with device 'cpu'";

/** Folders that hold the native binding (where onnxruntime-node puts downloaded provider libraries). */
function bindingDirs(): string[] {
  const bin = join(ortPackageDir(), 'bin');
  if (!existsSync(bin)) return [];
  return readdirSync(bin)
    .filter((d) => d.startsWith('napi-v'))
    .map((d) => join(bin, d, process.platform, process.arch))
    .filter((d) => existsSync(d));
}

/** True when the CUDA provider library sits next to the native binding. */
export function cudaProviderInstalled(): boolean {
  const lib = process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so';
  return bindingDirs().some((d) => existsSync(join(d, lib)));
}

export function listBackends(): BackendInfo[] {
  return loadOrt().listSupportedBackends().map((b) => ({ name: b.name, bundled: b.bundled }));
}

/**
 * Pure mapping, testable with any backend list: the execution-provider list for a device, or a
 * runtime_unavailable error that says how to get the provider.
 */
export function providersFor(device: Device, backends: readonly BackendInfo[], cudaLibPresent: boolean): string[] {
  switch (device) {
    case 'cpu':
      if (!backends.some((b) => b.name === 'cpu')) {
        throw new EngineError('runtime_unavailable', 'this onnxruntime-node build has no CPU backend; reinstall onnxruntime-node', { device });
      }
      return ['cpu'];
    case 'cuda': {
      const cuda = backends.find((b) => b.name === 'cuda');
      if (!cuda) {
        throw new EngineError('runtime_unavailable', `onnxruntime-node for ${process.platform}/${process.arch} has no CUDA backend; CUDA needs linux/x64 or win32/x64 — ${CUDA_INSTALL_HINT}`, { device });
      }
      if (!cuda.bundled && !cudaLibPresent) {
        throw new EngineError('runtime_unavailable', `the CUDA execution provider is not installed: ${CUDA_INSTALL_HINT}`, { device });
      }
      // Only CUDA is listed: if the CUDA provider cannot start, session creation fails (runtime_unavailable)
      // instead of the whole job running on the CPU, 50x slower and misreporting cost. Single nodes
      // without a CUDA kernel (shape plumbing; possibly an op of a foreign tower) still run on
      // onnxruntime's implicit CPU fallback, with copies around them; our own towers' float ops all
      // have CUDA kernels.
      return ['cuda'];
    }
    default:
      throw new EngineError('invalid_input', `unknown device '${String(device)}'; use one of ${DEVICES.join(', ')}`, { device });
  }
}

/** Execution providers for `device` on this machine. */
export function executionProviders(device: Device = 'cpu'): string[] {
  return providersFor(device, listBackends(), device === 'cuda' ? cudaProviderInstalled() : false);
}
