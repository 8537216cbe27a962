/**
 * The SBOMs beside an image (`<name>.cdx.json`, `<name>.spdx.json`, as its manifest lists them,
 * else by the image's name): what each is and how much it lists. `inspect --check` verifies
 * their SHA-256 (verify.ts).
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SBOM_OUTPUTS } from '../formats/sbom/model.js';
import type { Manifest } from './manifest.js';

export interface SbomSummary {
  file: string;
  /** `CycloneDX 1.6`, `SPDX-2.3`, as the file says. */
  format: string;
  /** Installed packages it lists (CycloneDX libraries; SPDX packages with a purl, source packages left out). */
  packages: number;
  /** Files it lists (boot files, initramfs scripts). */
  files: number;
}

function summarise(file: string, json: Record<string, any>): SbomSummary {
  if (json.bomFormat === 'CycloneDX') {
    const components = (json.components ?? []) as Array<{ type?: string }>;
    return { file, format: `CycloneDX ${json.specVersion}`, packages: components.filter((c) => c.type === 'library').length, files: components.filter((c) => c.type === 'file').length };
  }
  if (typeof json.spdxVersion === 'string') {
    const packages = (json.packages ?? []) as Array<{ primaryPackagePurpose?: string; externalRefs?: Array<{ referenceType?: string }> }>;
    const installed = packages.filter((p) => p.primaryPackagePurpose === undefined && p.externalRefs?.some((r) => r.referenceType === 'purl'));
    return { file, format: json.spdxVersion as string, packages: installed.length, files: ((json.files ?? []) as unknown[]).length };
  }
  throw new Error('neither CycloneDX nor SPDX');
}

/** The SBOMs beside `image`, each summarised or (unreadable) described in `notes`. */
export async function readSboms(image: string, manifest: Manifest | undefined, notes: string[]): Promise<SbomSummary[]> {
  const dir = dirname(image);
  const stem = basename(image).replace(/\.(raw|qcow2|img)$/, '');
  const listed = manifest?.outputs?.filter((o) => SBOM_OUTPUTS.some((s) => s.format === o.format)).map((o) => o.path);
  const names = listed ?? SBOM_OUTPUTS.map((s) => `${stem}${s.suffix}`);
  const sboms: SbomSummary[] = [];
  for (const name of names) {
    const file = join(dir, name);
    const text = await readFile(file, 'utf8').catch(() => undefined);
    if (text === undefined) {
      if (listed) notes.push(`${file}: the manifest lists this SBOM, but it is missing`);
      continue;
    }
    try {
      sboms.push(summarise(file, JSON.parse(text) as Record<string, any>));
    } catch (error) {
      notes.push(`${file}: not an SBOM keylessgo reads: ${(error as Error).message.split('\n')[0]}`);
    }
  }
  return sboms;
}
