/**
 * What both SBOMs (CycloneDX and SPDX) describe: the image's installed packages with their
 * source packages and the SHA-256 of the .deb each came from, and the boot files keylessgo
 * put on /boot and the ESP and into the initramfs. Built from the image's own tree; it holds
 * no secret (no key, no passphrase: host keys and authorized keys are not listed).
 */
import { uuidFromText } from '../../base/uuid.js';
import { debFileName } from '../../host/package-cache.js';
import type { DpkgPackage } from './dpkg.js';

export interface SbomFile {
  /** Where it is: `/boot/vmlinuz-...`, `ESP/EFI/BOOT/BOOTX64.EFI`, `initramfs/scripts/init-top/...`. */
  path: string;
  sha256: string;
  sha1: string;
  /** The package it was installed from (dpkg's file lists); none for files keylessgo made. */
  package?: string;
  /** What it is, in words. */
  comment: string;
}

export interface SbomInput {
  /** The image's name (the recipe's). */
  name: string;
  /** Debian's release as the image says it (/etc/debian_version, e.g. 12.11) and its major version. */
  debianVersion: string;
  debianMajor: string;
  toolVersion: string;
  recipe: { file: string; sha256: string };
  mirror: { archive: string; security: string | null };
  sourceDateEpoch: number;
  packages: DpkgPackage[];
  /** SHA-256 of each package's .deb by its file name in apt's cache (debFileName). */
  debSha256: Record<string, string>;
  files: SbomFile[];
}

/** Tool, format and file names of the two SBOMs beside an image. */
export const SBOM_OUTPUTS = [
  { format: 'cyclonedx', suffix: '.cdx.json', spec: 'CycloneDX 1.6' },
  { format: 'spdx', suffix: '.spdx.json', spec: 'SPDX-2.3' },
] as const;

/**
 * A package URL for a Debian package (purl-spec, type deb): `+` percent-encoded, the epoch's
 * `:` kept, as the type's own example `pkg:deb/debian/attr@1:2.4.47-2%2Bb1?arch=amd64`.
 */
export function debPurl(name: string, version: string, arch: string, distro: string): string {
  const encode = (text: string) => encodeURIComponent(text).replaceAll('%3A', ':');
  return `pkg:deb/debian/${encode(name)}@${encode(version)}?arch=${encode(arch)}&distro=${encode(distro)}`;
}

/** The purl `distro` qualifier: debian-12. */
export const distroOf = (input: Pick<SbomInput, 'debianMajor'>) => `debian-${input.debianMajor}`;

/** The .deb's SHA-256 for an installed package, if the build knows it. */
export function debSha256Of(input: Pick<SbomInput, 'debSha256'>, pkg: DpkgPackage): string | undefined {
  return input.debSha256[debFileName(pkg)];
}

/**
 * A UUID that names this SBOM's content (no random serial number: two builds of the same
 * image contents write the same document).
 */
export function contentUuid(input: SbomInput, kind: string): string {
  return uuidFromText(JSON.stringify([kind, input.name, input.recipe.sha256, input.sourceDateEpoch, input.packages, input.files]));
}

/** SOURCE_DATE_EPOCH as the SBOMs' creation time (whole seconds, UTC). */
export const createdAt = (input: Pick<SbomInput, 'sourceDateEpoch'>) => new Date(input.sourceDateEpoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
