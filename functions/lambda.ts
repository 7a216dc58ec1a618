// The Lambda composition root: config parsed once at cold start, S3/SQS clients built once,
// the app built once. Everything else lives in createApp.
import { handle } from 'hono/aws-lambda';
import { createApp } from './app.ts';
import { awsConfig, awsDeps } from './deps/aws.ts';

export const handler = handle(createApp(awsDeps(awsConfig(process.env))));
