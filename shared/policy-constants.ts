// The content policy's names and limits that the job schema needs too (shared/schemas/job.ts): apart
// from shared/prompt-policy.ts, so that a module that only describes jobs (every GET route of the API)
// does not load the policy's matcher with them (the latency review, finding 3b).

export const POLICY_CATEGORIES = ['copyright', 'trademark', 'likeness', 'bias'] as const;
export type PolicyCategory = (typeof POLICY_CATEGORIES)[number];

/** Longest concept text of an output rule. */
export const MAX_CONCEPT_CHARS = 200;
