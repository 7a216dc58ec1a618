// ECS task scale-in protection (ADR 0003). The fleet scales by backlog with exact task counts, so
// when the backlog shrinks ECS may stop any task, a busy one included. A worker holding a job
// marks its task protected through the ECS agent's endpoint, and clears the mark when the job is
// settled; idle tasks stay unprotected and are the ones scale-in takes.
//
// Protection is an optimization: if the agent cannot be reached, the job still runs (a stopped
// task drains and gives its message back, as on any SIGTERM).

import type { Logger } from './worker.ts';

export interface TaskProtection {
  /** Protects the task for `minutes` (1..2880), from now. */
  protect(minutes: number): Promise<void>;
  /** Makes the task eligible for scale-in again. */
  unprotect(): Promise<void>;
}

/** Outside ECS (local mode, tests): nothing to protect. */
export const noTaskProtection: TaskProtection = {
  protect: async () => undefined,
  unprotect: async () => undefined,
};

const MAX_MINUTES = 2880; // the agent's limit (48 h)

/**
 * The agent endpoint `$ECS_AGENT_URI/task-protection/v1/state` (agent ≥ 1.65; the task role needs
 * ecs:UpdateTaskProtection). Failures are logged, never thrown.
 */
export function ecsTaskProtection(agentUri: string, log: Logger, fetchImpl: typeof fetch = fetch): TaskProtection {
  const url = `${agentUri.replace(/\/+$/, '')}/task-protection/v1/state`;
  const put = async (body: { ProtectionEnabled: boolean; ExpiresInMinutes?: number }): Promise<void> => {
    try {
      const res = await fetchImpl(url, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      // The agent answers 200 with {"protection": …}, or an error status / {"failure": …} / {"error": …}.
      let parsed: Record<string, unknown> = {};
      try {
        parsed = JSON.parse(text) as Record<string, unknown>;
      } catch {
        // a non-JSON body is reported below by status
      }
      if (!res.ok || parsed.failure !== undefined || parsed.error !== undefined) {
        log.warn('task scale-in protection not updated', { enabled: body.ProtectionEnabled, status: res.status, body: text.slice(0, 300) });
      }
    } catch (error) {
      log.warn('task scale-in protection not updated', { enabled: body.ProtectionEnabled, error: error instanceof Error ? error.message : String(error) });
    }
  };
  return {
    protect: (minutes) => put({ ProtectionEnabled: true, ExpiresInMinutes: Math.min(MAX_MINUTES, Math.max(1, Math.ceil(minutes))) }),
    unprotect: () => put({ ProtectionEnabled: false }),
  };
}
