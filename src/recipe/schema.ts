/**
 * The recipe format. Every field has a default here, so a recipe only states what differs;
 * unknown fields are errors (a typo must not silently fall back to a default).
 */
import { z } from 'zod';
import { MiB, parseSize } from './size.js';

const size = (min: number, what: string) =>
  z
    .unknown()
    .transform((value, ctx) => {
      const bytes = typeof value === 'string' || typeof value === 'number' ? parseSize(value) : undefined;
      if (bytes === undefined) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected a size such as "512MiB" or "3GiB", got ${JSON.stringify(value)}` });
        return z.NEVER;
      }
      if (bytes < min) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${what} must be at least ${min / MiB} MiB` });
        return z.NEVER;
      }
      if (bytes % MiB !== 0) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${what} must be a whole number of MiB (partitions are MiB-aligned)` });
        return z.NEVER;
      }
      return bytes;
    });

/** The image's one kernel, always installed: the bootstrap stage expects exactly one in /boot. */
export const KERNEL_PACKAGE = 'linux-image-amd64';

export type SectorSize = 512 | 4096;
/**
 * FAT32 needs at least 65525 clusters; with 4096-byte sectors (and clusters) that is 256 MiB,
 * hence the 260 MiB that Windows setup also gives ESPs on 4Kn disks.
 */
export const MIN_4KN_ESP_BYTES = 260 * MiB;
const ESP_DEFAULT_BYTES: Record<SectorSize, number> = { 512: 64 * MiB, 4096: MIN_4KN_ESP_BYTES };

/** One of a few numbers, named in the message (a union of literals only says "Invalid input"). */
const oneOf = (values: [number, ...number[]]) =>
  z.number().refine((value) => values.includes(value), `expected ${values.slice(0, -1).join(', ')} or ${values.at(-1)}`);

const packageName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9+.-]+$/, 'expected a Debian package name')
  .superRefine((name, ctx) => {
    if (name.endsWith('-')) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `"${name}" ends in "-", which apt reads as "remove ${name.slice(0, -1)}"` });
    } else if (name.startsWith('linux-image-') && name !== KERNEL_PACKAGE && !name.endsWith('-dbg')) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `the image's kernel is ${KERNEL_PACKAGE} (always installed); ${name} would add a second one` });
    }
  });
const relativePath = z.string().min(1, 'expected a path');
const ipv4 = z.string().ip({ version: 'v4', message: 'expected an IPv4 address' });

/** Where mmdebstrap and apt can fetch from: http(s) archives or a local file:// tree. */
export function isMirrorUrl(text: string): boolean {
  return URL.canParse(text) && ['http:', 'https:', 'file:'].includes(new URL(text).protocol);
}
export const MIRROR_URL_MESSAGE = 'expected an http://, https:// or file:// mirror URL';
const mirrorUrl = z.string().refine(isMirrorUrl, MIRROR_URL_MESSAGE);

/** The levels each initramfs compressor accepts. */
const COMPRESS_LEVELS = { zstd: [1, 19], gzip: [1, 9], xz: [0, 9], lz4: [1, 12] } as const;

/**
 * zstd at its own default level: initramfs-tools would use 9, which took 5.4 s instead of 1.3 s
 * for the default image's 156 MB archive here, on the build's critical path, for 40 MB instead
 * of 45. Other compressors keep initramfs-tools' defaults.
 */
const DEFAULT_COMPRESS_LEVELS: Partial<Record<keyof typeof COMPRESS_LEVELS, number>> = { zstd: 3 };

/** Parameters keylessgo sets itself: root= is the unlocked LUKS volume, ip= comes from initramfs.network. */
const OWN_KERNEL_PARAMETERS = ['root', 'ip', 'BOOTIF'];
const parameterName = (parameter: string) => parameter.split('=')[0]!;
const kernelParameter = z
  .string()
  .regex(/^\S+$/, 'expected one kernel parameter without spaces')
  .refine((parameter) => !OWN_KERNEL_PARAMETERS.includes(parameterName(parameter)), (parameter) => ({
    message: `keylessgo sets ${parameterName(parameter)}= itself (root= is the unlocked LUKS volume, ip= comes from initramfs.network)`,
  }));

const interfaceName = z.string().regex(/^[a-zA-Z0-9_.-]{1,15}$/, 'expected a network interface name such as eth0');

export const SUITES = ['bookworm', 'trixie'] as const;
/** Debian release numbers, as image catalogues (Glance's os_version) name them. */
export const SUITE_VERSIONS: Record<(typeof SUITES)[number], string> = { bookworm: '12', trixie: '13' };

const macAddress = z
  .string()
  .regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, 'expected a MAC address such as 52:54:00:12:34:56')
  .transform((mac) => mac.toLowerCase());
