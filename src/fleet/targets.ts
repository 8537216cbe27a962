/**
 * The hosts a fleet command works on: `--host` (one or more, same port and user) or an
 * Ansible inventory, narrowed with `--limit` (which may name retry files: `@FILE`).
 */
import { InputError } from '../errors.js';
import { readInventory, selectHosts } from './inventory.js';
import { expandRetryFiles } from './retry.js';

export interface FleetTarget {
  /** The name operators know the host by (inventory hostname, or the --host value). */
  name: string;
  /** What to connect to: ansible_host, else the name. */
  address: string;
  port: number;
  user: string;
  /** Every inventory variable of the host (group vars merged, host vars win). */
  vars: Record<string, unknown>;
}

export interface TargetOptions {
  host?: string[];
  inventory?: string;
  limit?: string;
  /** Default for hosts without ansible_port (22). */
  port?: number;
  /** Default for hosts without ansible_user (root). */
  user?: string;
}

export const DEFAULT_PORT = 22;
export const DEFAULT_USER = 'root';

function portVar(value: unknown, host: string, file: string): number | undefined {
  if (value === undefined) return undefined;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InputError(`host ${host}: ansible_port ${JSON.stringify(value)} is not a TCP port`, file);
  return port;
}

export async function resolveTargets(options: TargetOptions): Promise<FleetTarget[]> {
  const hosts = options.host ?? [];
  if (hosts.length > 0 && options.inventory) throw new InputError('give either --host or --inventory, not both');
  if (hosts.length === 0 && !options.inventory) throw new InputError('no hosts: give --host HOST or --inventory FILE');
  const port = options.port ?? DEFAULT_PORT;
  const user = options.user ?? DEFAULT_USER;
  const limit = options.limit === undefined ? undefined : await expandRetryFiles(options.limit);
  if (!options.inventory) {
    const targets = [...new Set(hosts)].map((host) => ({ name: host, address: host, port, user, vars: {} }));
    if (!limit) return targets;
    const names = new Set(selectHosts({ hosts: new Map(targets.map((t) => [t.name, {}])), groups: new Map() }, limit));
    if (names.size === 0) throw new InputError(`matches none of the --host values`, `--limit ${options.limit}`);
    return targets.filter((t) => names.has(t.name));
  }
  const file = options.inventory;
  const inventory = await readInventory(file);
  const names = selectHosts(inventory, limit ?? 'all');
  if (names.length === 0) throw new InputError(options.limit ? `--limit ${options.limit} matches no host` : 'no hosts', file);
  return names.map((name) => {
    const vars = inventory.hosts.get(name)!;
    return {
      name,
      address: typeof vars.ansible_host === 'string' && vars.ansible_host !== '' ? vars.ansible_host : name,
      port: portVar(vars.ansible_port, name, file) ?? port,
      user: typeof vars.ansible_user === 'string' && vars.ansible_user !== '' ? vars.ansible_user : user,
      vars,
    };
  });
}
