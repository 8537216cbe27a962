/**
 * The import graph of src/: no cycles (not even through types), and each layer imports only
 * itself and the layers below it (docs: the layer list in the design's architecture.md). The
 * few imports that still reach up are listed by name below, each with why; a new one fails.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(import.meta.dirname, '../../src');

/** Lowest first. A file belongs to the first layer with a matching path prefix (relative to src/). */
const LAYERS: Array<[layer: string, prefixes: string[]]> = [
  ['base', ['errors.ts', 'log.ts', 'base/']],
  ['host', ['host/']],
  ['recipe', ['recipe/']],
  ['formats', ['formats/', 'luks/', 'initramfs/']],
  ['ssh', ['ssh/']],
  ['stages', ['stages/']],
  ['pipeline', ['pipeline/']],
  ['commands', ['cli.ts', 'nbde/', 'inspect/', 'qemu/', 'fleet/']],
];

/**
 * Imports that still reach a higher layer, `from → to` (`from` ending in / stands for every
 * file below it), with why they are allowed for now. Each is debt: move the module down.
 */
const KNOWN_UPWARD: Record<string, string> = {
  'host/cryptsetup.ts → recipe/schema.ts': "luksFormat's parameters are the recipe's luks section (a type)",
  'stages/ → pipeline/stage.ts': 'the stage contract still lives in pipeline/',
  'stages/ → pipeline/context.ts': 'the stage contract still lives in pipeline/',
  'stages/ → pipeline/cache.ts': 'stages look up and store their own cache entries',
  'stages/ → pipeline/overlay.ts': 'configure writes the overlay files rendered before the build',
  'stages/ → pipeline/sparse-sha256.ts': 'export hashes with it (a format, not yet moved)',
};

const allowedUpward = (edge: string) =>
  Object.keys(KNOWN_UPWARD).find((known) => {
    const [from, to] = known.split(' → ') as [string, string];
    const [edgeFrom, edgeTo] = edge.split(' → ') as [string, string];
    return edgeTo === to && (from.endsWith('/') ? edgeFrom.startsWith(from) : edgeFrom === from);
  });

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/** Relative imports of a file (static, type-only and dynamic), as paths relative to src/. */
export function importsOf(file: string, text: string): string[] {
  const specifiers = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?from\s*'(\.[^']+)'|\bimport\(\s*'(\.[^']+)'\s*\)|(?:^|\n)\s*import\s*'(\.[^']+)'/g)].map((m) => m[1] ?? m[2] ?? m[3]!);
  return specifiers.map((s) => relative(SRC, resolve(dirname(file), s.replace(/\.js$/, '.ts'))));
}

function importGraph(): Map<string, string[]> {
  return new Map(sourceFiles(SRC).map((file) => [relative(SRC, file), importsOf(file, readFileSync(file, 'utf8'))]));
}

/** Every cycle's files (strongly connected components of more than one file, or a file importing itself). */
export function cycles(graph: Map<string, string[]>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const found: string[][] = [];
  const visit = (node: string) => {
    index.set(node, counter);
    low.set(node, counter++);
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (!graph.has(next)) continue;
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (stack.includes(next)) low.set(node, Math.min(low.get(node)!, index.get(next)!));
    }
    if (low.get(node) === index.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        component.push(member);
      } while (member !== node);
      if (component.length > 1 || graph.get(node)!.includes(node)) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!index.has(node)) visit(node);
  return found;
}

const layerOf = (file: string) => LAYERS.findIndex(([, prefixes]) => prefixes.some((p) => file === p || (p.endsWith('/') && file.startsWith(p))));

describe('the import graph of src/', () => {
  const graph = importGraph();

  it('finds the imports of every kind', () => {
    const text = "import a from './a.js';\nimport type { B } from '../b.js';\nexport { c } from './c.js';\nconst d = await import('./d.js');\nimport './e.js';\nimport x from 'node:fs';";
    expect(importsOf(join(SRC, 'pipeline/x.ts'), text)).toEqual(['pipeline/a.ts', 'b.ts', 'pipeline/c.ts', 'pipeline/d.ts', 'pipeline/e.ts']);
  });

  it('detects a cycle, also through types', () => {
    const toy = new Map([['a.ts', ['b.ts']], ['b.ts', ['c.ts']], ['c.ts', ['a.ts']], ['d.ts', ['a.ts']], ['e.ts', ['e.ts']]]);
    expect(cycles(toy)).toEqual([['a.ts', 'b.ts', 'c.ts'], ['e.ts']]);
  });

  it('has no import cycle', () => {
    expect(cycles(graph)).toEqual([]);
  });

  it('puts every file in a layer', () => {
    expect([...graph.keys()].filter((file) => layerOf(file) < 0)).toEqual([]);
  });

  it('imports only the same layer or lower ones, besides the known exceptions', () => {
    const upward = [...graph].flatMap(([from, imports]) => imports.filter((to) => layerOf(to) > layerOf(from)).map((to) => `${from} → ${to}`));
    expect(upward.filter((edge) => !allowedUpward(edge))).toEqual([]);
    // An exception that no longer happens is removed from the list.
    const used = new Set(upward.map(allowedUpward));
    expect(Object.keys(KNOWN_UPWARD).filter((known) => !used.has(known))).toEqual([]);
  });
});
