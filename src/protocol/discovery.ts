/** The string whose BLAKE2b-256 hash is the topic root peers announce themselves on. */
export const DEFAULT_DISCOVERY_TOPIC = 'holepunch-root-peer-discovery'

export interface BootstrapNode { host: string, port: number }
