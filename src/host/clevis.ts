/**
 * clevis LUKS bindings without device-mapper: `clevis luks bind` adds a keyslot and a
 * token to the header, which works on loop devices and image files. The existing
 * passphrase is passed by file (-k), never in argv.
 */
export interface TangPin {
  url: string;
  /** The advertisement JWS: binding then needs no network (else clevis fetches it). */
  adv?: Record<string, unknown>;
}

/** The clevis pin and its JSON config: `tang` for one server, `sss` with a threshold for several. */
export function clevisPinConfig(servers: readonly TangPin[], threshold: number): [pin: string, config: string] {
  const pins = servers.map((server) => ({ url: server.url, adv: server.adv }));
  if (pins.length === 1) return ['tang', JSON.stringify(pins[0])];
  return ['sss', JSON.stringify({ t: threshold, pins: { tang: pins } })];
}

export function clevisBindArgs(device: string, keyFile: string, servers: readonly TangPin[], threshold: number): string[] {
  const [pin, config] = clevisPinConfig(servers, threshold);
  return ['luks', 'bind', '-y', '-d', device, '-k', keyFile, pin, config];
}

export interface ClevisBinding {
  slot: number;
  pin: string;
  config: string;
}

/** Parses `clevis luks list` lines such as `1: tang '{"url":"http://..."}'`. */
export function parseClevisList(text: string): ClevisBinding[] {
  return [...text.matchAll(/^(\d+): (\w+) '(.*)'$/gm)].map((m) => ({ slot: Number(m[1]), pin: m[2]!, config: m[3]! }));
}
