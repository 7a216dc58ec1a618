// The served OpenAPI 3.1 document, converted to OpenAPI 3.0.3 for the client generators that still read
// only 3.0 (oapi-codegen, openapi-generator). Pure and mechanical: it walks the document's structure so
// that it converts only Schema Objects as schemas (a property named "const" or a media type's `examples`
// map is left alone), and every keyword it meets is one it copies, converts or folds into prose. Anything
// else throws, naming the keyword and its JSON pointer, so that a schema change the 3.0 form cannot carry
// fails a test instead of serving an invalid document.

type Json = Record<string, any>;

/** A 3.1 construct with no 3.0 form this converter knows. */
export class OpenApi30ConversionError extends Error {
  constructor(
    readonly keyword: string,
    readonly path: string,
    reason: string,
  ) {
    super(`cannot convert "${keyword}" at ${path} to OpenAPI 3.0: ${reason}`);
    this.name = 'OpenApi30ConversionError';
  }
}

// The Schema Object keywords that mean the same in 3.0 (JSON Schema draft-04 subset) as in 3.1.
const SCHEMA_SAME = new Set([
  'title', 'multipleOf', 'maxLength', 'minLength', 'pattern', 'maxItems', 'minItems', 'uniqueItems',
  'maxProperties', 'minProperties', 'enum', 'description', 'format', 'default', 'discriminator', 'readOnly', 'writeOnly',
  'xml', 'externalDocs', 'example', 'deprecated',
]);

const METHODS = new Set(['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']);
const OAS_BASE_DIALECT = 'https://spec.openapis.org/oas/3.1/dialect/base';

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);
const pointer = (path: string, key: string | number) => `${path}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;
const isExtension = (key: string) => key.startsWith('x-');
const mapValues = (map: Json, path: string, convert: (value: any, path: string, key: string) => unknown): Json =>
  Object.fromEntries(Object.entries(map).map(([key, value]) => [key, convert(value, pointer(path, key), key)]));
const copy = <T>(value: T): T => structuredClone(value);

/** The 3.0.3 form of a 3.1 document. The input is not modified (the app's document shares objects between operations). */
export function toOpenApi30(doc31: Json): Json {
  if (typeof doc31.openapi !== 'string' || !doc31.openapi.startsWith('3.1.')) throw new OpenApi30ConversionError('openapi', '#/openapi', `expected a 3.1 document, got ${JSON.stringify(doc31.openapi)}`);
  const convert = new Converter(doc31);
  const out: Json = { openapi: '3.0.3' };
  for (const [key, value] of Object.entries(doc31)) {
    const path = pointer('#', key);
    switch (key) {
      case 'openapi':
        break;
      case 'info':
        out.info = convertInfo(value, doc31.webhooks !== undefined);
        break;
      case 'servers':
      case 'security':
      case 'tags':
      case 'externalDocs':
        out[key] = copy(value);
        break;
      case 'paths':
        out.paths = mapValues(value, path, (item, p, name) => (isExtension(name) ? copy(item) : convert.pathItem(item, p)));
        break;
      case 'components':
        out.components = convert.components(value, path);
        break;
      case 'webhooks':
        // 3.0 has no webhooks: kept, converted, where a reader that knows the convention finds them.
        out['x-webhooks'] = mapValues(value, path, (item, p) => convert.pathItem(item, p));
        break;
      case 'jsonSchemaDialect':
        if (value !== OAS_BASE_DIALECT) throw new OpenApi30ConversionError(key, path, 'schemas in another dialect than the OpenAPI base one');
        break;
      default:
        if (!isExtension(key)) throw new OpenApi30ConversionError(key, path, 'not an OpenAPI 3.1 top-level field this converter knows');
        out[key] = copy(value);
    }
  }
  // 3.1 makes `paths` optional; 3.0 requires it.
  out.paths ??= {};
  const schemas: Json = out.components?.schemas ?? {};
  for (const name of [...convert.nullableCopies].sort()) {
    const target = schemas[name];
    const at = `#/components/schemas/${name}`;
    if (!isObject(target) || target.type === undefined) throw new OpenApi30ConversionError('$ref', at, 'a nullable reference to a schema with no single type');
    if (schemas[`${name}${NULLABLE_COPY_SUFFIX}`] !== undefined) throw new OpenApi30ConversionError('$ref', at, `its nullable copy's name ${name}${NULLABLE_COPY_SUFFIX} is taken`);
    // 3.0.3: nullable does not add null to an enum of its own.
    schemas[`${name}${NULLABLE_COPY_SUFFIX}`] = { ...copy(target), nullable: true, ...(Array.isArray(target.enum) && !target.enum.includes(null) ? { enum: [...target.enum, null] } : {}), description: `${target.description ? `${target.description} ` : ''}(${name}, or null.)` };
  }
  return out;
}

