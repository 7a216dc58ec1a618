import type { StageName } from './config.ts';

/**
 * The CloudWatch namespace of every custom metric a stage's metric filters publish (the alarms' and the
 * dashboard's): `Clipag/<stage>`. Both stages may live in one account and region, and a metric filter
 * cannot add a constant dimension, so the stage is in the namespace: without it dev's error lines and
 * queued waits fired prod's alarms and mixed into prod's graphs (the operator review, H1).
 */
export function metricNamespace(stage: StageName): string {
  return `Clipag/${stage}`;
}
