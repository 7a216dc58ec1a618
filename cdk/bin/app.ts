/**
 * CDK entry point, and the only place in cdk/ that reads the environment.
 *
 * Stage: `-c stage=<name>` wins, then $CLIPAG_STAGE, then "dev". The stacks stay
 * environment-agnostic (no account/region), so `cdk synth` makes no AWS calls; the
 * account and region come from the CLI profile at deploy time.
 */
import { App } from 'aws-cdk-lib';
import { buildClipag } from '../lib/clipag.ts';
import { contextKeyWarnings, type PassedValue, selectStage } from '../lib/config.ts';

const app = new App();

/** A non-empty string from the first source that has one. */
const firstOf = (...sources: Array<[unknown, string]>): PassedValue | undefined => {
  for (const [value, from] of sources) if (typeof value === 'string' && value !== '') return { value, from };
  return undefined;
};

// A mistyped key (`-c stgae=prod`) would otherwise deploy the default stage, or the entry's values, without a word.
for (const warning of contextKeyWarnings(Object.keys(app.node.getAllContext() as Record<string, unknown>))) process.stderr.write(`${warning}\n`);

const stage = firstOf([app.node.tryGetContext('stage'), '-c stage'], [process.env.CLIPAG_STAGE, '$CLIPAG_STAGE']) ?? { value: 'dev', from: 'the default' };
const alarmEmail = firstOf([app.node.tryGetContext('alarmEmail'), '-c alarmEmail'], [process.env.CLIPAG_ALARM_EMAIL, '$CLIPAG_ALARM_EMAIL']);
// Context only: $CLIPAG_DEFAULT_MODEL is the processes' own variable (a local `clipag serve`), and a
// developer's local setting must not reach a deployment unnoticed.
const defaultModel = firstOf([app.node.tryGetContext('defaultModel'), '-c defaultModel']);

const { config, summary } = selectStage({ stage, ...(alarmEmail ? { alarmEmail } : {}), ...(defaultModel ? { defaultModel } : {}) });
// On stderr, in every synth and deploy: a value that went back to the stage table's shows here.
process.stderr.write(`${summary}\n`);
buildClipag(app, config);
app.synth();