function convertInfo(info: Json, movedWebhooks: boolean): Json {
  const { summary, license, ...rest } = copy(info);
  const out: Json = { ...rest };
  const notes = [
    ...(summary ? [String(summary)] : []),
    ...(rest.description ? [String(rest.description)] : []),
    ...(movedWebhooks ? ["The webhooks (OpenAPI 3.1's top-level `webhooks`, which 3.0 lacks) are under `x-webhooks`."] : []),
  ];
  if (notes.length) out.description = notes.join(' ');
  if (license) {
    const { identifier, ...licenseRest } = license;
    // 3.0 names a licence by its url only: the SPDX page of the identifier stands for it.
    if (identifier !== undefined) licenseRest.url ??= `https://spdx.org/licenses/${encodeURIComponent(identifier)}.html`;
    out.license = licenseRest;
  }
  return out;
}

const SCHEMAS = '#/components/schemas/';
/** The name of a component's nullable copy (a nullable reference points at it). */
export const NULLABLE_COPY_SUFFIX = 'OrNull';

class Converter {
  /** Components a nullable reference points at: each gets a nullable copy (nullableCopiesOf). */
  readonly nullableCopies = new Set<string>();
  /** Path items being inlined, to refuse a reference cycle by name rather than overflow the stack. */
  private readonly inlining = new Set<string>();
  constructor(private readonly doc31: Json) {}

  components(components: Json, path: string): Json {
    const out: Json = {};
    for (const [key, value] of Object.entries(components)) {
      const at = pointer(path, key);
      switch (key) {
        case 'schemas':
          out.schemas = mapValues(value, at, (schema, p) => this.schema(schema, p));
          break;
        case 'responses':
          out.responses = mapValues(value, at, (response, p) => this.orRef(response, p, () => this.response(response, p)));
          break;
        case 'parameters':
          out.parameters = mapValues(value, at, (parameter, p) => this.orRef(parameter, p, () => this.parameter(parameter, p)));
          break;
        case 'requestBodies':
          out.requestBodies = mapValues(value, at, (body, p) => this.orRef(body, p, () => this.requestBody(body, p)));
          break;
        case 'headers':
          out.headers = mapValues(value, at, (header, p) => this.orRef(header, p, () => this.header(header, p)));
          break;
        case 'callbacks':
          out.callbacks = mapValues(value, at, (callback, p) => this.orRef(callback, p, () => this.callback(callback, p)));
          break;
        case 'securitySchemes':
          out.securitySchemes = mapValues(value, at, (scheme, p) => {
            if (scheme.type === 'mutualTLS') throw new OpenApi30ConversionError('mutualTLS', pointer(p, 'type'), 'OpenAPI 3.0 has no mutualTLS security scheme');
            return copy(scheme);
          });
          break;
        case 'examples':
        case 'links':
          out[key] = copy(value);
          break;
        case 'pathItems':
          // 3.0 has no reusable path items: each reference to one is replaced by the item itself (pathItem below).
          break;
        default:
          if (!isExtension(key)) throw new OpenApi30ConversionError(key, at, 'not an OpenAPI 3.1 components field this converter knows');
          out[key] = copy(value);
      }
    }
    return out;
  }

