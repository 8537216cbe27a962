/**
 * nbde: binds the LUKS2 root to the recipe's Tang server(s) with clevis, offline when the
 * advertisement is given (a saved `adv` file), else fetched once at build time. The
 * bootstrap passphrase stays in keyslot 0 for the SSH fallback; clevis takes a free slot.
 *
 * Host commands: clevis (luks bind, luks list). Skipped when the recipe lists no Tang server.
 */
import { clevisBindArgs, parseClevisList, type TangPin } from '../host/clevis.js';
import { fetchAdvertisement, parseAdvertisement, type TangAdvertisement } from '../host/tang.js';
import { luksDump } from '../host/cryptsetup.js';
import { InputError } from '../errors.js';
import type { BuildContext } from '../pipeline/context.js';
import { defineStage } from '../pipeline/stage.js';
import { partitionByRole } from './partition.js';

/** Saved advertisements were read and checked with the recipe; the others are fetched now. */
async function loadPins(ctx: BuildContext): Promise<Array<TangPin & { thumbprints: string[] }>> {
  const pins = [];
  for (const [index, server] of ctx.recipe.nbde.tang.entries()) {
    const saved = ctx.loaded.tangAdvs[index];
    const adv = saved ?? (await fetchedAdvertisement(server, `${ctx.loaded.file}: nbde.tang[${index}]`));
    ctx.log.info(`      tang ${server.url}: signing key ${adv.signingThumbprints.join(', ')}${saved ? ' (saved advertisement)' : ' (fetched now)'}`);
    pins.push({ url: server.url, adv: adv.jws, thumbprints: adv.signingThumbprints });
  }
  return pins;
}

async function fetchedAdvertisement(server: { url: string; thp?: string }, where: string): Promise<TangAdvertisement> {
  const text = await fetchAdvertisement(server.url);
  try {
    return parseAdvertisement(text, server.thp);
  } catch (error) {
    throw new InputError(`advertisement ${server.url}/adv: ${(error as Error).message}`, where);
  }
}

export const nbdeStage = defineStage({
  name: 'nbde',
  summary: 'bind the LUKS2 root to Tang (clevis)',
  needs: ['layout', 'loop', 'keyslots'],
  produces: ['tang', 'boundKeyslots'],
  hostTools: (recipe) => (recipe.nbde.tang.length > 0 ? ['clevis'] : []),
  async run(ctx) {
    const { nbde } = ctx.recipe;
    if (nbde.tang.length === 0) {
      ctx.state.tang = null;
      ctx.state.boundKeyslots = null;
      ctx.log.info(`      no Tang server in the recipe: ${nbde.clevis ? 'clevis is installed for `keylessgo enroll`' : 'clevis not installed'}`);
      return;
    }
    const pins = await loadPins(ctx);
    const device = ctx.state.loop!.partition(partitionByRole(ctx.state.layout!, 'root').number);
    await ctx.host.run('clevis', clevisBindArgs(device, ctx.passphraseFile, pins, nbde.threshold));
    const bindings = parseClevisList(await ctx.host.run('clevis', ['luks', 'list', '-d', device]));
    if (bindings.length !== 1) throw new Error(`expected one clevis binding after bind, found ${bindings.length}`);
    ctx.state.tang = { slot: bindings[0]!.slot, pin: bindings[0]!.pin, servers: pins.map((p) => ({ url: p.url, thumbprints: p.thumbprints })) };
    ctx.state.boundKeyslots = (await luksDump(ctx.host, device)).keyslots;
    ctx.log.info(`      clevis ${bindings[0]!.pin} binding in keyslot ${bindings[0]!.slot}; keyslot 0 keeps the bootstrap passphrase`);
  },
});
