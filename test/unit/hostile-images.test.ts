/**
 * The hostile-image corpus: damaged and adversarial inputs generated here from a valid little
 * disk (test/unit/synthetic-disk.ts), each given to the built CLI's `inspect` (dist/, `npm run
 * build`; all of them in-process, one of each kind through the CLI). Every input must give a report (with the expected note) or exit 2 with one line
 * naming the problem: never exit 70 or a stack trace, never the content of a host file a
 * qcow2 points at, within 20 s and 512 MiB of resident memory per run.
 */
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, test } from 'vitest';
import { InputError } from '../../src/errors.js';
import { HostRunner } from '../../src/host/run.js';
import { inspectImage, type InspectReport } from '../../src/inspect/inspect.js';
import { MAX_INITRAMFS_BYTES } from '../../src/inspect/cpio.js';
import { MiB } from '../../src/recipe/size.js';
import { captureLogger, REPO } from './helpers.js';
import { luksContainer, newc, sparseFile, syntheticDisk, writeAt, zstd } from './synthetic-disk.js';

const CLI = join(REPO, 'dist/cli.js');
const host = new HostRunner(captureLogger('quiet').log);
const RUN_SECONDS = 20;
const MAX_RSS_KIB = 512 * 1024;
/** Where syntheticDisk puts the LUKS2 root and the GPT entries. */
const LUKS_AT = 9 * MiB;
const GPT_ENTRIES_AT = 1024;
const ENTRY = 128;

type Kind = 'truncation' | 'luks2-binary' | 'luks2-json' | 'gpt' | 'qcow2' | 'luks1' | 'bare-luks' | 'initramfs' | 'other-format' | 'not-an-image';

interface Case {
  name: string;
  kind: Kind;
  /** Writes the input to `file` (the valid disk is at `base`). */
  make: (file: string) => Promise<void>;
  /** A report with a note matching this, or a refusal (exit 2) matching this. */
  expected: { note: RegExp } | { refused: RegExp } | 'report';
}

let dir: string;
let base: string;
let bombDisk: string;
let canaryFile: string;
const canary = `host-secret-${randomBytes(12).toString('hex')}`;

async function patch(file: string, offset: number, data: Buffer): Promise<void> {
  await writeAt(file, offset, data);
}

async function xorByte(file: string, offset: number): Promise<void> {
  const handle = await open(file, 'r+');
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, offset);
  byte[0] ^= 0xff;
  await handle.write(byte, 0, 1, offset);
  await handle.close();
}

const u64be = (value: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  return b;
};
const u32be = (value: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
};
const u64le = (value: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
};

/**
 * Rewrites the JSON area of both LUKS2 header copies at `offset` and fixes their checksums,
 * so cryptsetup accepts metadata that is valid in form but hostile in content.
 */
async function rewriteLuks2Json(file: string, offset: number, change: (json: Record<string, any>) => void): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    const first = Buffer.alloc(4096);
    await handle.read(first, 0, 4096, offset);
    const headerBytes = Number(first.readBigUInt64BE(8));
    for (const copy of [offset, offset + headerBytes]) {
      const header = Buffer.alloc(headerBytes);
      await handle.read(header, 0, headerBytes, copy);
      const json = JSON.parse(header.toString('utf8', 4096).replace(/\0.*$/s, '')) as Record<string, any>;
      change(json);
      header.fill(0, 4096);
      header.write(JSON.stringify(json), 4096);
      header.fill(0, 448, 512);
      createHash('sha256').update(header).digest().copy(header, 448);
      await handle.write(header, 0, headerBytes, copy);
    }
  } finally {
    await handle.close();
  }
}