  pathItem(item: Json, path: string): Json {
    if (typeof item.$ref === 'string' && item.$ref.startsWith('#/components/pathItems/')) {
      const name = item.$ref.slice('#/components/pathItems/'.length);
      const target = this.doc31.components?.pathItems?.[name];
      if (!isObject(target)) throw new OpenApi30ConversionError('$ref', pointer(path, '$ref'), `no path item ${item.$ref}`);
      if (this.inlining.has(name)) throw new OpenApi30ConversionError('$ref', pointer(path, '$ref'), `path item ${item.$ref} refers to itself`);
      const { $ref: _ref, ...siblings } = item;
      this.inlining.add(name);
      try {
        return this.pathItem({ ...target, ...siblings }, path);
      } finally {
        this.inlining.delete(name);
      }
    }
    const out: Json = {};
    for (const [key, value] of Object.entries(item)) {
      const at = pointer(path, key);
      if (METHODS.has(key)) out[key] = this.operation(value, at);
      else if (key === 'parameters') out.parameters = value.map((p: Json, i: number) => this.orRef(p, pointer(at, i), () => this.parameter(p, pointer(at, i))));
      else if (['$ref', 'summary', 'description', 'servers'].includes(key) || isExtension(key)) out[key] = copy(value);
      else throw new OpenApi30ConversionError(key, at, 'not a Path Item field this converter knows');
    }
    return out;
  }

  operation(operation: Json, path: string): Json {
    const out: Json = {};
    for (const [key, value] of Object.entries(operation)) {
      const at = pointer(path, key);
      switch (key) {
        case 'parameters':
          out.parameters = value.map((p: Json, i: number) => this.orRef(p, pointer(at, i), () => this.parameter(p, pointer(at, i))));
          break;
        case 'requestBody':
          out.requestBody = this.orRef(value, at, () => this.requestBody(value, at));
          break;
        case 'responses':
          out.responses = mapValues(value, at, (response, p, status) => (isExtension(status) ? copy(response) : this.orRef(response, p, () => this.response(response, p))));
          break;
        case 'callbacks':
          out.callbacks = mapValues(value, at, (callback, p) => this.orRef(callback, p, () => this.callback(callback, p)));
          break;
        case 'tags':
        case 'summary':
        case 'description':
        case 'externalDocs':
        case 'operationId':
        case 'deprecated':
        case 'security':
        case 'servers':
          out[key] = copy(value);
          break;
        default:
          if (!isExtension(key)) throw new OpenApi30ConversionError(key, at, 'not an Operation field this converter knows');
          out[key] = copy(value);
      }
    }
    return out;
  }

  callback(callback: Json, path: string): Json {
    return mapValues(callback, path, (item, p, expression) => (isExtension(expression) ? copy(item) : this.pathItem(item, p)));
  }

  parameter(parameter: Json, path: string): Json {
    return this.parameterLike(parameter, path, ['name', 'in', 'description', 'required', 'deprecated', 'allowEmptyValue', 'style', 'explode', 'allowReserved', 'example', 'examples']);
  }

  header(header: Json, path: string): Json {
    return this.parameterLike(header, path, ['description', 'required', 'deprecated', 'allowEmptyValue', 'style', 'explode', 'allowReserved', 'example', 'examples']);
  }

  private parameterLike(object: Json, path: string, same: string[]): Json {
    const out: Json = {};
    for (const [key, value] of Object.entries(object)) {
      const at = pointer(path, key);
      if (key === 'schema') out.schema = this.schema(value, at);
      else if (key === 'content') out.content = this.content(value, at);
      else if (same.includes(key) || isExtension(key)) out[key] = copy(value);
      else throw new OpenApi30ConversionError(key, at, 'not a Parameter or Header field this converter knows');
    }
    return out;
  }

  requestBody(body: Json, path: string): Json {
    const out: Json = {};
    for (const [key, value] of Object.entries(body)) {
      const at = pointer(path, key);
      if (key === 'content') out.content = this.content(value, at);
      else if (key === 'description' || key === 'required' || isExtension(key)) out[key] = copy(value);
      else throw new OpenApi30ConversionError(key, at, 'not a Request Body field this converter knows');
    }
    return out;
  }

  response(response: Json, path: string): Json {
    const out: Json = {};
    for (const [key, value] of Object.entries(response)) {
      const at = pointer(path, key);
      if (key === 'content') out.content = this.content(value, at);
      else if (key === 'headers') out.headers = mapValues(value, at, (header, p) => this.orRef(header, p, () => this.header(header, p)));
      else if (key === 'description' || key === 'links' || isExtension(key)) out[key] = copy(value);
      else throw new OpenApi30ConversionError(key, at, 'not a Response field this converter knows');
    }
    return out;
  }