const oneInterface = (network: { device?: string; mac?: string }) => !(network.device && network.mac);
const oneInterfaceMessage = { message: 'give device or mac, not both' };
// No device and no mac: DHCP on whichever interface answers first.
const dhcpNetwork = z.object({ mode: z.literal('dhcp'), device: interfaceName.optional(), mac: macAddress.optional() }).strict();
const staticNetwork = z
  .object({
    mode: z.literal('static'),
    // A static address needs one interface: the one with this MAC, else this name (default eth0).
    device: interfaceName.optional(),
    mac: macAddress.optional(),
    address: ipv4,
    netmask: ipv4,
    gateway: ipv4.optional(),
  })
  .strict();

/** Seconds since 1970 (UTC), as SOURCE_DATE_EPOCH is given: from 1980 (FAT's first date) to 9999. */
export const SOURCE_DATE_EPOCH_RANGE = { min: 315532800, max: 253402300799 } as const;
const sourceDateEpoch = z
  .number({ invalid_type_error: 'expected seconds since 1970 (SOURCE_DATE_EPOCH), e.g. 1700000000' })
  .int('expected whole seconds since 1970')
  .min(SOURCE_DATE_EPOCH_RANGE.min, 'must be 1980 or later (FAT, on the ESP, has no earlier dates)')
  .max(SOURCE_DATE_EPOCH_RANGE.max, 'must be before the year 10000');

