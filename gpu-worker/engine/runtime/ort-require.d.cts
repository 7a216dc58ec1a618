// Types of ort-require.cjs.
declare function requireOrt(): typeof import('onnxruntime-node');
export = requireOrt;
