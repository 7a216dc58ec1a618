// The prompt policy (ADR 0015): copyright, trademark, likeness and bias checks on every prompt before a
// job is made. Rules name phrases; a prompt that contains one (whole words, after folding case,
// accents, punctuation and look-alike characters) is refused (400 content_policy) or flagged (the job
// carries the flag, and every view shows it). The operator owns the list: a deployment may replace the
// default below with a document in its store (`config/prompt-policy.json`).
import { z } from 'zod';

export const POLICY_CATEGORIES = ['copyright', 'trademark', 'likeness', 'bias'] as const;
export type PolicyCategory = (typeof POLICY_CATEGORIES)[number];

const PolicyRule = z
  .object({
    id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/),
    category: z.enum(POLICY_CATEGORIES),
    action: z.enum(['refuse', 'flag']),
    /** Shown to the caller with the phrase that matched. */
    message: z.string().min(1).max(300),
    /** Up to 6 words each (prompts are matched on runs of up to 6 words). */
    terms: z.array(z.string().min(1).max(100)).min(1).max(2000),
  })
  .strict();

export const PromptPolicyDocument = z
  .object({
    version: z.literal(1),
    rules: z.array(PolicyRule).max(200),
  })
  .strict()
  .superRefine((doc, ctx) => {
    const ids = new Set<string>();
    doc.rules.forEach((rule, i) => {
      if (ids.has(rule.id)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'id'], message: `duplicate rule id ${rule.id}` });
      ids.add(rule.id);
      rule.terms.forEach((term, j) => {
        const words = normalizeText(term).split(' ').filter(Boolean).length;
        if (words === 0) ctx.addIssue({ code: 'custom', path: ['rules', i, 'terms', j], message: 'a term must contain a letter or digit' });
        if (words > 6) ctx.addIssue({ code: 'custom', path: ['rules', i, 'terms', j], message: 'a term has at most 6 words' });
      });
    });
  });
export type PromptPolicyDocument = z.output<typeof PromptPolicyDocument>;

export interface PolicyHit {
  rule: string;
  category: PolicyCategory;
  action: 'refuse' | 'flag';
  /** The phrase as the rule lists it. */
  term: string;
  message: string;
  /** Which prompt matched: `prompt`, or `prompts[i].text`. */
  param: string;
}

/**
 * Folding for matching: compatibility forms (full-width letters, ligatures) to plain ones, accents
 * dropped, case folded, and everything that is not a letter or digit turned into one space. So
 * "Pi͟kachu", "PIKACHU!" and "pikachu's" (→ "pikachu s") all contain the word "pikachu".
 */
export function normalizeText(text: string): string {
  return text
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
    .replace(/[^\p{L}\p{N}]+/gu, ' ')
    .trim();
}

export interface PromptPolicy {
  /** Every rule a prompt matches, refusals first; empty when it matches none. */
  screen(prompts: ReadonlyArray<{ text: string; param: string }>): PolicyHit[];
}

export function compilePolicy(doc: PromptPolicyDocument): PromptPolicy {
  // A term matches a run of whole words of the prompt, with or without the spaces between them:
  // "spider man" matches "Spider-Man", "spider man" and "spiderman", but not "spider mango".
  const rules = doc.rules.map((rule) => ({ rule, terms: rule.terms.map((term) => ({ term, joined: normalizeText(term).replace(/ /g, '') })) }));
  return {
    screen(prompts) {
      const hits: PolicyHit[] = [];
      for (const { text, param } of prompts) {
        const spans = wordSpans(normalizeText(text));
        for (const { rule, terms } of rules) {
          const hit = terms.find((t) => spans.has(t.joined));
          if (hit) hits.push({ rule: rule.id, category: rule.category, action: rule.action, term: hit.term, message: rule.message, param });
        }
      }
      return hits.sort((a, b) => (a.action === b.action ? 0 : a.action === 'refuse' ? -1 : 1));
    },
  };
}

/** Every run of up to 6 consecutive words, joined without spaces (prompts are at most 300 characters). */
function wordSpans(folded: string): Set<string> {
  const words = folded === '' ? [] : folded.split(' ');
  const spans = new Set<string>();
  for (let i = 0; i < words.length; i++) {
    let joined = '';
    for (let j = i; j < Math.min(words.length, i + 6); j++) spans.add((joined += words[j]));
  }
  return spans;
}

/**
 * The shipped policy: a starting point, not legal advice. Terms that are also ordinary words or
 * common names ("goofy", "hulk", "snoopy", "luigi", "garfield", "race") are left out or given in a
 * longer, unambiguous form: a refusal must not hit an innocent prompt. It refuses well-known protected characters
 * and brand logos, and flags living artists' names, real public figures, and prompts that depict
 * people by group or occupation (CLIP carries social biases about both: Radford et al. 2021, §7;
 * Agarwal et al. 2021). Operators extend or replace it for their market.
 */
