/**
 * CDK entry point, and the only place in cdk/ that reads the environment.
 *
 * Stage: `-c stage=<name>` wins, then $CLIPAG_STAGE, then "dev". The stacks stay
 * environment-agnostic (no account/region), so `cdk synth` makes no AWS calls; the
 * account and region come from the CLI profile at deploy time.
 */
import { App } from 'aws-cdk-lib';
import { buildClipag } from '../lib/clipag.ts';
import { stageConfig } from '../lib/config.ts';

const app = new App();
const fromContext: unknown = app.node.tryGetContext('stage');
const stage = typeof fromContext === 'string' && fromContext !== '' ? fromContext : (process.env.CLIPAG_STAGE ?? 'dev');
const alarmEmail: unknown = app.node.tryGetContext('alarmEmail') ?? process.env.CLIPAG_ALARM_EMAIL;

// Context only: $CLIPAG_DEFAULT_MODEL is the processes' own variable (a local `clipag serve`), and a
// developer's local setting must not reach a deployment unnoticed.
const defaultModel: unknown = app.node.tryGetContext('defaultModel');

const config = stageConfig(stage, {
  ...(typeof alarmEmail === 'string' && alarmEmail !== '' ? { alarmEmail } : {}),
  ...(typeof defaultModel === 'string' && defaultModel !== '' ? { defaultModel } : {}),
});
buildClipag(app, config);
app.synth();
