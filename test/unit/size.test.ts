import { describe, expect, it } from 'vitest';
import { formatSize, MiB, parseSize } from '../../src/recipe/size.js';

describe('parseSize', () => {
  it.each([
    ['512MiB', 512 * MiB],
    ['512mib', 512 * MiB],
    ['512M', 512 * MiB],
    ['3GiB', 3 * 1024 * MiB],
    ['1.5G', 1536 * MiB],
    ['1TiB', 1024 ** 4],
    ['64KiB', 64 * 1024],
    ['64k', 64 * 1024],
    ['4096', 4096],
    ['4096b', 4096],
    [' 2 GiB ', 2 * 1024 * MiB],
    [1048576, MiB],
  ] as const)('%j is %d bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });

  it.each([
    ['3 parsecs'],
    ['GiB'],
    ['-1GiB'],
    ['0'],
    ['0MiB'],
    ['1,5G'],
    ['1e9'],
    ['12 34'],
    [''],
    [0],
    [-1],
    [1.5],
    [Number.MAX_SAFE_INTEGER + 1],
    [Number.NaN],
  ] as const)('%j is not a size', (input) => {
    expect(parseSize(input)).toBeUndefined();
  });
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [MiB - 1, '1048575 B'],
    [MiB, '1.0 MiB'],
    [1536 * 1024, '1.5 MiB'],
    [1023 * MiB, '1023.0 MiB'],
    [1024 * MiB, '1.00 GiB'],
    [3 * 1024 * MiB + 512 * MiB, '3.50 GiB'],
  ])('%d bytes is %s', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it('round-trips whole GiB through parseSize', () => {
    for (const gib of [1, 2, 3, 16]) expect(parseSize(formatSize(gib * 1024 * MiB).replace(' ', ''))).toBe(gib * 1024 * MiB);
  });
});