export const DEFAULT_PROMPT_POLICY: PromptPolicyDocument = {
  version: 1,
  rules: [
    {
      id: 'protected-characters',
      category: 'copyright',
      action: 'refuse',
      message: 'names a copyrighted character; images of it may infringe its owner\'s rights',
      terms: [
        'mickey mouse', 'minnie mouse', 'donald duck', 'pikachu', 'pokemon', 'spider man', 'batman', 'superman',
        'wonder woman', 'iron man', 'captain america', 'incredible hulk', 'darth vader', 'yoda', 'hello kitty', 'super mario',
        'sonic the hedgehog', 'shrek', 'harry potter', 'homer simpson', 'bart simpson', 'spongebob', 'bugs bunny',
        'scooby doo', 'garfield the cat', 'charlie brown', 'buzz lightyear', 'elsa from frozen', 'totoro', 'naruto', 'goku',
      ],
    },
    {
      id: 'brand-logos',
      category: 'trademark',
      action: 'refuse',
      message: 'asks for a brand\'s logo or trade dress; trademarks are not ours to reproduce',
      terms: [
        'nike logo', 'adidas logo', 'apple logo', 'google logo', 'microsoft logo', 'amazon logo', 'coca cola logo',
        'pepsi logo', 'mcdonalds logo', 'starbucks logo', 'disney logo', 'netflix logo', 'facebook logo',
        'instagram logo', 'tesla logo', 'louis vuitton', 'gucci logo', 'chanel logo', 'olympic rings',
      ],
    },
    {
      id: 'living-artists',
      category: 'copyright',
      action: 'flag',
      message: 'names a living artist: imitating a living artist\'s style can raise copyright and ethical concerns',
      terms: [
        'greg rutkowski', 'artgerm', 'loish', 'ross tran', 'wlop', 'sakimichan', 'james jean', 'yoshitaka amano',
        'hayao miyazaki', 'studio ghibli', 'makoto shinkai', 'beeple', 'banksy', 'kaws', 'takashi murakami', 'yayoi kusama',
        'david hockney', 'jeff koons', 'alphonse mucha style',
      ],
    },
    {
      id: 'public-figures',
      category: 'likeness',
      action: 'flag',
      message: 'names a real person: depicting a real person can mislead, defame or breach personality rights',
      terms: [
        'donald trump', 'joe biden', 'barack obama', 'kamala harris', 'vladimir putin', 'xi jinping', 'elon musk',
        'mark zuckerberg', 'bill gates', 'taylor swift', 'beyonce', 'kim kardashian', 'pope', 'king charles', 'emmanuel macron',
      ],
    },
    {
      id: 'people-by-group',
      category: 'bias',
      action: 'flag',
      message: 'depicts people by a social group: CLIP carries stereotypes about such groups, and the image may reproduce them',
      terms: [
        'racial', 'ethnic', 'ethnicity', 'asian', 'african', 'african american', 'latino', 'latina', 'hispanic', 'arab',
        'indian woman', 'indian man', 'muslim', 'jewish', 'christian', 'hindu', 'gay', 'lesbian', 'transgender', 'disabled',
        'immigrant', 'refugee', 'poor people', 'rich people',
      ],
    },
    {
      id: 'people-by-occupation',
      category: 'bias',
      action: 'flag',
      message: 'depicts a person by occupation or role: CLIP ties such roles to gender and ethnicity, and the image may reproduce that',
      terms: [
        'doctor', 'nurse', 'ceo', 'engineer', 'scientist', 'programmer', 'teacher', 'secretary', 'pilot', 'lawyer',
        'housekeeper', 'janitor', 'criminal', 'terrorist', 'thug', 'prisoner', 'beautiful woman', 'attractive person',
      ],
    },
  ],
};

/** Where a deployment keeps its own policy, replacing the default (the same document format). */
export const PROMPT_POLICY_KEY = 'config/prompt-policy.json';

export interface PolicySource {
  get(key: string): Promise<{ body: Uint8Array; etag: string } | null>;
}

/**
 * The deployment's policy: its document in the store when there is one, else the default. Re-read at
 * most every `ttlMs`. A document that does not parse keeps the last good policy (at first, the
 * default) and is reported through `onInvalid`: an operator's typo must neither stop the API nor
 * switch the checks off.
 */
export function policyFromStore(
  store: PolicySource,
  options: { ttlMs?: number; now?: () => number; onInvalid?: (problem: string) => void } = {},
): () => Promise<PromptPolicy> {
  const ttlMs = options.ttlMs ?? 60_000;
  const now = options.now ?? Date.now;
  let current = { policy: compilePolicy(DEFAULT_PROMPT_POLICY), etag: null as string | null, readAt: -Infinity };
  return async () => {
    if (now() - current.readAt < ttlMs) return current.policy;
    const found = await store.get(PROMPT_POLICY_KEY);
    if (!found) {
      current = { policy: current.etag === null ? current.policy : compilePolicy(DEFAULT_PROMPT_POLICY), etag: null, readAt: now() };
      return current.policy;
    }
    if (found.etag === current.etag) {
      current = { ...current, readAt: now() };
      return current.policy;
    }
    let parsed;
    try {
      parsed = PromptPolicyDocument.safeParse(JSON.parse(Buffer.from(found.body).toString('utf8')));
    } catch (error) {
      parsed = { success: false as const, error };
    }
    if (!parsed.success) {
      options.onInvalid?.(`${PROMPT_POLICY_KEY} is not a valid policy; keeping the previous one: ${parsed.error instanceof Error ? parsed.error.message : String(parsed.error)}`.slice(0, 2000));
      current = { ...current, readAt: now() };
      return current.policy;
    }
    current = { policy: compilePolicy(parsed.data), etag: found.etag, readAt: now() };
    return current.policy;
  };
}
