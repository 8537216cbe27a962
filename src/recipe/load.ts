/** Reads a recipe file, validates it and resolves its paths relative to the file. */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from 'yaml';
import type { ZodIssue } from 'zod';
import { InputError } from '../errors.js';
import { parseAdvertisement, type TangAdvertisement } from '../host/tang.js';
import { recipeSchema, type Recipe } from './schema.js';

export interface LoadedRecipe {
  recipe: Recipe;
  /** Absolute path of the recipe file. */
  file: string;
  /** sha256 of the recipe file's bytes, recorded in the manifest. */
  sha256: string;
  overlayDirs: string[];
  hookFiles: string[];
  authorizedKeysFile?: string;
  /** Saved Tang advertisements per nbde.tang entry, parsed and checked against thp (undefined: fetched at build time). */
  tangAdvs: Array<TangAdvertisement | undefined>;
}

function issuePath(issue: ZodIssue): string {
  return issue.path.length ? issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : p)).join('.').replaceAll('.[', '[') : '(top level)';
}

function describeIssue(issue: ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  if (issue.code === 'invalid_type' && issue.received === 'undefined') return `required field missing (expected ${issue.expected})`;
  if (issue.code === 'invalid_enum_value') return `expected one of ${issue.options.map((o) => JSON.stringify(o)).join(', ')}, got ${JSON.stringify(issue.received)}`;
  return issue.message;
}

/** The line of the deepest recipe node on a field path (none for the top level). */
export type LineOf = (path: ReadonlyArray<string | number>) => number | undefined;

/** Validates parsed YAML; `file` names the source in messages, `lineOf` locates fields. Exported for unit tests. */
export function validateRecipe(data: unknown, file: string, lineOf: LineOf = () => undefined): Recipe {
  const result = recipeSchema.safeParse(data);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    // An unknown field is located at its key, a missing one at the mapping it is missing from.
    const line = lineOf(issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0]!] : issue.path);
    return `  ${line ? `${file}:${line}: ` : ''}${issuePath(issue)}: ${describeIssue(issue)}`;
  });
  throw new InputError(`invalid recipe\n${lines.join('\n')}`, file);
}

export function parseRecipeText(text: string, file: string): Recipe {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true, lineCounter });
  if (document.errors.length > 0) {
    const first = document.errors[0]!;
    const line = first.linePos?.[0];
    throw new InputError(`invalid YAML${line ? ` at line ${line.line}, column ${line.col}` : ''}: ${first.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`, file);
  }
  let data: unknown;
  try {
    data = document.toJS();
  } catch (error) {
    // Aliases are expanded here: a recipe that would expand without bound is refused.
    throw new InputError(`invalid YAML: ${(error as Error).message}`, file);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new InputError('a recipe must be a YAML mapping (name: ..., suite: ...)', file);
  }
  return validateRecipe(data, file, (path) => {
    for (let depth = path.length; depth > 0; depth--) {
      const node = fieldNode(document.getIn(path.slice(0, depth - 1), true), path[depth - 1]!);
      if (node?.range) return lineCounter.linePos(node.range[0]).line;
    }
    return undefined;
  });
}

/** A mapping's key node (where its field is written, also for a block value below it), or a list's item. */
function fieldNode(parent: unknown, segment: string | number): Node | undefined {
  if (isMap(parent)) return parent.items.find((pair) => isScalar(pair.key) && pair.key.value === segment)?.key as Node | undefined;
  if (isSeq(parent) && typeof segment === 'number') return parent.items[segment] as Node | undefined;
  return undefined;
}

async function requireFile(path: string, kind: 'file' | 'directory', where: string): Promise<void> {
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new InputError(`${path} does not exist`, where);
  if (kind === 'file' ? !info.isFile() : !info.isDirectory()) throw new InputError(`${path} is not a ${kind}`, where);
}

async function readSavedAdvertisement(file: string, thp: string | undefined, where: string): Promise<TangAdvertisement> {
  await requireFile(file, 'file', where);
  try {
    return parseAdvertisement(await readFile(file, 'utf8'), thp);
  } catch (error) {
    throw new InputError(`${file}: ${(error as Error).message}`, where);
  }
}

export async function loadRecipe(path: string): Promise<LoadedRecipe> {
  const file = resolve(path);
  const bytes = await readFile(file).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read recipe: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, path);
  });
  const recipe = parseRecipeText(bytes.toString('utf8'), path);
  const base = dirname(file);
  const overlayDirs = recipe.overlays.map((p) => resolve(base, p));
  const hookFiles = recipe.hooks.map((p) => resolve(base, p));
  const authorizedKeysFile = recipe.authorizedKeys ? resolve(base, recipe.authorizedKeys) : undefined;
  for (const [i, dir] of overlayDirs.entries()) await requireFile(dir, 'directory', `${path}: overlays[${i}]`);
  for (const [i, hook] of hookFiles.entries()) await requireFile(hook, 'file', `${path}: hooks[${i}]`);
  if (authorizedKeysFile) await requireFile(authorizedKeysFile, 'file', `${path}: authorizedKeys`);
  const tangAdvs: LoadedRecipe['tangAdvs'] = [];
  for (const [i, server] of recipe.nbde.tang.entries()) {
    tangAdvs.push(server.adv ? await readSavedAdvertisement(resolve(base, server.adv), server.thp, `${path}: nbde.tang[${i}].adv`) : undefined);
  }
  return {
    recipe,
    file,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    overlayDirs,
    hookFiles,
    authorizedKeysFile,
    tangAdvs,
  };
}
