// The Lambda composition root: config parsed once at cold start, S3/SQS clients built once,
// the app built once. Everything else lives in createApp. `handle` passes the event's requestContext
// in the app's env: the request-id middleware takes API Gateway's request id from it.
import { handle } from 'hono/aws-lambda';
import { createApp } from './app.ts';
import { awsConfig, awsDeps } from './deps/aws.ts';

export const handler = handle(createApp(awsDeps(awsConfig(process.env))));
