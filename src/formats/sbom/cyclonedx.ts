/**
 * The CycloneDX 1.6 SBOM (JSON), made with CycloneDX's own library and checked by its strict
 * JSON validator before anything is written. Laid out as scanners read an operating system's
 * packages (grype, trivy): an `operating-system` component (debian, the image's release) on
 * which every installed package depends, each with its purl (`distro=debian-12`), the SHA-256
 * of its .deb and its source package as properties; the boot files as `file` components.
 */
import * as CDX from '@cyclonedx/cyclonedx-library';
import { contentUuid, debPurl, debSha256Of, distroOf, type SbomInput } from './model.js';

const { Component, Property, PropertyRepository, HashDictionary } = CDX.Models;
const { ComponentType, HashAlgorithm } = CDX.Enums;

const properties = (entries: Array<[string, string | undefined]>) =>
  new PropertyRepository(entries.filter((entry): entry is [string, string] => entry[1] !== undefined).map(([name, value]) => new Property(name, value)));

/** The SBOM as CycloneDX 1.6 JSON; throws when the library's validator finds it invalid. */
export async function cycloneDxJson(input: SbomInput): Promise<string> {
  const bom = new CDX.Models.Bom({ serialNumber: `urn:uuid:${contentUuid(input, 'cyclonedx')}` });
  bom.metadata.timestamp = new Date(input.sourceDateEpoch * 1000);
  bom.metadata.tools.components.add(new Component(ComponentType.Application, 'keylessgo', { version: input.toolVersion }));
  const image = new Component(ComponentType.Platform, input.name, {
    bomRef: `image:${input.name}`,
    description: `Debian ${input.debianVersion} whole-disk image with a LUKS2 root, built by keylessgo`,
    properties: properties([
      ['keylessgo:recipe', input.recipe.file],
      ['keylessgo:recipe:sha256', input.recipe.sha256],
      ['keylessgo:mirror', input.mirror.archive],
      ['keylessgo:mirror:security', input.mirror.security ?? undefined],
      ['keylessgo:source-date-epoch', String(input.sourceDateEpoch)],
    ]),
  });
  bom.metadata.component = image;
  const os = new Component(ComponentType.OperatingSystem, 'debian', { bomRef: `os:debian-${input.debianVersion}`, version: input.debianVersion, description: `Debian GNU/Linux ${input.debianVersion}` });
  bom.components.add(os);
  image.dependencies.add(os.bomRef);

  const distro = distroOf(input);
  for (const pkg of input.packages) {
    const purl = debPurl(pkg.name, pkg.version, pkg.architecture, distro);
    const sha256 = debSha256Of(input, pkg);
    const component = new Component(ComponentType.Library, pkg.name, {
      bomRef: purl,
      version: pkg.version,
      purl,
      description: pkg.summary,
      hashes: new HashDictionary(sha256 ? [[HashAlgorithm['SHA-256'], sha256]] : []),
      properties: properties([
        ['keylessgo:debian:architecture', pkg.architecture],
        ['keylessgo:debian:source', pkg.source],
        ['keylessgo:debian:source-version', pkg.sourceVersion],
        ['keylessgo:debian:source-purl', debPurl(pkg.source, pkg.sourceVersion, 'source', distro)],
        ['keylessgo:debian:maintainer', pkg.maintainer],
      ]),
    });
    bom.components.add(component);
    os.dependencies.add(component.bomRef);
  }
  for (const file of input.files) {
    const component = new Component(ComponentType.File, file.path, {
      bomRef: `file:${file.path}`,
      description: file.comment,
      hashes: new HashDictionary([
        [HashAlgorithm['SHA-256'], file.sha256],
        [HashAlgorithm['SHA-1'], file.sha1],
      ]),
      properties: properties([['keylessgo:debian:package', file.package]]),
    });
    bom.components.add(component);
    image.dependencies.add(component.bomRef);
  }

  const serializer = new CDX.Serialize.JsonSerializer(new CDX.Serialize.JSON.Normalize.Factory(CDX.Spec.Spec1dot6));
  const json = `${serializer.serialize(bom, { sortLists: true, space: 2 })}\n`;
  const invalid = await new CDX.Validation.JsonStrictValidator(CDX.Spec.Version.v1dot6).validate(json);
  if (invalid) throw new Error(`the CycloneDX SBOM does not validate: ${JSON.stringify(invalid).slice(0, 500)}`);
  return json;
}
