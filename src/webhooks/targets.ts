/**
 * Which callback URLs the service may call (server-side request forgery guard). A `callbackUrl` must be
 * https (http only with ALLOW_HTTP_CALLBACKS=true), carry no credentials, and every address its host
 * resolves to must be public: loopback, private (RFC 1918, unique-local fc00::/7), link-local
 * (169.254/16, fe80::/10, which holds cloud metadata endpoints), CGNAT, multicast, unspecified and
 * reserved ranges are refused unless CALLBACK_ALLOW_PRIVATE=true. The check runs at request time and
 * again before every delivery attempt, and the delivery connects to the address that was checked (no
 * second DNS lookup an attacker could answer differently). Redirects are never followed.
 */
import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

/** A callbackUrl that cannot be used: the message names the field and the fix. */
export class CallbackUrlError extends Error {
  constructor(
    /** INVALID_CALLBACK_URL (syntax, scheme, credentials, unresolvable) or UNSAFE_CALLBACK_URL (a non-public address). */
    readonly code: 'INVALID_CALLBACK_URL' | 'UNSAFE_CALLBACK_URL',
    message: string,
  ) {
    super(message);
    this.name = 'CallbackUrlError';
  }
}

export interface CallbackPolicy {
  /** Accept `http:` URLs (ALLOW_HTTP_CALLBACKS). */
  allowHttp: boolean;
  /** Accept private, loopback and link-local targets (CALLBACK_ALLOW_PRIVATE; tests, internal receivers). */
  allowPrivate: boolean;
}

/** A checked target: the URL and the address to connect to. */
export interface CallbackTarget {
  url: URL;
  address: string;
  family: 4 | 6;
}

const blocked = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // CGNAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  blocked.addSubnet(net, bits, 'ipv4');
}
for (const [net, bits] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b::', 96], // NAT64
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['ff00::', 8], // multicast
] as const) {
  blocked.addSubnet(net, bits, 'ipv6');
}

/** True when `address` (an IP literal) is not a public unicast address. */
export function isNonPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return blocked.check(address, 'ipv4');
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return blocked.check(mapped[1]!, 'ipv4');
    return blocked.check(address, 'ipv6');
  }
  return true;
}

/**
 * Check the syntax of a callbackUrl (no DNS).
 * @throws CallbackUrlError INVALID_CALLBACK_URL naming what is wrong.
 */
export function parseCallbackUrl(raw: string, policy: CallbackPolicy): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CallbackUrlError('INVALID_CALLBACK_URL', 'callbackUrl must be an absolute URL such as https://example.com/hooks/dpo');
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && policy.allowHttp)) {
    throw new CallbackUrlError(
      'INVALID_CALLBACK_URL',
      policy.allowHttp ? 'callbackUrl must use https or http' : 'callbackUrl must use https (http needs ALLOW_HTTP_CALLBACKS=true on the server)',
    );
  }
  if (url.username || url.password) throw new CallbackUrlError('INVALID_CALLBACK_URL', 'callbackUrl must not contain user:password credentials');
  if (raw.length > 2048) throw new CallbackUrlError('INVALID_CALLBACK_URL', 'callbackUrl must be at most 2048 characters');
  return url;
}

/**
 * Parse, resolve and check a callbackUrl.
 * @returns the URL and the first acceptable address (connect there, not to a fresh lookup).
 * @throws CallbackUrlError INVALID_CALLBACK_URL (syntax, scheme, unresolvable host) or UNSAFE_CALLBACK_URL
 *   (the host resolves to a non-public address and CALLBACK_ALLOW_PRIVATE is not set).
 */
export async function resolveCallbackTarget(raw: string, policy: CallbackPolicy): Promise<CallbackTarget> {
  const url = parseCallbackUrl(raw, policy);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  let addrs: Array<{ address: string; family: number }>;
  if (isIP(host)) addrs = [{ address: host, family: isIP(host) }];
  else {
    try {
      addrs = await lookup(host, { all: true, verbatim: true });
    } catch (err) {
      throw new CallbackUrlError('INVALID_CALLBACK_URL', `callbackUrl host ${host} does not resolve (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  if (addrs.length === 0) throw new CallbackUrlError('INVALID_CALLBACK_URL', `callbackUrl host ${host} has no address`);
  // every address must be public: a host answering one public and one private address is refused
  const bad = addrs.find((a) => isNonPublicAddress(a.address));
  if (bad && !policy.allowPrivate) {
    throw new CallbackUrlError(
      'UNSAFE_CALLBACK_URL',
      `callbackUrl host ${host} resolves to ${bad.address}, a private, loopback or link-local address; use a public host (or set CALLBACK_ALLOW_PRIVATE=true on the server for internal receivers)`,
    );
  }
  const first = addrs[0]!;
  return { url, address: first.address, family: first.family === 6 ? 6 : 4 };
}
