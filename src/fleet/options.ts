/** The options every fleet command (unlock, status, enroll, rebind) shares, for cli.ts. */
import { InvalidArgumentError, Option } from 'commander';
import type { Logger } from '../log.js';
import { defaultRetryFile, updateRetryFile } from './retry.js';
import { DEFAULT_PARALLEL, type FleetReport } from './run.js';
import { DEFAULT_PORT, DEFAULT_USER, resolveTargets, type FleetTarget } from './targets.js';

function positive(name: string, max = Infinity) {
  return (value: string): number => {
    const number = Number(value);
    if (!Number.isInteger(number) || number <= 0 || number > max) throw new InvalidArgumentError(`${name} must be a whole number from 1${max === Infinity ? '' : ` to ${max}`}`);
    return number;
  };
}

export interface FleetCliOptions {
  host?: string[];
  port?: number;
  user?: string;
  inventory?: string;
  limit?: string;
  parallel?: number;
  json?: boolean;
  retryFile?: string;
}

/** --host/--inventory/--limit/--port/--user/--parallel/--json, to add to a command with addOption. */
export function fleetOptions(): Option[] {
  return [
    new Option('--host <host...>', 'the machine(s), reachable over SSH (several: --host a b c)'),
    new Option('--inventory <file>', 'Ansible inventory: YAML, INI, or the JSON of `ansible-inventory -i SOURCE --list` (any dynamic source); ansible_host, ansible_port, ansible_user, groups'),
    new Option('--limit <pattern>', "only these hosts: Ansible's host patterns (group, host, web*, a:b, a:&b, a:!b; @FILE: the hosts a retry file lists)"),
    new Option('--port <port>', `SSH port (inventory: for hosts without ansible_port; default ${DEFAULT_PORT})`).argParser(positive('--port', 65535)),
    new Option('--user <user>', `SSH user (inventory: for hosts without ansible_user; default ${DEFAULT_USER})`),
    new Option('--parallel <n>', `hosts at a time (default ${DEFAULT_PARALLEL}, at most the number of hosts)`).argParser(positive('--parallel')),
    new Option('--json', 'print one JSON record per host (one line each) instead of the summary table'),
    new Option('--retry-file <file>', 'write the hosts not done (failed, interrupted, not started) here, for --limit @FILE (default: beside the inventory, INVENTORY.COMMAND.retry; with several --host, keylessgo-COMMAND.retry)'),
  ];
}

/** After a fleet command: its retry file (retry.ts), then the exit code. */
export async function finishFleetCommand<T>(command: string, opts: FleetCliOptions, report: FleetReport<T>, log: Logger): Promise<number> {
  const path = opts.retryFile ?? defaultRetryFile(command, { inventory: opts.inventory, hosts: new Set(opts.host).size });
  if (path) await updateRetryFile(report, path, log);
  return report.exitCode;
}

export function fleetTargets(opts: FleetCliOptions): Promise<FleetTarget[]> {
  return resolveTargets({ host: opts.host, inventory: opts.inventory, limit: opts.limit, port: opts.port, user: opts.user });
}
