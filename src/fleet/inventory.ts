/**
 * Ansible inventories: the two formats operators keep their fleets in, YAML (`all:` with
 * `hosts:`, `children:`, `vars:`) and INI (`[group]`, `[group:children]`, `[group:vars]`,
 * `host key=value`), and the JSON that `ansible-inventory -i SOURCE --list` prints for any
 * source (dynamic inventory plugins such as OpenStack's or NetBox's, constructed groups).
 * Variables follow Ansible's precedence: the `all` group, then groups from parent to child
 * (alphabetically among equals), then the host's own. Host ranges such as `node[01:03]`
 * expand in YAML and INI. `--limit` takes Ansible's host patterns.
 *
 * Errors name the file and line ("inventory.ini:7: ...").
 */
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Node, type YAMLMap } from 'yaml';
import { InputError } from '../errors.js';

export type HostVars = Record<string, unknown>;

export interface Inventory {
  /** Host → its variables with group variables merged in (host variables win); in file order. */
  hosts: Map<string, HostVars>;
  /** Group → its hosts, those of its child groups included. */
  groups: Map<string, Set<string>>;
}

interface RawGroup {
  hosts: Set<string>;
  children: Set<string>;
  vars: HostVars;
}

/** What both parsers collect before variables are merged. */
class InventoryBuilder {
  readonly groups = new Map<string, RawGroup>();
  readonly hostVars = new Map<string, HostVars>();

  constructor(readonly file: string) {
    this.group('all');
    this.group('ungrouped');
  }

  group(name: string): RawGroup {
    let group = this.groups.get(name);
    if (!group) {
      group = { hosts: new Set(), children: new Set(), vars: {} };
      this.groups.set(name, group);
    }
    return group;
  }

  host(name: string, group: string, vars: HostVars): void {
    this.hostVars.set(name, { ...this.hostVars.get(name), ...vars });
    this.group(group).hosts.add(name);
  }

  child(parent: string, child: string, where: string): void {
    if (child === 'all') throw new InputError(`group "all" cannot be a child of "${parent}"`, where);
    this.group(parent).children.add(child);
    this.group(child);
  }

  build(): Inventory {
    const { groups } = this;
    // Top-level groups are children of all; ungrouped holds hosts that are in no other group.
    for (const name of groups.keys()) if (name !== 'all' && !this.isChildOfAny(name)) groups.get('all')!.children.add(name);
    const grouped = new Set([...groups].filter(([name]) => name !== 'all' && name !== 'ungrouped').flatMap(([, g]) => [...g.hosts]));
    for (const host of this.hostVars.keys()) if (!grouped.has(host)) groups.get('ungrouped')!.hosts.add(host);
    const members = new Map<string, Set<string>>();
    const depth = new Map<string, number>();
    const resolve = (name: string, path: string[]): Set<string> => {
      if (path.includes(name)) throw new InputError(`groups form a cycle: ${[...path, name].join(' -> ')}`, this.file);
      const known = members.get(name);
      if (known) return known;
      const group = groups.get(name)!;
      const all = new Set(group.hosts);
      for (const child of group.children) for (const host of resolve(child, [...path, name])) all.add(host);
      members.set(name, all);
      return all;
    };
    const setDepth = (name: string, level: number) => {
      if ((depth.get(name) ?? -1) >= level) return;
      depth.set(name, level);
      for (const child of groups.get(name)!.children) setDepth(child, level + 1);
    };
    resolve('all', []);
    setDepth('all', 0);
    for (const name of groups.keys()) resolve(name, []);
    const ordered = [...groups.keys()].sort((a, b) => (depth.get(a) ?? 0) - (depth.get(b) ?? 0) || a.localeCompare(b));
    const hosts = new Map<string, HostVars>();
    for (const [host, own] of this.hostVars) {
      const vars: HostVars = {};
      for (const name of ordered) if (members.get(name)!.has(host)) Object.assign(vars, groups.get(name)!.vars);
      hosts.set(host, { ...vars, ...own });
    }
    return { hosts, groups: members };
  }

  private isChildOfAny(name: string): boolean {
    return [...this.groups.values()].some((group) => group.children.has(name));
  }
}

