/**
 * The SBOMs from a dpkg database: packages parsed as dpkg records them (installed only, source
 * package and version), purls as the purl spec's deb type writes them, and both documents
 * valid: CycloneDX by CycloneDX's own validator (inside cycloneDxJson), SPDX by the SPDX 2.3
 * JSON schema (test/data/spdx, ajv). Each package appears once, with its .deb's SHA-256.
 */
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cycloneDxJson } from '../../src/formats/sbom/cyclonedx.js';
import { owningPackages, parseDpkgStatus } from '../../src/formats/sbom/dpkg.js';
import { debPurl, type SbomInput } from '../../src/formats/sbom/model.js';
import { spdxJson } from '../../src/formats/sbom/spdx.js';
import { REPO } from './helpers.js';

const STATUS = `Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u10
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Homepage: https://www.gnu.org/software/libc/libc.html
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: libattr1
Status: install ok installed
Architecture: amd64
Source: attr (1:2.5.1-4)
Version: 1:2.5.1-4+b1
Description: extended attribute handling - shared library

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
`;

const SHA = (n: number) => n.toString(16).padStart(2, '0').repeat(32);

function input(): SbomInput {
  return {
    name: 'test-image',
    debianVersion: '12.11',
    debianMajor: '12',
    toolVersion: '0.1.0',
    recipe: { file: 'test.yaml', sha256: SHA(1) },
    mirror: { archive: 'http://mirror.example/debian', security: null },
    sourceDateEpoch: 1_700_000_000,
    packages: parseDpkgStatus(STATUS),
    debSha256: { 'libc6_2.36-9+deb12u10_amd64.deb': SHA(2), 'libattr1_1%3a2.5.1-4+b1_amd64.deb': SHA(3) },
    files: [{ path: '/boot/vmlinuz-6.1.0-1-amd64', sha256: SHA(4), sha1: 'ab'.repeat(20), package: 'libc6', comment: 'the kernel' }],
  };
}

describe('the dpkg database', () => {
  it('lists installed packages only, with their source package and version', () => {
    expect(parseDpkgStatus(STATUS).map((p) => [p.name, p.version, p.architecture, p.source, p.sourceVersion])).toEqual([
      ['adduser', '3.134', 'all', 'adduser', '3.134'],
      ['libattr1', '1:2.5.1-4+b1', 'amd64', 'attr', '1:2.5.1-4'],
      ['libc6', '2.36-9+deb12u10', 'amd64', 'glibc', '2.36-9+deb12u10'],
    ]);
    expect(parseDpkgStatus(STATUS).find((p) => p.name === 'libc6')?.summary).toBe('GNU C Library: Shared libraries');
  });

  it('finds the package that installed a file from dpkg file lists', () => {
    const lists = new Map([['shim-signed:amd64.list', '/.\n/usr/lib/shim/shimx64.efi.signed\n'], ['linux-image-6.1.0-1-amd64.list', '/boot/vmlinuz-6.1.0-1-amd64\n']]);
    expect(Object.fromEntries(owningPackages(lists, ['usr/lib/shim/shimx64.efi.signed', 'boot/vmlinuz-6.1.0-1-amd64', 'not/there']))).toEqual({
      'usr/lib/shim/shimx64.efi.signed': 'shim-signed',
      'boot/vmlinuz-6.1.0-1-amd64': 'linux-image-6.1.0-1-amd64',
    });
  });
});

describe('package URLs', () => {
  it("write the epoch's colon as is and + percent-encoded, as the purl spec's deb examples", () => {
    expect(debPurl('attr', '1:2.4.47-2+b1', 'amd64', 'debian-12')).toBe('pkg:deb/debian/attr@1:2.4.47-2%2Bb1?arch=amd64&distro=debian-12');
    expect(debPurl('attr', '1:2.4.47-2', 'source', 'debian-12')).toBe('pkg:deb/debian/attr@1:2.4.47-2?arch=source&distro=debian-12');
    expect(debPurl('libstdc++6', '12.2.0-14~deb12u1', 'amd64', 'debian-12')).toBe('pkg:deb/debian/libstdc%2B%2B6@12.2.0-14~deb12u1?arch=amd64&distro=debian-12');
  });
});

