// Ambient types for the Holepunch modules the daemon uses (those the client uses too are in
// packages/client/src/modules.d.ts); they ship none.
// Only the parts this project calls are declared.

declare module 'hypercore' {
  import { EventEmitter } from 'node:events'
  export default class Hypercore extends EventEmitter {
    /** a core's key from its manifest (Corestore's named cores: version 1, the name's key pair the one signer) */
    static key (manifest: { version: number, signers: Array<{ publicKey: Buffer }> }): Buffer
    /** a session on an open internal core; a weak one neither keeps the core open nor makes it download */
    constructor (opts: { core: unknown, weak?: boolean })
    /** the internal core under every session of this core */
    readonly core: unknown
    /** internal (hypercore 11, pinned): the session's storage, whose read batch reads many blocks in one call */
    readonly state: { readonly storage: { read (): { getBlock (index: number): Promise<Buffer | null>, tryFlush (): void } } }
    readonly key: Buffer
    readonly discoveryKey: Buffer
    readonly length: number
    readonly byteLength: number
    readonly writable: boolean
    readonly closed: boolean
    readonly opened: boolean
    readonly fork: number
    /** blocks stored here from 0 without a gap */
    readonly contiguousLength: number
    /** the replication peers of the core (one per connection it is replicated on) */
    readonly peers: Array<{ readonly remotePublicKey: Buffer, readonly remoteContiguousLength: number, readonly remoteLength: number, readonly remoteSynced: boolean }>
    ready (): Promise<void>
    close (): Promise<void>
    /** keeps downloading the range; `end: -1` follows the core as it grows */
    download (range?: { start?: number, end?: number }): { done (): Promise<void>, destroy (): void }
    treeHash (length?: number): Promise<Buffer>
    /** asks the peers for a longer length; resolves true when the core grew */
    update (opts?: { wait?: boolean }): Promise<boolean>
    append (block: Buffer | Buffer[]): Promise<{ length: number, byteLength: number }>
    get (index: number, opts?: { wait?: boolean, timeout?: number }): Promise<Buffer | null>
    has (start: number, end?: number): Promise<boolean>
    /** the block holding byte `bytes`, and the offset in it */
    seek (bytes: number, opts?: { wait?: boolean }): Promise<[number, number] | null>
    /** removes the blocks [start, end) from local storage; the tree (and so every index) stays */
    clear (start: number, end?: number): Promise<unknown>
    info (opts?: { storage?: boolean }): Promise<any>
  }
}

declare module 'hypercore-storage' {
  export default class HypercoreStorage {
    /** writeBufferSize: bytes of RocksDB memtable (Hypercore's default: 64 MiB) */
    constructor (dir: string, opts?: { writeBufferSize?: number })
    close (): Promise<void>
  }
}

declare module 'corestore' {
  import { EventEmitter } from 'node:events'
  import type Hypercore from 'hypercore'
  import type HypercoreStorage from 'hypercore-storage'
  export interface KeyPair { publicKey: Buffer, secretKey: Buffer }
  export default class Corestore extends EventEmitter {
    constructor (storage: string | HypercoreStorage, opts?: Record<string, unknown>)
    readonly opened: boolean
    readonly closed: boolean
    ready (): Promise<void>
    close (): Promise<void>
    get (opts: { name?: string, key?: Buffer, exclusive?: boolean, valueEncoding?: string }): Hypercore
    namespace (name: string): Corestore
    /** calls `fn` with each core as it is opened (by a session, or by replication) */
    watch (fn: (core: { readonly discoveryKey: Buffer }) => void): void
    unwatch (fn: (core: { readonly discoveryKey: Buffer }) => void): void
    createKeyPair (name: string): Promise<KeyPair>
    /** runs Hypercore replication of every core over a connection (a Protomux on it, kept in `conn.userData`) */
    replicate (conn: unknown): unknown
    /** hypercore-storage's RocksDB: fsync of its WAL (SYNC_WRITES), flush/compact for backup */
    readonly storage: {
      rocks: {
        readonly path: string
        currentWalFile (): Promise<{ path: string, number: number }>
        /** a session on the default column family, which Hypercore leaves unused (the room index) */
        session (): any
      }
      db: { flush (): Promise<void> }
      compact (): Promise<void>
    }
  }
}

declare module 'hyperdht/testnet.js' {
  import type HyperDHT from 'hyperdht'
  export interface Testnet {
    nodes: HyperDHT[]
    bootstrap: Array<{ host: string, port: number }>
    createNode (opts?: Record<string, unknown>): HyperDHT
    destroy (): Promise<void>
  }
  export default function createTestnet (size?: number, opts?: { host?: string, port?: number }): Promise<Testnet>
}