  private content(content: Json, path: string): Json {
    return mapValues(content, path, (media, p) => {
      const out: Json = {};
      for (const [key, value] of Object.entries<any>(media)) {
        const at = pointer(p, key);
        if (key === 'schema') out.schema = this.schema(value, at);
        else if (key === 'encoding')
          out.encoding = mapValues(value, at, (encoding, pe) => {
            const { headers, ...rest } = encoding;
            return { ...copy(rest), ...(headers ? { headers: mapValues(headers, pointer(pe, 'headers'), (h, ph) => this.orRef(h, ph, () => this.header(h, ph))) } : {}) };
          });
        else if (key === 'example' || key === 'examples' || isExtension(key)) out[key] = copy(value);
        else throw new OpenApi30ConversionError(key, at, 'not a Media Type field this converter knows');
      }
      return out;
    });
  }

  /** A Reference Object where one may stand, else the object converted. */
  private orRef(value: Json, path: string, convert: () => Json): Json {
    if (!isObject(value) || !('$ref' in value)) return convert();
    for (const key of Object.keys(value)) {
      // 3.1 lets a reference override its target's summary and description; a 3.0 reader ignores them.
      if (key !== '$ref') throw new OpenApi30ConversionError(key, pointer(path, key), "a 3.0 Reference Object has only $ref (its siblings would be ignored)");
    }
    return { $ref: this.ref(value.$ref, pointer(path, '$ref')) };
  }

  private ref(ref: unknown, path: string): string {
    if (typeof ref !== 'string') throw new OpenApi30ConversionError('$ref', path, 'not a string');
    if (ref.startsWith('#/components/pathItems/')) throw new OpenApi30ConversionError('$ref', path, 'a reference to a reusable path item outside a Path Item');
    return ref.startsWith('#/webhooks/') ? `#/x-webhooks/${ref.slice('#/webhooks/'.length)}` : ref;
  }

