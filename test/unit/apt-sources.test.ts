/** Host apt sources → mirror choice. Mirror URLs are made up: no real archive host belongs here. */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mirrorFromSources, parseDeb822, parseOneLine, readHostAptSources, sourceLines, type AptSource } from '../../src/host/apt-sources.js';
import { tempDir } from './helpers.js';

const ARCHIVE = 'http://mirror.example/debian';
const SECURITY = 'http://security.mirror.example/debian-security';

/** A deb822 file as a Debian 12 installer writes it, with a key block and extra stanzas. */
const DEBIAN_SOURCES = `# Written by the installer.
Types: deb deb-src
URIs: ${ARCHIVE}
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${SECURITY}
# a comment inside a stanza
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGNUfakeKEYblock
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb-src
URIs: http://sources-only.example/debian
Suites: bookworm
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
`;

describe('parseDeb822', () => {
  it('reads binary stanzas and skips comments, source-only and disabled ones', () => {
    expect(parseDeb822(DEBIAN_SOURCES)).toEqual([
      { uri: ARCHIVE, suites: ['bookworm', 'bookworm-updates'], components: ['main', 'contrib'] },
      { uri: SECURITY, suites: ['bookworm-security'], components: ['main'] },
    ]);
  });

  it('gives one source per URI of a stanza', () => {
    const text = 'Types: deb\nURIs: http://a.example/debian http://b.example/debian\nSuites: trixie\nComponents: main\n';
    expect(parseDeb822(text).map((s) => s.uri)).toEqual(['http://a.example/debian', 'http://b.example/debian']);
  });

  it('reads field names case-insensitively, continuation lines, and "Enabled: yes"', () => {
    const text = 'types: deb\nenabled: Yes\nuris: http://a.example/debian\nsuites: trixie\n trixie-updates\ncomponents: main\n';
    expect(parseDeb822(text)).toEqual([{ uri: 'http://a.example/debian', suites: ['trixie', 'trixie-updates'], components: ['main'] }]);
  });

  it.each([
    ['"Enabled: no" in any case', 'Types: deb\nEnabled: NO\nURIs: http://a.example/debian\nSuites: trixie\n'],
    ['no Types field', 'URIs: http://a.example/debian\nSuites: trixie\n'],
    ['no URIs field', 'Types: deb\nSuites: trixie\n'],
    ['an empty file', ''],
  ])('yields nothing for %s', (_what, text) => {
    expect(parseDeb822(text)).toEqual([]);
  });
});

describe('parseOneLine', () => {
  it('reads deb lines with options and comments, and skips deb-src and commented-out lines', () => {
    const text = [
      '# main archive',
      `deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${ARCHIVE} bookworm main non-free-firmware`,
      `deb-src ${ARCHIVE} bookworm main`,
      `#deb http://old.example/debian bullseye main`,
      `deb ${SECURITY} bookworm-security main # security updates`,
      '',
      'deb cdrom-without-suite',
    ].join('\n');
    expect(parseOneLine(text)).toEqual([
      { uri: ARCHIVE, suites: ['bookworm'], components: ['main', 'non-free-firmware'] },
      { uri: SECURITY, suites: ['bookworm-security'], components: ['main'] },
    ]);
  });
});

describe('mirrorFromSources', () => {
  const source = (uri: string, ...suites: string[]): AptSource => ({ uri, suites, components: ['main'] });

  it.each<[string, AptSource[], ReturnType<typeof mirrorFromSources>]>([
    ['archive and security', [source(ARCHIVE, 'bookworm', 'bookworm-updates'), source(SECURITY, 'bookworm-security')], { archive: ARCHIVE, security: SECURITY }],
    ['security listed first', [source(SECURITY, 'bookworm-security'), source(ARCHIVE, 'bookworm')], { archive: ARCHIVE, security: SECURITY }],
    ['old-style security suite', [source(ARCHIVE, 'buster'), source(SECURITY, 'buster/updates')], { archive: ARCHIVE, security: SECURITY }],
    ['backports before the archive', [source('http://backports.example/debian', 'bookworm-backports'), source(ARCHIVE, 'bookworm')], { archive: ARCHIVE, security: undefined }],
    ['no security source', [source(ARCHIVE, 'trixie')], { archive: ARCHIVE, security: undefined }],
    ['only security', [source(SECURITY, 'bookworm-security')], undefined],
    ['nothing', [], undefined],
  ])('%s', (_what, sources, expected) => {
    expect(mirrorFromSources(sources)).toEqual(expected);
  });
});

describe('sourceLines', () => {
  it('gives suite, suite-updates and suite-security lines for the target suite', () => {
    expect(sourceLines({ archive: ARCHIVE, security: SECURITY, origin: 'host' }, 'trixie', ['main', 'contrib'])).toEqual([
      `deb ${ARCHIVE} trixie main contrib`,
      `deb ${ARCHIVE} trixie-updates main contrib`,
      `deb ${SECURITY} trixie-security main contrib`,
    ]);
  });

  it('leaves out the security line when no security mirror is known', () => {
    expect(sourceLines({ archive: ARCHIVE, origin: 'recipe' }, 'bookworm', ['main'])).toEqual([
      `deb ${ARCHIVE} bookworm main`,
      `deb ${ARCHIVE} bookworm-updates main`,
    ]);
  });
});

describe('readHostAptSources', () => {
  /** Lays out files under `root` (paths relative to it) and returns root. */
  async function hostRoot(files: Record<string, string>): Promise<string> {
    const root = await tempDir();
    for (const [path, text] of Object.entries(files)) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      await writeFile(join(root, path), text);
    }
    return root;
  }

  it('reads sources.list.d (*.sources and *.list, sorted) and then sources.list', async () => {
    const root = await hostRoot({
      'etc/apt/sources.list.d/debian.sources': DEBIAN_SOURCES,
      'etc/apt/sources.list.d/a-extra.list': 'deb http://extra.example/debian bookworm main\n',
      'etc/apt/sources.list.d/notes.txt': 'deb http://ignored.example/debian bookworm main\n',
      'etc/apt/sources.list.d/old.list.save': 'deb http://ignored.example/debian bookworm main\n',
      'etc/apt/sources.list': 'deb http://legacy.example/debian bookworm main\n',
    });
    expect((await readHostAptSources(root)).map((s) => s.uri)).toEqual([
      'http://extra.example/debian',
      ARCHIVE,
      SECURITY,
      'http://legacy.example/debian',
    ]);
  });

  it('feeds mirrorFromSources on a host with only deb822 sources', async () => {
    const root = await hostRoot({ 'etc/apt/sources.list.d/debian.sources': DEBIAN_SOURCES });
    expect(mirrorFromSources(await readHostAptSources(root))).toEqual({ archive: ARCHIVE, security: SECURITY });
  });

  it('returns nothing for a root without /etc/apt', async () => {
    expect(await readHostAptSources(await hostRoot({}))).toEqual([]);
  });
});