/** `node[01:03]`, `db-[a:c].example`, `web[1:9:2]`: Ansible's host ranges (several per name). */
export function expandHostRange(name: string, where: string): string[] {
  const match = /^(.*?)\[([^\]]*)\](.*)$/.exec(name);
  if (!match) return [name];
  const [, head, range, tail] = match as unknown as [string, string, string, string];
  const parts = range.split(':');
  if (parts.length < 2 || parts.length > 3) throw new InputError(`host range [${range}] is not [start:end] or [start:end:step]`, where);
  const [start, end, stepText = '1'] = parts as [string, string, string?];
  const step = Number(stepText);
  if (!Number.isInteger(step) || step < 1) throw new InputError(`host range [${range}]: step must be a positive whole number`, where);
  const names: string[] = [];
  if (/^\d+$/.test(start) && /^\d+$/.test(end)) {
    const width = start.length > 1 && start.startsWith('0') ? start.length : 0;
    if (Number(end) < Number(start)) throw new InputError(`host range [${range}] ends before it starts`, where);
    for (let i = Number(start); i <= Number(end); i += step) names.push(String(i).padStart(width, '0'));
  } else if (/^[a-z]$/i.test(start) && /^[a-z]$/i.test(end) && start <= end) {
    for (let c = start.charCodeAt(0); c <= end.charCodeAt(0); c += step) names.push(String.fromCharCode(c));
  } else {
    throw new InputError(`host range [${range}] is neither numeric nor alphabetic`, where);
  }
  return names.flatMap((middle) => expandHostRange(`${head}${middle}${tail}`, where));
}

/** Splits `key=value key2="quoted value"` into words, as Ansible's INI parser (shlex) does. */
function shellWords(text: string, where: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let quote: string | undefined;
  for (const char of text) {
    if (quote) {
      if (char === quote) quote = undefined;
      else word += char;
    } else if (char === '"' || char === "'") {
      quote = char;
      word ??= '';
    } else if (/\s/.test(char)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else {
      word = (word ?? '') + char;
    }
  }
  if (quote) throw new InputError(`unterminated ${quote} quote`, where);
  if (word !== undefined) words.push(word);
  return words;
}

/** INI values are strings; Ansible reads numbers and booleans in them as such (ansible_port=2222). */
function iniValue(text: string): unknown {
  if (/^-?\d+$/.test(text)) return Number(text);
  if (/^(true|false)$/i.test(text)) return text.toLowerCase() === 'true';
  return text;
}

function keyValue(word: string, where: string): [string, unknown] {
  const eq = word.indexOf('=');
  if (eq <= 0) throw new InputError(`expected key=value, found "${word}"`, where);
  return [word.slice(0, eq), iniValue(word.slice(eq + 1))];
}

const GROUP_NAME = /^[A-Za-z_][\w-]*$/;

export function parseIniInventory(text: string, file: string): Inventory {
  const builder = new InventoryBuilder(file);
  let section: { group: string; kind: 'hosts' | 'children' | 'vars' } = { group: 'ungrouped', kind: 'hosts' };
  for (const [index, raw] of text.split('\n').entries()) {
    const where = `${file}:${index + 1}`;
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([^\]:]+)(?::(\w+))?\]$/.exec(line);
    if (header) {
      const [, group, kind = 'hosts'] = header as unknown as [string, string, string?];
      if (!GROUP_NAME.test(group)) throw new InputError(`invalid group name "${group}"`, where);
      if (kind !== 'hosts' && kind !== 'children' && kind !== 'vars') throw new InputError(`unknown section type ":${kind}" (expected :children or :vars)`, where);
      section = { group, kind };
      builder.group(group);
      continue;
    }
    if (line.startsWith('[')) throw new InputError(`malformed section header "${line}"`, where);
    if (section.kind === 'vars') {
      // `key = value` and `key=value`: one variable per line, the value is the rest of the line.
      const eq = line.indexOf('=');
      if (eq <= 0) throw new InputError(`expected key=value in [${section.group}:vars], found "${line}"`, where);
      const value = shellWords(line.slice(eq + 1), where).join(' ');
      builder.group(section.group).vars[line.slice(0, eq).trim()] = iniValue(value);
    } else if (section.kind === 'children') {
      if (!GROUP_NAME.test(line)) throw new InputError(`invalid group name "${line}" in [${section.group}:children]`, where);
      builder.child(section.group, line, where);
    } else {
      const [spec, ...rest] = shellWords(line, where) as [string, ...string[]];
      const vars = Object.fromEntries(rest.map((word) => keyValue(word, where)));
      // `host:port` (one colon, numeric port) is Ansible's short form of ansible_port.
      const hostPort = /^([^:\s]+):(\d+)$/.exec(spec);
      const name = hostPort ? hostPort[1]! : spec;
      if (hostPort) vars.ansible_port ??= Number(hostPort[2]);
      for (const host of expandHostRange(name, where)) builder.host(host, section.group, vars);
    }
  }
  return builder.build();
}

