/** The string whose BLAKE2b-256 hash is the topic root peers announce themselves on. */
export const DEFAULT_DISCOVERY_TOPIC = 'holepunch-root-peer-discovery'

export interface BootstrapNode { host: string, port: number }

/**
 * A comma-separated list of host:port (DHT_BOOTSTRAP, --bootstrap) as DHT nodes; '' is null (the public DHT).
 * Throws a TypeError naming the entry that is not host:port.
 */
export function parseBootstrap (value: string): BootstrapNode[] | null {
  if (value === '') return null
  return value.split(',').map(entry => {
    const m = /^\s*(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})\s*$/.exec(entry)
    const host = m === null ? '' : (m[1] ?? m[2])
    const port = m === null ? 0 : Number(m[3])
    if (host === '' || port < 1 || port > 65535) {
      throw new TypeError(`${JSON.stringify(entry)} is not host:port (a comma-separated list of host:port, port 1-65535)`)
    }
    return { host, port }
  })
}
