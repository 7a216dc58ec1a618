// Text a person reads in a warning or a terminal line: cut by code point, quoted, with what would show
// as nothing (or reorder the line) written as an escape. The engine's warnings and the CLI use it alike.

/** How much of a prompt a warning quotes, in code points. */
const SHOWN_PROMPT_CODE_POINTS = 80;

/** A prompt's first `max` code points (default SHOWN_PROMPT_CODE_POINTS) and "…" if longer: cut by code point, never inside a surrogate pair. */
export function promptStart(text: string, max = SHOWN_PROMPT_CODE_POINTS): string {
  const points = [...text];
  return points.length > max ? `${points.slice(0, max).join('')}…` : text;
}

/**
 * Characters a terminal or page shows as nothing, or that reorder what follows (U+202E RIGHT-TO-LEFT
 * OVERRIDE): format characters, separators other than the space, C1 controls (C0 ones JSON.stringify
 * escapes already), private-use and unassigned code points.
 */
const INVISIBLE = /^(?:[\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\u007f-\u009f]|(?! )\p{Zs})$/u;
const MARK = /^\p{M}$/u;
const EMOJI_PART = /^[\p{Extended_Pictographic}\p{Emoji_Modifier}\ufe0f]$/u;
const EMOJI = /^\p{Extended_Pictographic}$/u;

/**
 * Text in double quotes for a warning a person reads: JSON-quoted (so C0 controls, quotes and lone
 * surrogates are escaped) and with every invisible character (INVISIBLE, or a combining mark with no
 * character before it to sit on) written as a \u escape, so that `does not read "\u200d"` names
 * something the caller can see and leave out, and no bidi control reorders the rest of the line.
 * A zero-width joiner inside an emoji sequence (👨‍👩‍👧) is part of what shows, and kept.
 */
export function shownQuoted(text: string): string {
  return `"${escapedInvisible(text, (visible) => JSON.stringify(visible).slice(1, -1))}"`;
}

/**
 * A line (a warning an API sent, say) with its invisible characters written as \u escapes, as
 * shownQuoted writes them, and the rest as it is: no bidi control reorders what follows it.
 */
export function invisibleEscaped(text: string): string {
  return escapedInvisible(text, (visible) => visible);
}

function escapedInvisible(text: string, showVisible: (visible: string) => string): string {
  const points = [...text];
  let out = '';
  let visible = '';
  let onBase = false;
  points.forEach((c, i) => {
    const joinsEmoji = c === '\u200d' && i > 0 && EMOJI_PART.test(points[i - 1]!) && EMOJI.test(points[i + 1] ?? '');
    if ((INVISIBLE.test(c) && !joinsEmoji) || (MARK.test(c) && !onBase)) {
      const cp = c.codePointAt(0)!;
      out += showVisible(visible) + (cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, '0')}`);
      visible = '';
      onBase = false;
    } else {
      visible += c;
      // A mark after a mark still sits on the same base; after a space or control it has none.
      if (!MARK.test(c)) onBase = !/^[\s\p{Cc}]$/u.test(c);
    }
  });
  return out + showVisible(visible);
}
