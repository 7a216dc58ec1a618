'use strict';
// onnxruntime-node, required when ort.ts first asks for it. A plain require() in a CommonJS file, not
// createRequire() or import() in ort.ts: it is synchronous (executionProviders and the tensor helpers
// are), and bundlers see it (the worker image's check that every package it loads is a production
// dependency, test/cdk/dockerfile.test.ts, reads the bundler's imports).
module.exports = function requireOrt() {
  return require('onnxruntime-node');
};
