'use strict';
// Preloaded (NODE_OPTIONS=--require, so that the engine's worker threads get it too) by
// test/engine/ort-binding.test.ts: onnxruntime-node's native binding fails to load, as on a platform
// the package has no build for (darwin/x64: "Cannot find module
// '../bin/napi-v6/darwin/x64/onnxruntime_binding.node'"). CLIPAG_TEST_ORT_BINDING=broken makes it fail
// as a binding that exists but does not load (a missing shared library) instead.
const Module = require('node:module');

const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (typeof request === 'string' && request.endsWith('onnxruntime_binding.node')) {
    if (process.env.CLIPAG_TEST_ORT_BINDING === 'broken') {
      const e = new Error(`${request}: libonnxruntime.so.1: cannot open shared object file: No such file or directory`);
      e.code = 'ERR_DLOPEN_FAILED';
      throw e;
    }
    const e = new Error(`Cannot find module '${request}'`);
    e.code = 'MODULE_NOT_FOUND';
    throw e;
  }
  return resolveFilename.call(this, request, ...rest);
};