const copyOfBase = (file: string) => copyFile(base, file);
const qemuImg = (...args: string[]) => execa('qemu-img', args);
/** A valid qcow2 of the base disk, then `bytes` written at `offset` of its header. */
const qcow2With = (offset: number, bytes: Buffer) => async (file: string) => {
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', base, file);
  await patch(file, offset, bytes);
};
/** `qemu-img convert` of a small raw file into another format. */
const converted = (format: string) => async (file: string) => {
  const raw = `${file}.raw`;
  await sparseFile(raw, 4 * MiB);
  await qemuImg('convert', '-f', 'raw', '-O', format, raw, file);
};
const truncatedAt = (bytes: number) => async (file: string) => {
  await copyOfBase(file);
  await truncate(file, bytes);
};
const luksFlip = (offset: number) => async (file: string) => {
  await copyOfBase(file);
  await xorByte(file, LUKS_AT + offset);
};
const luksJson = (change: (json: Record<string, any>) => void) => async (file: string) => {
  await copyOfBase(file);
  await rewriteLuks2Json(file, LUKS_AT, change);
};
/** Partition entry `index` (0-based) of the base disk's GPT with `bytes` at `field`. */
const gptEntry = (index: number, field: number, bytes: Buffer) => async (file: string) => {
  await copyOfBase(file);
  await patch(file, GPT_ENTRIES_AT + index * ENTRY + field, bytes);
};
const gptHeader = (field: number, bytes: Buffer) => async (file: string) => {
  await copyOfBase(file);
  await patch(file, 512 + field, bytes);
};