describe('CycloneDX 1.6', () => {
  it("passes the library's strict validator and lists each package once under the Debian OS component", async () => {
    const bom = JSON.parse(await cycloneDxJson(input())) as Record<string, any>;
    expect(bom).toMatchObject({ bomFormat: 'CycloneDX', specVersion: '1.6', metadata: { timestamp: '2023-11-14T22:13:20.000Z' } });
    const libraries = (bom.components as Array<Record<string, any>>).filter((c) => c.type === 'library');
    expect(libraries.map((c) => c.purl).sort()).toEqual([
      'pkg:deb/debian/adduser@3.134?arch=all&distro=debian-12',
      'pkg:deb/debian/libattr1@1:2.5.1-4%2Bb1?arch=amd64&distro=debian-12',
      'pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12',
    ]);
    const libattr = libraries.find((c) => c.name === 'libattr1')!;
    expect(libattr.hashes).toEqual([{ alg: 'SHA-256', content: SHA(3) }]);
    expect(libattr.properties).toEqual(expect.arrayContaining([{ name: 'keylessgo:debian:source', value: 'attr' }, { name: 'keylessgo:debian:source-version', value: '1:2.5.1-4' }]));
    const os = (bom.components as Array<Record<string, any>>).find((c) => c.type === 'operating-system')!;
    expect(os).toMatchObject({ name: 'debian', version: '12.11' });
    const osDependencies = (bom.dependencies as Array<{ ref: string; dependsOn?: string[] }>).find((d) => d.ref === os['bom-ref'])!;
    expect(osDependencies.dependsOn!.sort()).toEqual(libraries.map((c) => c['bom-ref']).sort());
    expect((bom.components as Array<Record<string, any>>).find((c) => c.type === 'file')).toMatchObject({ name: '/boot/vmlinuz-6.1.0-1-amd64' });
  });

  it('is the same document for the same input (no random serial number, the epoch as its time)', async () => {
    expect(await cycloneDxJson(input())).toBe(await cycloneDxJson(input()));
  });
});

describe('SPDX 2.3', () => {
  it('validates against the SPDX 2.3 JSON schema, and binary packages are GENERATED_FROM their source packages', async () => {
    const schema = JSON.parse(await readFile(join(REPO, 'test/data/spdx/spdx-schema-2.3.json'), 'utf8')) as object;
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    const validate = ajv.compile(schema);
    const document = JSON.parse(spdxJson(input())) as Record<string, any>;
    expect(validate(document), JSON.stringify(validate.errors)).toBe(true);
    expect(document).toMatchObject({ spdxVersion: 'SPDX-2.3', dataLicense: 'CC0-1.0', creationInfo: { created: '2023-11-14T22:13:20Z' } });
    const byId = new Map((document.packages as Array<Record<string, any>>).map((p) => [p.SPDXID as string, p]));
    const generatedFrom = (document.relationships as Array<Record<string, string>>).filter((r) => r.relationshipType === 'GENERATED_FROM');
    expect(generatedFrom.map((r) => [byId.get(r.spdxElementId!)!.name, byId.get(r.relatedSpdxElement!)!.name, byId.get(r.relatedSpdxElement!)!.versionInfo]).sort()).toEqual([
      ['adduser', 'adduser', '3.134'],
      ['libattr1', 'attr', '1:2.5.1-4'],
      ['libc6', 'glibc', '2.36-9+deb12u10'],
    ]);
    const libc = [...byId.values()].find((p) => p.name === 'libc6')!;
    expect(libc.checksums).toEqual([{ algorithm: 'SHA256', checksumValue: SHA(2) }]);
    expect(libc.externalRefs).toEqual([{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: 'pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12' }]);
    const kernel = (document.files as Array<Record<string, any>>)[0]!;
    expect(kernel.checksums.map((c: { algorithm: string }) => c.algorithm)).toEqual(['SHA1', 'SHA256']);
    expect(document.relationships).toContainEqual({ spdxElementId: libc.SPDXID, relationshipType: 'CONTAINS', relatedSpdxElement: kernel.SPDXID });
  });
});