  /** A 3.1 Schema Object (JSON Schema 2020-12) as a 3.0 one. */
  schema(schema: unknown, path: string): Json {
    if (schema === true) return {};
    if (schema === false) return { not: {} };
    if (!isObject(schema)) throw new OpenApi30ConversionError('schema', path, 'a schema is an object or a boolean');
    const { $ref, ...siblings } = schema;
    if ($ref !== undefined) {
      if (Object.keys(siblings).every((key) => key === '$comment')) return { $ref: this.ref($ref, pointer(path, '$ref')) };
      // A 3.0 reader ignores everything beside a $ref: in allOf, the reference and its siblings both apply.
      return this.schema({ ...siblings, allOf: [{ $ref }, ...(siblings.allOf ?? [])] }, path);
    }
    const { schema: flattened, nullable: nullFromBranches } = withoutNullBranches(schema);
    const out: Json = {};
    const notes: string[] = [];
    let nullable = nullFromBranches;
    for (const [key, value] of Object.entries(flattened)) {
      const at = pointer(path, key);
      if (SCHEMA_SAME.has(key) || isExtension(key)) {
        out[key] = copy(value);
        continue;
      }
      switch (key) {
        case 'type': {
          const types: unknown[] = Array.isArray(value) ? value : [value];
          const nonNull = types.filter((type) => type !== 'null');
          if (nonNull.length !== 1) throw new OpenApi30ConversionError('type', at, `${JSON.stringify(value)}: a 3.0 schema has exactly one type (null only as nullable)`);
          out.type = nonNull[0];
          if (nonNull.length < types.length) nullable = true;
          break;
        }
        case 'const':
          if (value === null) throw new OpenApi30ConversionError('const', at, 'a null constant');
          if (flattened.enum !== undefined) throw new OpenApi30ConversionError('const', at, 'beside an enum');
          out.enum = [copy(value)];
          break;
        case 'examples':
          if (!Array.isArray(value)) throw new OpenApi30ConversionError('examples', at, 'not an array');
          // 3.0 has one example; the first stands for them.
          if (value.length && flattened.example === undefined) out.example = copy(value[0]);
          break;
        case 'minimum':
        case 'maximum':
        case 'exclusiveMinimum':
        case 'exclusiveMaximum': {
          const side = key === 'minimum' || key === 'exclusiveMinimum' ? 'minimum' : 'maximum';
          const exclusiveKey = side === 'minimum' ? 'exclusiveMinimum' : 'exclusiveMaximum';
          if (side in out) break; // written with its pair
          const bound = tighterBound(side, flattened[side], flattened[exclusiveKey], pointer(path, exclusiveKey));
          out[side] = bound.value;
          if (bound.exclusive) out[exclusiveKey] = true;
          break;
        }
        case 'required':
          // 3.0 (draft-04) requires a non-empty list; an empty one requires nothing.
          if (!Array.isArray(value)) throw new OpenApi30ConversionError(key, at, 'not an array');
          if (value.length) out.required = [...value];
          break;
        case 'properties':
          out.properties = mapValues(value, at, (property, p) => this.schema(property, p));
          break;
        case 'additionalProperties':
          out.additionalProperties = typeof value === 'boolean' ? value : this.schema(value, at);
          break;
        case 'items':
          if (value === false && flattened.prefixItems !== undefined) break; // prefixItems below bounds the length
          if (Array.isArray(value)) throw new OpenApi30ConversionError('items', at, 'an array of schemas is not JSON Schema 2020-12 (prefixItems is)');
          out.items = this.schema(value, at);
          break;
        case 'not':
          out.not = this.schema(value, at);
          break;
        case 'allOf':
        case 'anyOf':
        case 'oneOf':
          if (!Array.isArray(value)) throw new OpenApi30ConversionError(key, at, 'not an array');
          out[key] = value.map((branch, i) => this.schema(branch, pointer(at, i)));
          break;
        case 'prefixItems': {
          if (!Array.isArray(value)) throw new OpenApi30ConversionError(key, at, 'not an array');
          // 3.0 has no tuples: each item is one of the listed schemas (a looser form), the positions in prose.
          // With items beside it, items bounds only the later positions: no 3.0 form says that.
          if (flattened.items !== undefined && flattened.items !== false) throw new OpenApi30ConversionError(key, at, 'beside items, which then applies to the later items only');
          out.items = { anyOf: value.map((item, i) => this.schema(item, pointer(at, i))) };
          if (flattened.items === false && flattened.maxItems === undefined) out.maxItems = value.length;
          notes.push(`Item i (from 0) must satisfy prefixItems[i] of ${JSON.stringify(value)}.`);
          break;
        }
        case 'unevaluatedProperties':
          // Without composition it means what additionalProperties does.
          if (!['allOf', 'anyOf', 'oneOf', 'not', 'if', 'dependentSchemas', 'additionalProperties', 'patternProperties'].some((k) => k in flattened)) {
            out.additionalProperties = typeof value === 'boolean' ? value : this.schema(value, at);
          } else notes.push(fold(key, value));
          break;
        case 'contentEncoding':
          if (value === 'base64' && flattened.format === undefined) out.format = 'byte';
          notes.push(fold(key, value));
          break;
        case 'contains':
        case 'minContains':
        case 'maxContains':
        case 'propertyNames':
        case 'patternProperties':
        case 'dependentRequired':
        case 'dependentSchemas':
        case 'if':
        case 'then':
        case 'else':
        case 'unevaluatedItems':
        case 'contentMediaType':
        case 'contentSchema':
          // OpenAPI 3.0 has no such keyword: the rule stays readable in the description, unenforced.
          notes.push(fold(key, value));
          break;
        case '$comment':
          break;
        default:
          throw new OpenApi30ConversionError(key, at, 'no OpenAPI 3.0 form known for this schema keyword');
      }
    }
    if (nullable) {
      const only = Array.isArray(out.allOf) && out.allOf.length === 1 ? out.allOf[0] : undefined;
      if (out.type !== undefined) out.nullable = true;
      else if (isObject(only) && typeof only.$ref === 'string' && only.$ref.startsWith(SCHEMAS) && !out.anyOf && !out.oneOf) {
        // 3.0's nullable needs a type beside it (a strict reader, Ajv's among them, refuses the schema
        // otherwise), and null must pass the reference too: it points at a nullable copy of its target.
        const name = only.$ref.slice(SCHEMAS.length);
        this.nullableCopies.add(name);
        out.allOf = [{ $ref: `${SCHEMAS}${name}${NULLABLE_COPY_SUFFIX}` }];
      } else throw new OpenApi30ConversionError('type', path, 'null allowed beside no single type or schema reference: 3.0 has no null type');
    }
    if (notes.length) out.description = [out.description, ...notes].filter(Boolean).reduce((text, note) => `${text}${/[.!?:]$/.test(text) ? '' : '.'} ${note}`);
    return out;
  }
}