export const recipeSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'expected a lower-case name usable as a file name'),
    description: z.string().default(''),
    suite: z.enum(SUITES),
    architecture: z.literal('amd64').default('amd64'),
    bootstrap: z
      .object({
        tool: z.enum(['mmdebstrap', 'debootstrap']).default('mmdebstrap'),
        variant: z.enum(['apt', 'minbase', 'required', 'important']).default('apt'),
        mirror: mirrorUrl.optional(),
        securityMirror: mirrorUrl.optional(),
        components: z.array(z.string().regex(/^[a-z-]+$/)).nonempty().default(['main']),
      })
      .strict()
      .default({}),
    build: z
      .object({
        // Clamps every time the build writes (reproducible plaintext); default: the newest Release
        // date of the archive, so the same mirror state gives the same value. SOURCE_DATE_EPOCH in
        // the environment overrides it.
        sourceDateEpoch: sourceDateEpoch.optional(),
      })
      .strict()
      .default({}),
    packages: z.array(packageName).default([]),
    hostname: z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'expected a host name (RFC 1123 label)').default('keylessgo'),
    root: z
      .object({
        login: z.enum(['key-only', 'locked']).default('key-only'),
      })
      .strict()
      .default({}),
    authorizedKeys: relativePath.optional(),
    network: z
      .object({
        manager: z.enum(['systemd-networkd']).default('systemd-networkd'),
        // Unset: DHCP on every Ethernet interface. Set: systemd-networkd's Name= patterns.
        match: z.string().regex(/^\S+( \S+)*$/, 'expected interface name patterns separated by spaces, such as "eth0 en*"').optional(),
      })
      .strict()
      .default({}),
    disk: z
      .object({
        size: size(1024 * MiB, 'disk.size').default('3GiB'),
        // Default by sector size: see espDefault.
        esp: size(32 * MiB, 'disk.esp').optional(),
        boot: size(128 * MiB, 'disk.boot').default('384MiB'),
        // The image's root stays tight (small downloads); each machine grows it to its disk.
        growOnFirstBoot: z.boolean().default(true),
        // 4096: the GPT and ESP are written for disks with 4096-byte logical sectors (4Kn).
        sectorSize: oneOf([512, 4096]).default(512),
      })
      .strict()
      .default({})
      .transform((disk) => ({ ...disk, sectorSize: disk.sectorSize as SectorSize, esp: disk.esp ?? ESP_DEFAULT_BYTES[disk.sectorSize as SectorSize] })),
    boot: z
      .object({
        // Debian's signed shim, GRUB and kernel on the ESP; false: an unsigned grub-mkimage GRUB.
        secureBoot: z.boolean().default(true),
      })
      .strict()
      .default({}),
    luks: z
      .object({
        // keylessgo writes the ciphertext itself (no device-mapper at build time), in AES-XTS.
        cipher: z
          .literal('aes-xts-plain64', { errorMap: () => ({ message: 'only aes-xts-plain64 is supported (keylessgo encrypts the root itself, without device-mapper)' }) })
          .default('aes-xts-plain64'),
        keySize: oneOf([256, 512]).default(512),
        sectorSize: oneOf([512, 4096]).default(4096),
        pbkdf: z
          .object({
            type: z.enum(['argon2id', 'argon2i', 'pbkdf2']).default('argon2id'),
            memoryKiB: z.number().int().min(32 * 1024).max(4 * 1024 * 1024).default(64 * 1024),
            iterations: z.number().int().min(1).max(1000_000).default(4),
            parallel: z.number().int().min(1).max(16).default(1),
          })
          .strict()
          .default({}),
      })
      .strict()
      .default({}),
    initramfs: z
      .object({
        network: z
          .discriminatedUnion('mode', [dhcpNetwork, staticNetwork])
          .refine(oneInterface, oneInterfaceMessage)
          .default({ mode: 'dhcp' }),
        modules: z.enum(['most', 'dep', 'netboot', 'list']).default('most'),
        compress: z.enum(['zstd', 'gzip', 'xz', 'lz4']).default('zstd'),
        compressLevel: z.number().int().optional(),
        dropbear: z
          .object({
            port: z.number().int().min(1).max(65535).default(22),
            idleTimeoutSeconds: z.number().int().min(0).max(86400).default(180),
            forceUnlockCommand: z.boolean().default(true),
            extraOptions: z.array(z.string().regex(/^-[a-zA-Z]( ?\S+)?$/, 'expected a dropbear option such as "-W 65536"')).default([]),
          })
          .strict()
          .default({}),
      })
      .strict()
      .default({})
      .transform((initramfs) => ({ ...initramfs, compressLevel: initramfs.compressLevel ?? DEFAULT_COMPRESS_LEVELS[initramfs.compress] })),
    kernel: z
      .object({
        cmdline: z.array(kernelParameter).default(['console=tty0', 'console=ttyS0,115200n8', 'net.ifnames=0']),
      })
      .strict()
      .default({}),
    nbde: z
      .object({
        // clevis, clevis-luks and clevis-initramfs in the image (what `keylessgo enroll` binds later).
        clevis: z.boolean().default(true),
        tang: z
          .array(
            z
              .object({
                // Tang's exchange needs no TLS, and plain http is what clevis in the initramfs is set up for.
                url: z.string().refine((url) => URL.canParse(url) && new URL(url).protocol === 'http:', 'expected an http:// URL: the Tang server as the machine will reach it'),
                adv: relativePath.optional(),
                thp: z.string().regex(/^[A-Za-z0-9_-]{20,}$/, 'expected a JWK thumbprint (base64url)').optional(),
              })
              .strict(),
          )
          .default([]),
        // clevis-tpm2 and tpm2-tools in the image and its initramfs: `keylessgo enroll --tpm2` binds to the machine's TPM.
        tpm2: z.boolean().default(false),
        threshold: z.number().int().min(1).default(1),
      })
      .strict()
      .default({}),
    overlays: z.array(relativePath).default([]),
    variables: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()], { errorMap: () => ({ message: 'expected a string, number or boolean' }) })).default({}),
    hooks: z.array(relativePath).default([]),
    output: z
      .object({
        formats: z.array(z.enum(['raw', 'qcow2'])).nonempty().default(['raw', 'qcow2']),
        compress: z.boolean().default(false),
      })
      .strict()
      .default({}),
  })
  .strict()
  .superRefine((recipe, ctx) => {
    const { tang, threshold, clevis, tpm2 } = recipe.nbde;
    if (tang.length > 0 && !clevis) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['nbde', 'clevis'], message: 'binding to Tang at build time needs clevis in the image (nbde.clevis: true)' });
    }
    if (tpm2 && !clevis) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['nbde', 'tpm2'], message: "clevis's tpm2 pin needs clevis in the image (nbde.clevis: true)" });
    }
    for (const [index, server] of tang.entries()) {
      // With the same server twice, one server would meet a threshold meant to need two.
      if (tang.findIndex((other) => other.url === server.url) < index) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['nbde', 'tang', index, 'url'], message: `${server.url} is listed twice` });
      }
    }
    if (tang.length > 0 && threshold > tang.length) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['nbde', 'threshold'], message: `threshold ${threshold} exceeds the ${tang.length} Tang server(s) listed` });
    }
    if (recipe.disk.sectorSize === 4096 && recipe.disk.esp < MIN_4KN_ESP_BYTES) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['disk', 'esp'], message: `with disk.sectorSize 4096 the ESP must be at least ${MIN_4KN_ESP_BYTES / MiB} MiB (FAT32 needs 65525 clusters of 4096 bytes)` });
    }
    if (recipe.luks.sectorSize < recipe.disk.sectorSize) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['luks', 'sectorSize'], message: `must be at least disk.sectorSize (${recipe.disk.sectorSize}): the kernel cannot map ${recipe.luks.sectorSize}-byte LUKS2 sectors on a disk with ${recipe.disk.sectorSize}-byte sectors` });
    }
    const { compress, compressLevel } = recipe.initramfs;
    const [lowest, highest] = COMPRESS_LEVELS[compress];
    if (compressLevel !== undefined && (compressLevel < lowest || compressLevel > highest)) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['initramfs', 'compressLevel'], message: `${compress} takes levels ${lowest} to ${highest}` });
    }
    const fixed = recipe.disk.esp + recipe.disk.boot + 4 * MiB;
    if (recipe.disk.size - fixed < 512 * MiB) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['disk', 'size'],
        message: `leaves ${Math.floor((recipe.disk.size - fixed) / MiB)} MiB for the root partition after ESP, /boot and BIOS boot; at least 512 MiB are needed`,
      });
    }
  });

export type Recipe = z.infer<typeof recipeSchema>;
export type InitramfsNetwork = Recipe['initramfs']['network'];
