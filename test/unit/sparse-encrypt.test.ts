/**
 * Sparse encryption of the root against an independent oracle: `cryptsetup reencrypt
 * --encrypt` of the same plaintext with the same volume key must produce the same ciphertext
 * for every block the filesystem uses, and our output must leave free space as holes.
 * Real mkfs.ext4 and cryptsetup on small files (no device-mapper needed).
 */
import { execa } from 'execa';
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdir, open, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LUKS_DATA_OFFSET_BYTES, luksFormatArgs, parseLuksDump } from '../../src/host/cryptsetup.js';
import { EXT4_BLOCK_BYTES, mkfsExt4Args, usedBytesFromSuperblock, usedRangesFromDumpe2fs, type ByteRange } from '../../src/host/ext4.js';
import { ecbCipherName, encryptRanges } from '../../src/luks/encrypt-ranges.js';
import { recipeWith, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

describe('usedRangesFromDumpe2fs', () => {
  const dump = (free: string[]) => ['Block count:              100', 'Block size:               4096', ...free.map((f) => `  Free blocks: ${f}`)].join('\n');

  it('returns the complement of the free lists as merged byte ranges', () => {
    expect(usedRangesFromDumpe2fs(dump(['10-19, 30', '50-59', '']))).toEqual([
      { start: 0, length: 10 * 4096 },
      { start: 20 * 4096, length: 10 * 4096 },
      { start: 31 * 4096, length: 19 * 4096 },
      { start: 60 * 4096, length: 40 * 4096 },
    ]);
  });

  it('merges used blocks across group boundaries and handles a full or empty filesystem', () => {
    expect(usedRangesFromDumpe2fs(dump(['', '']))).toEqual([{ start: 0, length: 100 * 4096 }]);
    expect(usedRangesFromDumpe2fs(dump(['0-49', '50-99']))).toEqual([]);
  });

  it('refuses output without the superblock fields', () => {
    expect(() => usedRangesFromDumpe2fs('  Free blocks: 1-2')).toThrow(/block count/);
  });
});

describe('usedBytesFromSuperblock', () => {
  it('is the block count minus the free blocks, in bytes', () => {
    expect(usedBytesFromSuperblock('Block count:              98304\nFree blocks:              71109\nBlock size:               4096\n')).toBe((98304 - 71109) * 4096);
    expect(() => usedBytesFromSuperblock('Block count: 1\n')).toThrow(/block counts/);
  });
});

describe('ecbCipherName', () => {
  it('maps LUKS key sizes to the AES-ECB of one half of the XTS key and refuses others', () => {
    expect(ecbCipherName('aes-xts-plain64', 512)).toBe('aes-256-ecb');
    expect(ecbCipherName('aes-xts-plain64', 256)).toBe('aes-128-ecb');
    expect(() => ecbCipherName('serpent-xts-plain64', 512)).toThrow(/unsupported cipher/);
    expect(() => ecbCipherName('aes-xts-plain64', 384)).toThrow(/unsupported key size/);
  });
});

async function readRange(file: string, start: number, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, start);
    return buffer;
  } finally {
    await handle.close();
  }
}