/**
 * 3.1 writes "X or null" as anyOf/oneOf [X, {type: "null"}]; 3.0 as X with nullable. The null branch goes;
 * a lone remaining branch is merged in (inline) or kept in allOf (a reference, which may have no siblings).
 */
function withoutNullBranches(schema: Json): { schema: Json; nullable: boolean } {
  let nullable = false;
  let out = schema;
  for (const key of ['anyOf', 'oneOf'] as const) {
    const branches = out[key];
    if (!Array.isArray(branches) || !branches.some(isNullSchema)) continue;
    nullable = true;
    const rest = branches.filter((branch) => !isNullSchema(branch));
    const { [key]: _branches, ...others } = out;
    if (rest.length === 0) throw new OpenApi30ConversionError(key, '(a schema)', 'only null branches: 3.0 has no null type');
    if (rest.length !== 1) {
      out = { ...others, [key]: rest };
      continue;
    }
    const [only] = rest;
    const mergeable = isObject(only) && !('$ref' in only) && Object.keys(only).every((k) => !(k in others));
    if (!mergeable) {
      out = { ...others, allOf: [...(others.allOf ?? []), only] };
      continue;
    }
    // Merged, the branch's own list of values must now admit null, which the removed branch allowed (3.0's
    // nullable does not add null to an enum).
    const { const: constant, ...merged }: Json = { ...only, ...others };
    if (constant !== undefined) merged.enum = [constant];
    if (Array.isArray(merged.enum) && !merged.enum.includes(null)) merged.enum = [...merged.enum, null];
    out = merged;
  }
  return { schema: out, nullable };
}

function isNullSchema(schema: unknown): boolean {
  if (!isObject(schema)) return false;
  const { type, description: _description, title: _title, ...rest } = schema;
  return Object.keys(rest).length === 0 && (type === 'null' || (Array.isArray(type) && type.length === 1 && type[0] === 'null'));
}

/** A JSON Schema rule 3.0 cannot state, in words a reader (or a human-facing generator) keeps. */
function fold(keyword: string, value: unknown): string {
  switch (keyword) {
    case 'contains':
      return `At least one item must be ${describe(value)}.`;
    case 'minContains':
      return `At least ${value} items must match \`contains\`.`;
    case 'maxContains':
      return `At most ${value} items may match \`contains\`.`;
    case 'propertyNames':
      return `Each property name must be ${describe(value)}.`;
    case 'dependentRequired':
      return Object.entries(value as Record<string, string[]>)
        .map(([name, needs]) => `With ${name}, also required: ${needs.join(', ')}.`)
        .join(' ');
    default:
      return `JSON Schema ${keyword}: ${JSON.stringify(value)}.`;
  }
}

function describe(schema: unknown): string {
  if (isObject(schema) && Object.keys(schema).length === 1 && 'const' in schema) return JSON.stringify(schema.const);
  if (isObject(schema) && Object.keys(schema).length === 1 && Array.isArray(schema.enum)) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  return `valid against the JSON Schema ${JSON.stringify(schema)}`;
}

/** 3.1 may state an inclusive and an exclusive bound on one side, and both apply; 3.0 has one number per side. */
function tighterBound(side: 'minimum' | 'maximum', inclusive: unknown, exclusive: unknown, exclusivePath: string): { value: unknown; exclusive: boolean } {
  if (exclusive === undefined) return { value: inclusive, exclusive: false };
  if (typeof exclusive !== 'number') throw new OpenApi30ConversionError(exclusivePath.split('/').pop()!, exclusivePath, "not a number (the boolean form is 3.0's, not 3.1's)");
  if (typeof inclusive !== 'number') return { value: exclusive, exclusive: true };
  const exclusiveIsTighter = side === 'minimum' ? exclusive >= inclusive : exclusive <= inclusive;
  return exclusiveIsTighter ? { value: exclusive, exclusive: true } : { value: inclusive, exclusive: false };
}
