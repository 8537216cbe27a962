/**
 * Overlays are directory trees copied over the image's root; `*.ejs` files are rendered
 * with the build's variables first. All templates are rendered before the build touches
 * the disk, so a template error costs nothing.
 */
import ejs from 'ejs';
import { lstat, mkdir, readdir, readFile, readlink, writeFile, chmod } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InputError } from '../errors.js';

/** The overlay every image gets (crypttab, fstab, dropbear, network, grub.cfg), shipped with keylessgo. */
export const BASE_OVERLAY = fileURLToPath(new URL('../../overlays/base', import.meta.url));

export interface RenderedFile {
  /** Path inside the image, relative to its root. */
  target: string;
  content: Buffer;
  mode: number;
  /** Overlay file it came from, for messages. */
  source: string;
}

async function listFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...(await listFiles(path)));
    else if (entry.isFile()) files.push(path);
    else throw new InputError('overlays may hold only regular files and directories (no symlinks or devices)', path);
  }
  return files.sort();
}

function templateError(error: unknown, source: string): InputError {
  const message = error instanceof Error ? error.message : String(error);
  const lines = message.split('\n').filter((l) => l.trim());
  // Runtime errors: "file:line", a code excerpt, then the cause. Syntax errors: the cause
  // first ("... while compiling ejs"), then hints.
  const location = /:(\d+)$/.exec(lines[0] ?? '')?.[1];
  const cause = location ? lines.at(-1) : lines[0]?.replace(/ in \S+ while compiling ejs$/, '');
  return new InputError(`template error: ${cause}`, location ? `${source}:${location}` : source);
}

export async function renderOverlays(dirs: readonly string[], data: Record<string, unknown>): Promise<RenderedFile[]> {
  const byTarget = new Map<string, RenderedFile>();
  for (const dir of dirs) {
    const sourceOf = new Map<string, string>();
    for (const source of await listFiles(dir)) {
      const isTemplate = source.endsWith('.ejs');
      const target = relative(dir, isTemplate ? source.slice(0, -4) : source);
      // Within one overlay, "x" and "x.ejs" would silently race for the same file.
      const twin = sourceOf.get(target);
      if (twin) throw new InputError(`overlay target ${target} is also given by ${twin}`, source);
      sourceOf.set(target, source);
      const raw = await readFile(source);
      let content = raw;
      if (isTemplate) {
        try {
          content = Buffer.from(ejs.render(raw.toString('utf8'), data, { filename: source, strict: true, _with: false, localsName: 'it' }));
        } catch (error) {
          throw templateError(error, source);
        }
      }
      const { mode } = await lstat(source);
      // Later overlays replace files of earlier ones (recipe overlays override the base).
      byTarget.set(target, { target, content, mode: mode & 0o777, source });
    }
  }
  return [...byTarget.values()];
}

/**
 * Resolves `target` inside `root`, following symlinks as the image would see them, so an
 * absolute link in the image (e.g. /etc/resolv.conf) never makes us write onto the host.
 */
export async function resolveInRoot(rootPath: string, target: string): Promise<string> {
  const root = resolve(rootPath);
  const parts = target.split('/').filter((p) => p && p !== '.');
  let current = root;
  for (let hops = 0, i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (part === '..') {
      current = current === root ? root : dirname(current);
      continue;
    }
    const next = join(current, part);
    const info = await lstat(next).catch(() => undefined);
    if (info?.isSymbolicLink()) {
      if (++hops > 40) throw new InputError('too many symlinks', target);
      const link = await readlink(next);
      const rest = parts.slice(i + 1);
      const base = isAbsolute(link) ? root : current;
      const linkParts = link.split('/').filter(Boolean);
      parts.splice(0, parts.length, ...relative(root, base).split(sep).filter(Boolean), ...linkParts, ...rest);
      current = root;
      i = -1;
      continue;
    }
    current = next;
  }
  const resolved = resolve(current);
  if (resolved !== root && !resolved.startsWith(root + sep)) throw new InputError('path escapes the image root', target);
  return resolved;
}

export async function writeOverlayFiles(root: string, files: readonly RenderedFile[]): Promise<void> {
  for (const file of files) {
    const path = await resolveInRoot(root, file.target);
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await writeFile(path, file.content, { mode: file.mode });
    await chmod(path, file.mode);
  }
}
