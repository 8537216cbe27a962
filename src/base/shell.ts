/** Quotes one word for a POSIX shell (a remote command, an mmdebstrap hook). */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}