export function parseYamlInventory(text: string, file: string): Inventory {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true });
  const at = (node: Node | null | undefined) => `${file}:${node?.range ? lineCounter.linePos(node.range[0]).line : 1}`;
  const first = doc.errors[0];
  if (first) throw new InputError(first.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, ''), `${file}:${first.linePos?.[0].line ?? 1}`);
  const builder = new InventoryBuilder(file);
  const mapping = (node: unknown, what: string, parent: Node | null | undefined): YAMLMap | undefined => {
    if (node === null || node === undefined || (isScalar(node) && (node.value === null || node.value === ''))) return undefined;
    if (!isMap(node)) throw new InputError(`${what} must be a mapping`, at((node as Node) ?? parent));
    return node;
  };
  const keyOf = (key: unknown): string => (isScalar(key) ? String(key.value) : String(key));
  const plainVars = (node: YAMLMap | undefined): HostVars => (node ? (node.toJSON() as HostVars) : {});

  const group = (name: string, node: unknown, keyNode: Node | null | undefined) => {
    if (!GROUP_NAME.test(name)) throw new InputError(`invalid group name "${name}"`, at(keyNode));
    builder.group(name);
    const body = mapping(node, `group "${name}"`, keyNode);
    for (const pair of body?.items ?? []) {
      const key = keyOf(pair.key);
      const value = pair.value as Node | null;
      if (key === 'hosts') {
        for (const hostPair of mapping(value, `hosts of group "${name}"`, pair.key as Node)?.items ?? []) {
          const hostName = keyOf(hostPair.key);
          const vars = plainVars(mapping(hostPair.value, `variables of host "${hostName}"`, hostPair.key as Node));
          for (const host of expandHostRange(hostName, at(hostPair.key as Node))) builder.host(host, name, vars);
        }
      } else if (key === 'children') {
        for (const childPair of mapping(value, `children of group "${name}"`, pair.key as Node)?.items ?? []) {
          builder.child(name, keyOf(childPair.key), at(childPair.key as Node));
          group(keyOf(childPair.key), childPair.value, childPair.key as Node);
        }
      } else if (key === 'vars') {
        Object.assign(builder.group(name).vars, plainVars(mapping(value, `vars of group "${name}"`, pair.key as Node)));
      } else {
        throw new InputError(`group "${name}" has unknown key "${key}" (expected hosts, children or vars)`, at(pair.key as Node));
      }
    }
  };
  const top = mapping(doc.contents, 'an inventory', doc.contents);
  if (!top) throw new InputError('empty inventory', file);
  for (const pair of top.items) group(keyOf(pair.key), pair.value, pair.key as Node);
  return builder.build();
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** `ansible-inventory --list` output (and a dynamic inventory script's): `_meta.hostvars`, and groups with lists of hosts and children. */
function isInventoryListJson(json: Record<string, unknown>): boolean {
  return '_meta' in json || Object.values(json).some((group) => Array.isArray(group) || (isRecord(group) && (Array.isArray(group.hosts) || Array.isArray(group.children))));
}

function jsonSyntaxError(text: string, error: Error, file: string): InputError {
  // V8: "Unexpected token } in JSON at position 42".
  const position = /at position (\d+)/.exec(error.message);
  const line = position ? text.slice(0, Number(position[1])).split('\n').length : undefined;
  return new InputError(`not JSON: ${error.message}`, line === undefined ? file : `${file}:${line}`);
}

function stringList(value: unknown, what: string, file: string): string[] {
  if (!Array.isArray(value) || value.some((item) => typeof item !== 'string' || item === '')) throw new InputError(`${what} must be a list of names`, file);
  return value as string[];
}

/**
 * What `ansible-inventory --list` prints: `{"_meta": {"hostvars": {HOST: VARS}}, GROUP: {"hosts":
 * [...], "children": [...], "vars": {...}}}` (a group may also be a bare list of hosts, as
 * inventory scripts print). Without --export the group variables are already merged into
 * hostvars; with it they stay in the groups and are merged here. Hosts come in Ansible's order:
 * from `all` down, each group's hosts before its children's.
 */
export function parseInventoryListJson(json: Record<string, unknown>, file: string): Inventory {
  const builder = new InventoryBuilder(file);
  const meta = json._meta ?? {};
  if (!isRecord(meta) || !isRecord(meta.hostvars ?? {})) throw new InputError('_meta.hostvars must be a mapping of host to variables', file);
  const hostVars = (meta.hostvars ?? {}) as Record<string, unknown>;
  const groups = new Map<string, { hosts: string[]; children: string[] }>();
  for (const [name, body] of Object.entries(json)) {
    if (name === '_meta') continue;
    if (Array.isArray(body)) {
      groups.set(name, { hosts: stringList(body, `group "${name}"`, file), children: [] });
      continue;
    }
    if (!isRecord(body)) throw new InputError(`group "${name}" must be a mapping or a list of hosts`, file);
    const unknown = Object.keys(body).find((key) => !['hosts', 'children', 'vars'].includes(key));
    if (unknown) throw new InputError(`group "${name}" has unknown key "${unknown}" (expected hosts, children or vars)`, file);
    if (body.vars !== undefined && !isRecord(body.vars)) throw new InputError(`vars of group "${name}" must be a mapping`, file);
    Object.assign(builder.group(name).vars, body.vars ?? {});
    groups.set(name, { hosts: stringList(body.hosts ?? [], `hosts of group "${name}"`, file), children: stringList(body.children ?? [], `children of group "${name}"`, file) });
  }
  const added = new Set<string>();
  const visited = new Set<string>();
  const visit = (name: string) => {
    if (visited.has(name)) return;
    visited.add(name);
    const group = groups.get(name) ?? { hosts: [], children: [] };
    for (const host of group.hosts) {
      const vars = added.has(host) ? {} : hostVars[host] ?? {};
      if (!isRecord(vars)) throw new InputError(`variables of host "${host}" must be a mapping`, file);
      builder.host(host, name, vars);
      added.add(host);
    }
    // ansible-inventory leaves out empty groups that `all` still lists (ungrouped, often).
    for (const child of group.children) {
      builder.child(name, child, file);
      visit(child);
    }
  };
  visit('all');
  for (const name of groups.keys()) visit(name);
  return builder.build();
}

/**
 * JSON (by extension .json, or text opening with `{`): `ansible-inventory --list` output, or
 * the YAML layout written as JSON. YAML by extension (.yml/.yaml) or by an opening `name:`
 * line, else INI, as Ansible's plugins decide.
 */
export function parseInventory(text: string, file: string): Inventory {
  const ext = extname(file).toLowerCase();
  if (ext === '.json' || text.trimStart().startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (error) {
      throw jsonSyntaxError(text, error as Error, file);
    }
    if (!isRecord(json)) throw new InputError('an inventory in JSON must be an object', file);
    if (isInventoryListJson(json)) return parseInventoryListJson(json, file);
  }
  const firstLine = text.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#') && l !== '---');
  const yaml = ['.yml', '.yaml', '.json'].includes(ext) || text.trimStart().startsWith('{') || (ext !== '.ini' && firstLine !== undefined && /^[\w.-]+:\s*$/.test(firstLine));
  return yaml ? parseYamlInventory(text, file) : parseIniInventory(text, file);
}

export async function readInventory(path: string): Promise<Inventory> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read inventory: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, path);
  });
  return parseInventory(text, path);
}

function globRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

function userRegExp(source: string): RegExp {
  try {
    // Anchored at the start like Python's re.match, which Ansible uses.
    return new RegExp(`^(?:${source})`);
  } catch (error) {
    throw new InputError(`~${source}: ${(error as Error).message}`, '--limit');
  }
}

/** The hosts one pattern term names: groups and hosts, `*` globs, `~regex`. */
function termHosts(inventory: Inventory, term: string): Set<string> {
  if (term === 'all' || term === '*') return new Set(inventory.hosts.keys());
  const regExp = term.startsWith('~') ? userRegExp(term.slice(1)) : globRegExp(term);
  const matches = (name: string) => regExp.test(name);
  const hosts = new Set<string>();
  for (const [group, members] of inventory.groups) if (matches(group)) for (const host of members) hosts.add(host);
  for (const host of inventory.hosts.keys()) if (matches(host)) hosts.add(host);
  return hosts;
}

/**
 * Ansible's host patterns: terms separated by `,` or `:`; plain terms are unioned, then `&term`
 * intersects and `!term` excludes (whatever their position); only exclusions start from all.
 * Returns host names in inventory order.
 */
export function selectHosts(inventory: Inventory, pattern: string): string[] {
  const terms = pattern.split(/[,:]/).map((t) => t.trim()).filter(Boolean);
  if (terms.length === 0) throw new InputError('empty host pattern', '--limit');
  const plain = terms.filter((t) => !t.startsWith('&') && !t.startsWith('!'));
  let selected = new Set<string>();
  for (const term of plain.length > 0 ? plain : ['all']) for (const host of termHosts(inventory, term)) selected.add(host);
  for (const term of terms.filter((t) => t.startsWith('&'))) {
    const keep = termHosts(inventory, term.slice(1));
    selected = new Set([...selected].filter((host) => keep.has(host)));
  }
  for (const term of terms.filter((t) => t.startsWith('!'))) for (const host of termHosts(inventory, term.slice(1))) selected.delete(host);
  return [...inventory.hosts.keys()].filter((host) => selected.has(host));
}
