import type HyperDHT from 'hyperdht'

const EVERY_INTERFACE = new Set(['0.0.0.0', '::'])

/**
 * The DHT node's local address, `host:port`: the address its sockets are bound to (`DHT_HOST`), or when bound to
 * every interface the one dht-rpc names, which is all hyperdht-stats reports: the machine's first non-loopback
 * IPv4 address, whatever the bind.
 */
export function dhtLocalAddress (dht: HyperDHT): string | null {
  const local = dht.localAddress()
  if (local === null) return null
  const bound = dht.address().host
  return `${EVERY_INTERFACE.has(bound) ? local.host : bound}:${local.port}`
}
