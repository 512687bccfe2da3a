declare module 'hyperswarm-stats' {
  import type { GaugeConfiguration } from 'prom-client'
  import type Hyperswarm from 'hyperswarm'
  /** What the stats modules take as `promClient`: they only ever call `new promClient.Gauge(config)`. */
  export interface PromClient {
    Gauge: new (config: GaugeConfiguration<string>) => unknown
  }
  /** The swarm's connection counts and stream totals, and its DHT's (hyperdht-stats). */
  export default class HyperswarmStats {
    constructor (swarm: Hyperswarm)
    readonly nrPeers: number
    registerPrometheusMetrics (promClient: PromClient): void
    toJson (): Record<string, unknown>
  }
}

declare module 'hypercore-stats' {
  import { EventEmitter } from 'node:events'
  import type Corestore from 'corestore'
  import type { PromClient } from 'hyperswarm-stats'
  /** Totals over every core a Corestore has open, watched through weak sessions. */
  export default class HypercoreStats extends EventEmitter {
    static fromCorestore (store: Corestore): HypercoreStats
    readonly totalCores: number
    getTotalLength (): number
    /** totals are cached for 5 s so that one scrape reads one snapshot; this drops the cache */
    bustCache (): void
    registerPrometheusMetrics (promClient: PromClient): void
    toJson (): Record<string, unknown>
  }
}
