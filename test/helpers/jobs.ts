import { newJobId } from '../../shared/ids.ts';
import type { BlobJobStore } from '../../shared/jobstore.ts';
import { GenerationSpec, newJobRecord, type JobRecord } from '../../shared/schemas/index.ts';

/** `count` queued jobs of `owner`, created a second apart ending about 17 minutes ago; newest first, as listByOwner returns them. */
export async function createdJobs(jobs: BlobJobStore, owner: string, count: number): Promise<JobRecord[]> {
  const base = Date.now() - 1_000_000;
  const created: JobRecord[] = [];
  for (let i = 0; i < count; i++) {
    created.push(await jobs.create(newJobRecord({ id: newJobId(base + i * 1000), owner, spec: GenerationSpec.parse({ prompt: `job ${i}`, steps: 50, model: 'toy' }) })));
  }
  return created.reverse();
}
