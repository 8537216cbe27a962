/**
 * The parts of a build's manifest.json the boot test and the fleet commands compare against.
 * Only these fields are validated, so the manifest can grow without breaking them.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { InputError } from '../errors.js';
import { SUITES } from '../recipe/schema.js';

const manifestSchema = z.object({
  recipe: z.object({ name: z.string(), suite: z.enum(SUITES) }),
  kernel: z.object({ version: z.string() }),
  // headerDigests: absent in manifests from before `keylessgo status`.
  luks: z.object({ uuid: z.string(), cipher: z.string(), keySize: z.number(), mapperName: z.string(), headerDigests: z.array(z.object({ salt: z.string(), digest: z.string() })).nullish() }),
  // Absent in manifests from before the root grew at first boot, sectorSize before 4Kn images.
  disk: z.object({ growOnFirstBoot: z.boolean(), sectorSize: z.number().default(512) }).default({ growOnFirstBoot: false, sectorSize: 512 }),
  // Absent in manifests from before 4Kn images (which boot with UEFI only).
  bootModes: z.array(z.string()).default(['uefi', 'bios']),
  partitions: z.array(z.object({ role: z.string(), startBytes: z.number(), sizeBytes: z.number() })),
  dropbear: z.object({
    port: z.number(),
    hostKeys: z.array(z.object({ type: z.string(), fingerprint: z.string() })).nonempty(),
  }),
});

export type BootManifest = z.infer<typeof manifestSchema>;

export async function readBootManifest(path: string): Promise<BootManifest> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the build manifest: ${error.code === 'ENOENT' ? 'no such file (pass --manifest FILE)' : error.message}`, path);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new InputError(`not JSON: ${(error as Error).message}`, path);
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new InputError(`not a keylessgo build manifest: ${issue.path.join('.')}: ${issue.message}`, path);
  }
  return parsed.data;
}

export function bootPartition(manifest: BootManifest): { startBytes: number; sizeBytes: number } {
  const boot = manifest.partitions.find((p) => p.role === 'boot');
  if (!boot) throw new InputError('the manifest lists no boot partition');
  return boot;
}
