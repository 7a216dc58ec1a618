// The Lambda composition root: config parsed once at cold start, S3/SQS clients built once,
// the app built once. Everything else lives in createApp.
import { handle } from 'hono/aws-lambda';
import { parseConfig, type AwsConfig } from '../shared/config.ts';
import { ConfigError } from '../shared/errors.ts';
import { createApp } from './app.ts';
import { awsDeps } from './deps/aws.ts';

function awsConfig(env: Readonly<Record<string, string | undefined>>): AwsConfig {
  const config = parseConfig(env);
  if (config.mode !== 'aws') throw new ConfigError(['CLIPAG_MODE: must be "aws" in Lambda (got "local")']);
  return config;
}

export const handler = handle(createApp(awsDeps(awsConfig(process.env))));
