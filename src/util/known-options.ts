// Refuses unknown option names at setup, with a "did you mean" for a misspelt one (helmet, express-rate-limit style).

/** The known name `name` most likely meant: the same but for case, or at most two edits away. */
function closest(name: string, known: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  return known.find((candidate) => candidate.toLowerCase() === lower || distance(candidate.toLowerCase(), lower) <= 2);
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length]!;
}

/** Throws a TypeError naming the first unknown option of `options` (`where` is e.g. `MemoryStore`). */
export function checkKnown(where: string, options: object | undefined, known: readonly string[]): void {
  if (options === undefined || options === null) return;
  for (const name of Object.keys(options)) {
    if (known.includes(name)) continue;
    const hint = closest(name, known);
    throw new TypeError(`${where}: unknown option \`${name}\`${hint ? `, did you mean \`${hint}\`?` : ` (known: ${known.join(', ')}).`}`);
  }
}
