/** The host tools inspect runs, found by full path: a user's PATH often lacks sbin (cryptsetup, debugfs). */
import { HostError } from '../errors.js';
import type { HostRunner } from '../host/run.js';
import { findTool, missingTools } from '../host/tools.js';

export type ToolRunner = Pick<HostRunner, 'run'>;

/**
 * Needed for every keylessgo image (mtools: the ESP; prlimit bounds what a decompressor writes);
 * xz, bzip2 and lz4 only for initramfs images compressed with them.
 */
const REQUIRED_TOOLS = ['qemu-img', 'cryptsetup', 'debugfs', 'zstd', 'mdir', 'mcopy', 'prlimit'];

export async function inspectTools(host: HostRunner): Promise<ToolRunner> {
  const missing = await missingTools(REQUIRED_TOOLS);
  if (missing.length > 0) throw new HostError(`inspect needs ${missing.map((tool) => `${tool.name} (apt-get install ${tool.package})`).join(', ')}`);
  const paths = new Map<string, string>();
  for (const name of REQUIRED_TOOLS) paths.set(name, (await findTool(name))!);
  return { run: (file, args, options) => host.run(paths.get(file) ?? file, args, options) };
}