describe('encryptRanges against cryptsetup reencrypt', () => {
  // Four workers: the used ranges span more chunks than that, so every worker encrypts some (round robin).
  it.each([
    [4096, 1],
    [512, 1],
    [4096, 4],
  ])('writes the same ciphertext as cryptsetup for every used block (%d-byte sectors, %d workers), in place, and nothing else', async (sectorSize, workers) => {
    const work = await tempDir();
    const tree = join(work, 'tree');
    await mkdir(join(tree, 'etc'), { recursive: true });
    await writeFile(join(tree, 'etc/random.bin'), randomBytes(17 * MiB + 123));
    await writeFile(join(tree, 'etc/text'), 'plaintext marker\n'.repeat(1000));
    const fsBytes = 64 * MiB;
    const volumeKey = randomBytes(64);
    const volumeKeyFile = join(work, 'volume-key');
    const passphraseFile = join(work, 'passphrase');
    await writeFile(volumeKeyFile, volumeKey, { mode: 0o600 });
    await writeFile(passphraseFile, randomBytes(12).toString('base64url'), { mode: 0o600 });
    const luks = recipeWith(`luks: {sectorSize: ${sectorSize}, pbkdf: {type: pbkdf2, iterations: 1000}}\n`).luks;

    // Ours, as the encrypt stage does it: the header, and mkfs.ext4 into the data segment behind it.
    const ours = join(work, 'ours.img');
    await writeFile(ours, '');
    await truncate(ours, LUKS_DATA_OFFSET_BYTES + fsBytes);
    await execa('cryptsetup', luksFormatArgs({ device: ours, uuid: '22222222-2222-4333-8444-555555555555', keyFile: passphraseFile, volumeKeyFile, luks }));
    await execa('mkfs.ext4', mkfsExt4Args({ image: ours, offsetBytes: LUKS_DATA_OFFSET_BYTES, tree, label: 'root', uuid: '11111111-2222-4333-8444-555555555555', blocks: fsBytes / EXT4_BLOCK_BYTES }));
    const atSegment = `${ours}?offset=${LUKS_DATA_OFFSET_BYTES}`;
    const ranges: ByteRange[] = usedRangesFromDumpe2fs((await execa('dumpe2fs', [atSegment])).stdout);
    const usedBytes = ranges.reduce((sum, r) => sum + r.length, 0);
    expect(usedBytes).toBe(usedBytesFromSuperblock((await execa('dumpe2fs', ['-h', atSegment])).stdout));
    expect(usedBytes).toBeGreaterThan(4 * 4 * MiB);
    expect(usedBytes).toBeLessThan(fsBytes / 2);
    const plaintextImage = await readRange(ours, LUKS_DATA_OFFSET_BYTES, fsBytes);
    // mkfs wrote nothing but zeros outside the ranges it reports as used: those are all that encryption overwrites.
    const outside = Buffer.from(plaintextImage);
    for (const range of ranges) outside.fill(0, range.start, range.start + range.length);
    expect(outside.equals(Buffer.alloc(fsBytes))).toBe(true);

    const written = await encryptRanges({ plaintext: ours, plaintextOffsetBytes: LUKS_DATA_OFFSET_BYTES, target: ours, dataOffsetBytes: LUKS_DATA_OFFSET_BYTES, ranges, cipher: luks.cipher, volumeKey, sectorSize, workers });
    expect(written).toBe(usedBytes);
    const dump = parseLuksDump((await execa('cryptsetup', ['luksDump', ours])).stdout);
    expect(dump).toMatchObject({ version: 2, keyslots: [0], dataOffsetBytes: LUKS_DATA_OFFSET_BYTES });

    // Oracle: cryptsetup encrypts a copy of the whole plaintext with the same volume key.
    const reduce = 16 * MiB;
    const oracle = join(work, 'oracle.img');
    await writeFile(oracle, plaintextImage);
    await truncate(oracle, fsBytes + reduce);
    await execa('cryptsetup', [
      'reencrypt', '--encrypt', '--batch-mode', '--type', 'luks2', '--reduce-device-size', '16M', '--cipher', luks.cipher, '--key-size', String(luks.keySize),
      '--sector-size', String(sectorSize), '--volume-key-file', volumeKeyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', passphraseFile, oracle,
    ]);
    const oracleOffset = parseLuksDump((await execa('cryptsetup', ['luksDump', oracle])).stdout).dataOffsetBytes;

    for (const range of ranges) {
      const mine = await readRange(ours, LUKS_DATA_OFFSET_BYTES + range.start, range.length);
      const theirs = await readRange(oracle, oracleOffset + range.start, range.length);
      expect(mine.equals(theirs), `ciphertext of bytes ${range.start}+${range.length}`).toBe(true);
    }
    // Free space was never written: the file's allocation is the header plus the used blocks.
    const allocated = (await stat(ours)).blocks * 512;
    expect(allocated).toBeLessThan(LUKS_DATA_OFFSET_BYTES + usedBytes + MiB);
    // And the plaintext marker is nowhere in our output.
    const whole = await readRange(ours, 0, LUKS_DATA_OFFSET_BYTES + fsBytes);
    expect(whole.includes('plaintext marker')).toBe(false);
  });
});

describe('encryptRanges against Node\'s aes-xts', () => {
  const TiB = 1024 * 1024 * MiB;
  // Sector numbers (in 512-byte units) beyond 2^32 catch an IV cut to 32 bits; a range over 4 MiB spans chunks and ECB pieces.
  const rangesFor = (sectorSize: number): ByteRange[] => [
    { start: sectorSize, length: 3 * sectorSize },
    { start: 2 * TiB - 2 * MiB, length: 4 * MiB + 64 * 1024 + 3 * sectorSize },
    { start: 7 * TiB + 12345 * sectorSize, length: 5 * sectorSize },
  ];

  it.each([
    [64, 4096],
    [64, 512],
    [32, 4096],
    [32, 512],
  ])('encrypts each sector as createCipheriv does (%d-byte key, %d-byte sectors)', async (keyBytes, sectorSize) => {
    const work = await tempDir();
    const plaintext = join(work, 'plain.img');
    const target = join(work, 'target.img');
    const ranges = rangesFor(sectorSize);
    const dataOffsetBytes = 16 * MiB;
    const end = Math.max(...ranges.map((r) => r.start + r.length));
    // Sparse files: only the ranges hold data.
    const plain = await open(plaintext, 'w');
    for (const range of ranges) await plain.write(randomBytes(range.length), 0, range.length, range.start);
    await plain.close();
    await writeFile(target, '');
    await truncate(target, dataOffsetBytes + end);
    const volumeKey = randomBytes(keyBytes);

    const written = await encryptRanges({ plaintext, target, dataOffsetBytes, ranges, cipher: 'aes-xts-plain64', volumeKey, sectorSize, workers: 2 });
    expect(written).toBe(ranges.reduce((sum, r) => sum + r.length, 0));

    for (const range of ranges) {
      const input = await readRange(plaintext, range.start, range.length);
      const expected = Buffer.alloc(range.length);
      for (let at = 0; at < range.length; at += sectorSize) {
        const iv = Buffer.alloc(16);
        iv.writeBigUInt64LE(BigInt((range.start + at) / 512));
        const cipher = createCipheriv(`aes-${(keyBytes / 2) * 8}-xts`, volumeKey, iv);
        Buffer.concat([cipher.update(input.subarray(at, at + sectorSize)), cipher.final()]).copy(expected, at);
      }
      const actual = await readRange(target, dataOffsetBytes + range.start, range.length);
      // Compared sector by sector so that a failure names the first wrong one.
      for (let at = 0; at < range.length; at += sectorSize) {
        expect(actual.subarray(at, at + sectorSize).equals(expected.subarray(at, at + sectorSize)), `sector at byte ${range.start + at}`).toBe(true);
      }
    }
  });
});
