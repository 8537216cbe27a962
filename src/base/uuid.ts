import { createHash } from 'node:crypto';

/**
 * A UUID named by `text` (SHA-256 of it): RFC 9562 version 8, whose bits are the maker's own.
 * Reproducible builds name things this way rather than at random.
 */
export function uuidFromText(text: string): string {
  const bytes = createHash('sha256').update(text).digest().subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x80;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
