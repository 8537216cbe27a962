import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { REPO } from './helpers.js';

interface GithubWorkflow {
  jobs: Record<string, { steps: Array<{ run?: string }> }>;
}
type GitlabPipeline = Record<string, { script?: string[]; after_script?: string[] }>;

/** The example CI files and the shell scripts they run. */
const EXAMPLES: Record<string, (doc: unknown) => string[]> = {
  'examples/ci/github-actions.yml': (doc) => Object.values((doc as GithubWorkflow).jobs).flatMap((job) => job.steps.flatMap((step) => step.run ?? [])),
  'examples/ci/gitlab-ci.yml': (doc) => Object.values(doc as GitlabPipeline).flatMap((job) => [...(job.script ?? []), ...(job.after_script ?? [])]),
};

const read = (path: string) => readFileSync(join(REPO, path), 'utf8');
const npmScripts = Object.keys((JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts);
const makeTargets = [...read('Makefile').matchAll(/^([\w-]+):/gm)].map((m) => m[1]);
const cliSource = read('src/cli.ts');
const cliCommands = [...cliSource.matchAll(/\.command\('([\w-]+)'\)/g)].map((m) => m[1]);

/** Simple commands of a script: continuation lines joined, split at newlines, `&&`, `||`, `;` and `|`. */
function commands(script: string): string[][] {
  return script
    .replace(/\\\n/g, ' ')
    .split(/\n|&&|\|\||;|\|/)
    .map((command) => command.replace(/#.*/, '').trim().split(/\s+/).filter(Boolean))
    .filter((words) => words.length > 0);
}

describe.each(Object.entries(EXAMPLES))('%s', (path, scriptsOf) => {
  const text = read(path);
  const scripts = scriptsOf(parse(text));
  const all = scripts.flatMap(commands);

  it('parses and has scripts', () => {
    expect(scripts.length).toBeGreaterThan(0);
  });

  it('runs only npm scripts, make targets and repository scripts that exist', () => {
    for (const [tool, first, second] of all) {
      if (tool === 'npm' && first === 'run') expect(npmScripts).toContain(second);
      if (tool === 'make') expect(makeTargets).toContain(first);
      if (tool === 'bash' && first?.startsWith('scripts/')) expect(existsSync(join(REPO, first))).toBe(true);
    }
  });

  it('calls keylessgo with its real commands, flags and recipe', () => {
    const cli = all.filter(([tool, script]) => tool === 'node' && script === 'dist/cli.js');
    expect(cli.map((words) => words[2])).toEqual(['build', 'boot-test']);
    for (const words of cli) {
      expect(cliCommands).toContain(words[2]);
      for (const flag of words.filter((word) => word.startsWith('--'))) expect(cliSource).toMatch(new RegExp(`${flag}[ ,']`));
    }
    const recipe = cli[0]![3]!;
    expect(recipe).toBe('recipes/debian-bookworm.yaml');
    expect(existsSync(join(REPO, recipe))).toBe(true);
    expect(cli[1]).toEqual(expect.arrayContaining(['--accel', 'auto']));
  });

  it('installs host tools and builds keylessgo before using it', () => {
    const order = ['bash scripts/install-deps.sh', 'npm ci', 'npm run build', 'node dist/cli.js build', 'node dist/cli.js boot-test'];
    const positions = order.map((prefix) => all.findIndex((words) => words.join(' ').startsWith(prefix)));
    expect(positions.every((position) => position >= 0)).toBe(true);
    expect([...positions].sort((a, b) => a - b)).toEqual(positions);
  });

  it('keeps the image, checksums, manifest, SBOMs and boot-test result', () => {
    for (const artefact of ['out/*.qcow2', 'out/SHA256SUMS', 'out/manifest.json', 'out/*.cdx.json', 'out/*.spdx.json', 'out/boot-test-uefi/result.json']) expect(text).toContain(artefact);
  });

  it('never puts a secret into a script text or argv', () => {
    expect(scripts.join('\n')).not.toMatch(/\$\{\{\s*secrets\./);
    for (const words of all) expect(words).not.toContain('--passphrase');
  });
});
