/** Reads a recipe file, validates it and resolves its paths relative to the file. */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { ZodIssue } from 'zod';
import { InputError } from '../errors.js';
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
  /** Saved Tang advertisements per nbde.tang entry (undefined: fetched at build time). */
  tangAdvFiles: Array<string | undefined>;
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

/** Validates parsed YAML; `file` names the source in messages. Exported for unit tests. */
export function validateRecipe(data: unknown, file: string): Recipe {
  const result = recipeSchema.safeParse(data);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => `  ${issuePath(issue)}: ${describeIssue(issue)}`);
  throw new InputError(`invalid recipe\n${lines.join('\n')}`, file);
}

export function parseRecipeText(text: string, file: string): Recipe {
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    const first = document.errors[0]!;
    const line = first.linePos?.[0];
    throw new InputError(`invalid YAML${line ? ` at line ${line.line}, column ${line.col}` : ''}: ${first.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`, file);
  }
  const data: unknown = document.toJS();
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new InputError('a recipe must be a YAML mapping (name: ..., suite: ...)', file);
  }
  return validateRecipe(data, file);
}

async function requireFile(path: string, kind: 'file' | 'directory', where: string): Promise<void> {
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new InputError(`${path} does not exist`, where);
  if (kind === 'file' ? !info.isFile() : !info.isDirectory()) throw new InputError(`${path} is not a ${kind}`, where);
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
  const tangAdvFiles = recipe.nbde.tang.map((server) => (server.adv ? resolve(base, server.adv) : undefined));
  for (const [i, adv] of tangAdvFiles.entries()) if (adv) await requireFile(adv, 'file', `${path}: nbde.tang[${i}].adv`);
  return {
    recipe,
    file,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    overlayDirs,
    hookFiles,
    authorizedKeysFile,
    tangAdvFiles,
  };
}