declare module 'protomux' {
  export interface Message { send (m: unknown): boolean }
  export interface Channel {
    readonly closed: boolean
    addMessage (opts: { encoding: unknown, onmessage: (m: any) => void }): Message
    open (handshake?: unknown): void
    close (): void
  }
  export default class Protomux {
    static from (stream: unknown): Protomux
    createChannel (opts: { protocol: string, id?: Buffer | null, unique?: boolean, onopen?: () => void, onclose?: () => void, ondestroy?: () => void }): Channel | null
  }
}

declare module 'ready-resource' {
  import { EventEmitter } from 'node:events'
  export default class ReadyResource extends EventEmitter {
    opening: Promise<void> | null
    closing: Promise<void> | null
    opened: boolean
    closed: boolean
    ready (): Promise<void>
    close (): Promise<void>
    protected _open (): Promise<void>
    protected _close (): Promise<void>
  }
}

declare module 'graceful-goodbye' {
  function goodbye (fn: () => unknown, position?: number): () => void
  namespace goodbye {
    let exiting: boolean
    function exit (): void
  }
  export default goodbye
}

// protomux-rpc ships no types; only the parts the cluster channel calls are declared.
declare module 'protomux-rpc' {
  import { EventEmitter } from 'node:events'
  import type { Encoder } from 'compact-encoding'

  export interface RPCOptions {
    id?: Buffer
    protocol?: string
    valueEncoding?: Encoder<any>
    handshake?: unknown
    handshakeEncoding?: Encoder<any>
  }

  /** Events: `open` (the other side opened the channel), `close`, `destroy`. */
  export default class ProtomuxRPC extends EventEmitter {
    constructor (stream: unknown, opts?: RPCOptions)
    readonly opened: boolean
    readonly closed: boolean
    respond<Req, Res> (
      method: string,
      opts: { requestEncoding?: Encoder<any, Req>, responseEncoding?: Encoder<Res, any> },
      handler: (req: Req) => Res | Promise<Res>
    ): this
    request<Req, Res> (
      method: string,
      value: Req,
      opts?: { requestEncoding?: Encoder<Req, any>, responseEncoding?: Encoder<any, Res>, timeout?: number }
    ): Promise<Res>
    event<Req> (method: string, value: Req, opts?: { requestEncoding?: Encoder<Req, any> }): void
    cork (): void
    uncork (): void
    end (): Promise<void>
    /** closes the channel; pending requests reject with `err` (default CHANNEL_DESTROYED) */
    destroy (err?: Error): void
  }
}

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
    /** hyperdht-stats; `getLocalAddress` is what its `dht_local_address` gauge reads when scraped */
    readonly dhtStats: { getLocalAddress: () => string | null }
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

declare module 'blind-relay' {
  import { EventEmitter } from 'node:events'
  import type { RawStream } from 'hyperdht'

  /** One connection to the relay: a `blind-relay` Protomux channel on it (`pair` is message 0, `unpair` 1). */
  export interface BlindRelaySession extends EventEmitter {
    readonly mux: Iterable<{ readonly protocol: string, readonly messages: Array<{ onmessage: (m: any) => unknown }> }>
    readonly closed: boolean
    destroy (err?: Error): void
    on (event: 'pair', listener: (isInitiator: boolean, token: Buffer, stream: RawStream, remoteId: number) => void): this
    on (event: string, listener: (...args: any[]) => void): this
  }

  export class Server extends EventEmitter {
    constructor (opts: { createStream: (opts: { firewall: unknown }) => RawStream })
    accept (stream: unknown, opts: { id: Buffer }): BlindRelaySession
    close (): Promise<void>
  }

  /** A member's side: pairs its raw stream with the other member's under a shared token. */
  export class Client extends EventEmitter {
    static from (stream: unknown, opts: { id: Buffer }): Client
    pair (isInitiator: boolean, token: Buffer, stream: RawStream): import('node:stream').Readable
    destroy (err?: Error): void
  }

  export function token (buf?: Buffer): Buffer

  const BlindRelay: { Server: typeof Server, Client: typeof Client, token: typeof token }
  export default BlindRelay
}

// autobase ships no types; the control log (src/cluster/control-log.ts) is the one caller and types what it reads.
declare module 'autobase' {
  import { EventEmitter } from 'node:events'
  export default class Autobase extends EventEmitter {
    constructor (store: unknown, bootstrap: Buffer | null, handlers: Record<string, unknown>)
    [key: string]: any
  }
}