async function luks1(file: string): Promise<void> {
  await sparseFile(file, 8 * MiB);
  const keyFile = `${file}.key`;
  await writeFile(keyFile, 'corpus-passphrase', { mode: 0o600 });
  await execa('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, file]);
}

/**
 * A disk whose initramfs is a zstd bomb: frames of 16 MiB of zeros (about 500 bytes each), one
 * after another, unpacking to 32 MiB more than inspect's limit, in a few KiB of /boot.
 */
async function initramfsBombDisk(): Promise<string> {
  const frame = await zstd(Buffer.alloc(16 * MiB));
  const frames = MAX_INITRAMFS_BYTES / (16 * MiB) + 2;
  const initrd = Buffer.concat([newc([{ path: 'kernel/x86/microcode/AuthenticAMD.bin', data: 'ucode' }]), ...Array<Buffer>(frames).fill(frame)]);
  return (await syntheticDisk(await mkdtemp(join(dir, 'bomb-')), { initrd })).disk;
}

const CASES: Case[] = [
  ...[0, 100, 512, 17 * 1024, 4 * MiB, LUKS_AT + 2048, LUKS_AT + 8192, LUKS_AT + MiB, 20 * MiB].map(
    (bytes): Case => ({ name: `truncated at ${bytes} bytes`, kind: 'truncation', make: truncatedAt(bytes), expected: bytes < 512 ? { refused: /not a disk image/ } : { note: /beyond the image|could not be read|no \/boot|damaged/ } }),
  ),
  { name: 'LUKS2 magic flipped', kind: 'luks2-binary', make: luksFlip(0), expected: { note: /no LUKS header found/ } },
  { name: 'LUKS2 version flipped', kind: 'luks2-binary', make: luksFlip(7), expected: { note: /LUKS version \d+ is unknown/ } },
  { name: 'LUKS2 header size flipped', kind: 'luks2-binary', make: luksFlip(9), expected: { note: /primary LUKS2 binary header is damaged/ } },
  { name: 'LUKS2 checksum flipped', kind: 'luks2-binary', make: luksFlip(450), expected: { note: /primary LUKS2 header fails its checksum/ } },
  { name: 'LUKS2 uuid flipped', kind: 'luks2-binary', make: luksFlip(170), expected: { note: /primary LUKS2 header fails its checksum/ } },
  { name: 'LUKS2 both header copies flipped', kind: 'luks2-binary', make: async (file) => (await luksFlip(450)(file), xorByte(file, LUKS_AT + 16 * 1024 + 450)), expected: { note: /LUKS header could not be read/ } },
  { name: 'LUKS2 JSON area: a byte flipped', kind: 'luks2-json', make: luksFlip(4096 + 40), expected: { note: /primary LUKS2 header fails its checksum/ } },
  { name: 'LUKS2 JSON area: garbage in both copies', kind: 'luks2-json', make: async (file) => {
    await copyOfBase(file);
    await patch(file, LUKS_AT + 4096, Buffer.from('{{{{not json'));
    await patch(file, LUKS_AT + 16 * 1024 + 4096, Buffer.from('{{{{not json'));
  }, expected: { note: /LUKS header could not be read/ } },
  { name: 'LUKS2 JSON: unknown token type', kind: 'luks2-json', make: luksJson((json) => (json.tokens['1'] = { type: 'evil-token', keyslots: [] })), expected: { note: /token 1 has type "evil-token", unknown/ } },
  { name: 'LUKS2 JSON: data segment over the metadata', kind: 'luks2-json', make: luksJson((json) => (json.segments['0'].offset = '4096')), expected: { note: /overlaps the LUKS metadata|could not be read/ } },
  { name: 'LUKS2 JSON: keyslots_size of a terabyte', kind: 'luks2-json', make: luksJson((json) => (json.config.keyslots_size = String(2 ** 40))), expected: { note: /JSON area is damaged|could not be read/ } },
  { name: 'LUKS2 JSON: keyslot without kdf', kind: 'luks2-json', make: luksJson((json) => delete json.keyslots['0'].kdf), expected: { note: /could not be read/ } },
  { name: 'LUKS2 JSON: tokens not an object', kind: 'luks2-json', make: luksJson((json) => (json.tokens = 42)), expected: { note: /could not be read/ } },
  { name: 'GPT entry beyond the end of the disk', kind: 'gpt', make: gptEntry(1, 40, u64le(10n ** 12n)), expected: { note: /beyond the image/ } },
  { name: 'GPT entry ending before it starts', kind: 'gpt', make: gptEntry(1, 40, u64le(1n)), expected: { note: /ends before it starts/ } },
  { name: 'GPT entries overlapping', kind: 'gpt', make: gptEntry(1, 32, u64le(4096n)), expected: { note: /partitions 1 and 2 overlap/ } },
  { name: 'GPT entry count 2^32-1, entry size 0', kind: 'gpt', make: gptHeader(80, Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])), expected: { note: /GPT lists no readable partition/ } },
  { name: 'GPT entry count 2^32-1', kind: 'gpt', make: gptHeader(80, Buffer.from([0xff, 0xff, 0xff, 0xff])), expected: 'report' },
  { name: 'GPT entries at a huge LBA', kind: 'gpt', make: gptHeader(72, u64le(2n ** 62n)), expected: { note: /GPT lists no readable partition/ } },
  { name: 'qcow2 of the valid disk', kind: 'qcow2', make: qcow2With(0, Buffer.from('QFI\xfb', 'latin1')), expected: 'report' },
  { name: 'qcow2 backed by a host file', kind: 'qcow2', make: async (file) => void (await qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', canaryFile, file)), expected: { refused: /qcow2 with a backing file .* --allow-external-files/ } },
  { name: 'qcow2 backed by a qcow2 backed by a host file', kind: 'qcow2', make: async (file) => {
    await qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', canaryFile, `${file}.inner`);
    await qemuImg('create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', `${file}.inner`, file);
  }, expected: { refused: /qcow2 with a backing file/ } },
  { name: 'qcow2 with an external data file (a host file)', kind: 'qcow2', make: async (file) => void (await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${canaryFile},data_file_raw=on`, file, '4M')), expected: { refused: /external data file/ } },
  { name: 'qcow2 with the data-file bit but no extension', kind: 'qcow2', make: qcow2With(72, u64be(4n)), expected: { refused: /external data file/ } },
  { name: 'qcow2 with an unknown incompatible feature', kind: 'qcow2', make: qcow2With(72, u64be(1n << 40n)), expected: { refused: /unknown incompatible feature bits 0x10000000000/ } },
  { name: 'qcow2 of 2^60 bytes', kind: 'qcow2', make: qcow2With(24, u64be(1n << 60n)), expected: { refused: /virtual size .* beyond the limit/ } },
  { name: 'qcow2 encrypted (LUKS method)', kind: 'qcow2', make: qcow2With(32, u32be(2)), expected: { refused: /encrypted qcow2/ } },
  { name: 'qcow2 with cluster_bits 40', kind: 'qcow2', make: qcow2With(20, u32be(40)), expected: { refused: /cluster_bits 40/ } },
  { name: 'qcow2 version 9', kind: 'qcow2', make: qcow2With(4, u32be(9)), expected: { refused: /qcow2 version 9/ } },
  { name: 'qcow2 header extension running past the cluster', kind: 'qcow2', make: qcow2With(112, Buffer.concat([u32be(0x12345678), u32be(0x7fffffff)])), expected: { refused: /runs past the header cluster/ } },
  { name: 'qcow2 backing file name beyond the header', kind: 'qcow2', make: qcow2With(8, Buffer.concat([u64be(1n << 40n), u32be(64)])), expected: { refused: /backing file/ } },
  { name: 'qcow2 truncated to its header', kind: 'qcow2', make: async (file) => (await qcow2With(0, Buffer.alloc(0))(file), truncate(file, 104)), expected: { refused: /truncated qcow2/ } },
  { name: 'qcow2 with its L1 table beyond the file', kind: 'qcow2', make: qcow2With(40, u64be(1n << 40n)), expected: { refused: /not a disk image/ } },
  { name: 'LUKS1 file (cryptsetup luksFormat --type luks1)', kind: 'luks1', make: luks1, expected: { note: /LUKS1 header/ } },
  { name: 'LUKS1 in the root partition', kind: 'luks1', make: async (file) => {
    await luks1(`${file}.luks1`);
    await copyOfBase(file);
    await patch(file, LUKS_AT, await readFile(`${file}.luks1`));
  }, expected: { note: /partition 2: LUKS1 header/ } },
  { name: 'bare LUKS2 device, no partition table', kind: 'bare-luks', make: async (file) => {
    const { file: container } = await luksContainer(await mkdtemp(join(dir, 'luks-')));
    await copyFile(container, file);
  }, expected: { note: /no \/boot found/ } },
  { name: 'initramfs that unpacks past the limit (zstd bomb)', kind: 'initramfs', make: (file) => copyFile(bombDisk, file), expected: { note: /initramfs .* could not be read: a zstd segment unpacks to more than 512\.0 MiB/ } },
  ...['vmdk', 'vhdx', 'vpc', 'vdi', 'qed'].map((format): Case => ({ name: `${format} image`, kind: 'other-format', make: converted(format), expected: { refused: new RegExp(`${format} image: keylessgo reads only raw and qcow2`) } })),
  { name: 'empty file', kind: 'not-an-image', make: (file) => writeFile(file, ''), expected: { refused: /not a disk image/ } },
  { name: 'directory', kind: 'not-an-image', make: (file) => mkdir(file), expected: { refused: /not a disk image file/ } },
  { name: 'random bytes', kind: 'not-an-image', make: (file) => writeFile(file, randomBytes(MiB)), expected: { refused: /not a disk image/ } },
];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keylessgo-unit-hostile-'));
  canaryFile = join(dir, 'host-secret.txt');
  // Sector-sized so qemu would happily read it as a raw backing or data file.
  await writeFile(canaryFile, Buffer.concat([Buffer.from(`${canary}\n`), Buffer.alloc(MiB - canary.length - 1)]));
  base = (await syntheticDisk(await mkdtemp(join(dir, 'base-')))).disk;
  bombDisk = await initramfsBombDisk();
}, 60_000);

afterAll(async () => {
  const byKind = CASES.reduce<Record<string, number>>((counts, c) => ({ ...counts, [c.kind]: (counts[c.kind] ?? 0) + 1 }), {});
  process.stderr.write(`hostile-image corpus: ${CASES.length} inputs ${JSON.stringify(byKind)}\n`);
  await rm(dir, { recursive: true, force: true });
});

/** What inspect made of an input, in-process: a report, or the InputError the CLI turns into exit 2. */
async function inspectInProcess(file: string): Promise<{ report?: InspectReport; refusal?: string; seconds: number }> {
  const started = performance.now();
  try {
    const report = await inspectImage(host, file);
    return { report, seconds: (performance.now() - started) / 1000 };
  } catch (error) {
    // Anything but an InputError would be exit 70 with a stack trace in the CLI.
    expect(error).toBeInstanceOf(InputError);
    return { refusal: (error as Error).message, seconds: (performance.now() - started) / 1000 };
  }
}

const caseFile = (input: Case) => join(dir, input.name.replace(/[^a-z0-9]+/gi, '-'));

describe('inspect on the hostile-image corpus: a report or one line with exit 2, nothing else', () => {
  test.concurrent.for(CASES.map((c): [string, Case] => [c.name, c]))('%s', { timeout: 60_000 }, async ([, input]) => {
    const file = caseFile(input);
    await input.make(file);
    const { report, refusal, seconds } = await inspectInProcess(file);
    expect(`${JSON.stringify(report)}${refusal}`).not.toContain(canary);
    expect(seconds).toBeLessThan(RUN_SECONDS);
    if (input.expected !== 'report' && 'refused' in input.expected) {
      expect(refusal, JSON.stringify(report?.notes)).toMatch(input.expected.refused);
      expect(refusal!.split('\n')).toHaveLength(1);
      return;
    }
    expect(refusal).toBeUndefined();
    if (input.expected !== 'report') expect(report!.notes.join('\n')).toMatch(input.expected.note);
  });
});

describe('policy flags', () => {
  it('--allow-external-files reads a qcow2 through its backing file: the same report as the disk itself', { timeout: 60_000 }, async () => {
    const overlay = join(dir, 'trusted-overlay.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay);
    const [direct, through] = await Promise.all([inspectImage(host, base), inspectImage(host, overlay, { policy: { allowExternalFiles: true } })]);
    expect({ ...through, image: base, format: 'raw' }).toEqual(direct);
  });

  it('--max-virtual-size lowers the limit; --allow-format lets qemu-img read a format keylessgo does not check', async () => {
    const big = join(dir, 'big.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', big, '2G');
    await expect(inspectImage(host, big, { policy: { maxVirtualBytes: MiB } })).rejects.toThrow(/qcow2 virtual size 2\.00 GiB is beyond the limit of 1\.0 MiB/);
    const vmdk = join(dir, 'allowed.vmdk');
    await converted('vmdk')(vmdk);
    await expect(inspectImage(host, vmdk, { policy: { allowFormats: ['vmdk'] } })).rejects.toThrow(/not a disk image: no partition table/);
  });
});

/**
 * One input of each kind through the built CLI too (node start-up costs seconds on a loaded
 * host, so not all of them): exit 0 or 2, one line on stderr when refused, bounded time and memory.
 */
describe('the CLI on one input of each kind: exit 0 or 2, no stack trace, bounded time and memory', () => {
  const sample = [...new Map(CASES.map((c) => [c.kind, c])).values()];
  test.concurrent.for(sample.map((c): [string, Case] => [`${c.kind}: ${c.name}`, c]))('%s', { timeout: 60_000 }, async ([, input]) => {
    const file = `${caseFile(input)}-cli`;
    await input.make(file);
    const timeFile = `${file}.time`;
    const started = performance.now();
    const run = await execa('/usr/bin/time', ['-o', timeFile, '-f', '%M', 'node', CLI, 'inspect', file, '--json'], { reject: false, timeout: RUN_SECONDS * 1000, env: { TMPDIR: dir } });
    const seconds = (performance.now() - started) / 1000;
    const maxRssKiB = Number((await readFile(timeFile, 'utf8')).trim().split('\n').at(-1));
    const output = `${run.stdout}\n${run.stderr}`;
    expect(output).not.toContain(canary);
    expect(output).not.toMatch(/internal error|\n\s+at .+:\d+:\d+\)?\n/);
    expect(seconds).toBeLessThan(RUN_SECONDS);
    expect(maxRssKiB).toBeLessThan(MAX_RSS_KIB);
    const refused = input.expected !== 'report' && 'refused' in input.expected;
    expect(run.exitCode, output).toBe(refused ? 2 : 0);
    if (refused) expect(run.stderr.trim().split('\n')).toHaveLength(1);
  });
});
