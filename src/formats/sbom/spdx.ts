/**
 * The SPDX 2.3 SBOM (JSON). The document describes the image, which CONTAINS every installed
 * binary package (purl, the SHA-256 of its .deb as the package checksum), each GENERATED_FROM
 * its source package (purl with arch=source); the boot files are files (SHA-1, which SPDX 2.3
 * requires, and SHA-256), CONTAINED by the package they came from or else by the image.
 * Licenses are NOASSERTION: Debian records them per file in copyright files, not per package.
 */
import { contentUuid, createdAt, debPurl, debSha256Of, distroOf, type SbomInput } from './model.js';

/** SPDX identifiers allow letters, digits, `.` and `-`: anything else is written as `-` plus a short hash to stay unique. */
function spdxId(kind: string, ...parts: string[]): string {
  const text = parts.join('-');
  const clean = text.replace(/[^A-Za-z0-9.-]/g, '-');
  const suffix = clean === text ? '' : `-${Buffer.from(text).toString('hex').slice(-8)}`;
  return `SPDXRef-${kind}-${clean}${suffix}`;
}

interface Relationship {
  spdxElementId: string;
  relationshipType: 'DESCRIBES' | 'CONTAINS' | 'GENERATED_FROM';
  relatedSpdxElement: string;
}

export function spdxJson(input: SbomInput): string {
  const distro = distroOf(input);
  const image = 'SPDXRef-Image';
  const relationships: Relationship[] = [{ spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: image }];
  const packages: Array<Record<string, unknown>> = [
    {
      SPDXID: image,
      name: input.name,
      versionInfo: `debian-${input.debianVersion}`,
      downloadLocation: 'NOASSERTION',
      filesAnalyzed: false,
      primaryPackagePurpose: 'OPERATING_SYSTEM',
      supplier: 'NOASSERTION',
      comment: `Debian ${input.debianVersion} whole-disk image with a LUKS2 root, built by keylessgo from ${input.recipe.file} (SHA-256 ${input.recipe.sha256})`,
    },
  ];
  const sources = new Map<string, string>();
  const binaries = new Map<string, string>();
  for (const pkg of input.packages) {
    const id = spdxId('Package-deb', pkg.name, pkg.architecture, pkg.version);
    binaries.set(pkg.name, id);
    const sha256 = debSha256Of(input, pkg);
    packages.push({
      SPDXID: id,
      name: pkg.name,
      versionInfo: pkg.version,
      supplier: 'Organization: Debian',
      downloadLocation: 'NOASSERTION',
      filesAnalyzed: false,
      ...(sha256 ? { checksums: [{ algorithm: 'SHA256', checksumValue: sha256 }] } : {}),
      ...(pkg.homepage ? { homepage: pkg.homepage } : {}),
      ...(pkg.summary ? { summary: pkg.summary } : {}),
      licenseConcluded: 'NOASSERTION',
      licenseDeclared: 'NOASSERTION',
      copyrightText: 'NOASSERTION',
      externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: debPurl(pkg.name, pkg.version, pkg.architecture, distro) }],
    });
    relationships.push({ spdxElementId: image, relationshipType: 'CONTAINS', relatedSpdxElement: id });
    const sourceKey = `${pkg.source} ${pkg.sourceVersion}`;
    if (!sources.has(sourceKey)) {
      const sourceId = spdxId('Source-deb', pkg.source, pkg.sourceVersion);
      sources.set(sourceKey, sourceId);
      packages.push({
        SPDXID: sourceId,
        name: pkg.source,
        versionInfo: pkg.sourceVersion,
        supplier: 'Organization: Debian',
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        primaryPackagePurpose: 'SOURCE',
        licenseConcluded: 'NOASSERTION',
        licenseDeclared: 'NOASSERTION',
        copyrightText: 'NOASSERTION',
        externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: debPurl(pkg.source, pkg.sourceVersion, 'source', distro) }],
      });
    }
    relationships.push({ spdxElementId: id, relationshipType: 'GENERATED_FROM', relatedSpdxElement: sources.get(sourceKey)! });
  }
  const files = input.files.map((file) => {
    const id = spdxId('File', file.path);
    const owner = file.package === undefined ? undefined : binaries.get(file.package);
    relationships.push({ spdxElementId: owner ?? image, relationshipType: 'CONTAINS', relatedSpdxElement: id });
    return {
      SPDXID: id,
      fileName: `./${file.path.replace(/^\/+/, '')}`,
      checksums: [
        { algorithm: 'SHA1', checksumValue: file.sha1 },
        { algorithm: 'SHA256', checksumValue: file.sha256 },
      ],
      licenseConcluded: 'NOASSERTION',
      copyrightText: 'NOASSERTION',
      comment: file.comment,
    };
  });
  const document = {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: `${input.name} (keylessgo image)`,
    documentNamespace: `urn:uuid:${contentUuid(input, 'spdx')}`,
    creationInfo: {
      created: createdAt(input),
      creators: [`Tool: keylessgo-${input.toolVersion}`],
      comment: `Recipe ${input.recipe.file} (SHA-256 ${input.recipe.sha256}); mirror ${input.mirror.archive}${input.mirror.security ? `, security ${input.mirror.security}` : ''}; SOURCE_DATE_EPOCH ${input.sourceDateEpoch}. Packages from the image's dpkg database.`,
    },
    documentDescribes: [image],
    packages,
    files,
    relationships,
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}
