/**
 * An HTTP proxy on the host's loopback that lets a test guest's apt reach the Debian mirror
 * the host's own apt sources name (and nothing else): QEMU's guestfwd connects the guest's
 * APT_PROXY_GUEST_ADDRESS to it, so the guest needs no route out. Plain requests with an
 * absolute URI are passed on; CONNECT (apt over https) is tunnelled. Every request is logged
 * with its host, so a test can tell what the guest fetched.
 */
import { createServer, request, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { appendFile } from 'node:fs/promises';

/** Where the guest finds the proxy (QEMU's user network, beside the Tang addresses). */
export const APT_PROXY_GUEST_ADDRESS = '10.0.2.200';
export const APT_PROXY_GUEST_PORT = 3142;

export interface AptProxy {
  port: number;
  close(): Promise<void>;
}

/** Starts the proxy on 127.0.0.1; only `hosts` (the mirrors' host names) may be reached through it. */
export async function startAptProxy(hosts: readonly string[], logFile: string): Promise<AptProxy> {
  const allowed = new Set(hosts);
  const log = (line: string) => void appendFile(logFile, `${new Date().toISOString()} ${line}\n`).catch(() => undefined);
  const server: Server = createServer((incoming, outgoing) => {
    let target: URL;
    try {
      target = new URL(incoming.url ?? '');
    } catch {
      outgoing.writeHead(400).end('absolute URI expected\n');
      return;
    }
    if (target.protocol !== 'http:' || !allowed.has(target.hostname)) {
      log(`refused ${incoming.method} ${incoming.url}`);
      outgoing.writeHead(403).end('not a mirror of this test\n');
      return;
    }
    log(`${incoming.method} ${target.href}`);
    const upstream = request(target, { method: incoming.method, headers: { ...incoming.headers, host: target.host } }, (answer) => {
      outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(outgoing);
    });
    upstream.on('error', (error) => {
      log(`failed ${target.href}: ${error.message}`);
      if (!outgoing.headersSent) outgoing.writeHead(502);
      outgoing.end();
    });
    incoming.pipe(upstream);
  });
  server.on('connect', (incoming, socket, head) => {
    const [host = '', port = '443'] = (incoming.url ?? '').split(':');
    if (!allowed.has(host)) {
      log(`refused CONNECT ${incoming.url}`);
      socket.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    log(`CONNECT ${incoming.url}`);
    const upstream = connect(Number(port), host, () => {
      socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
