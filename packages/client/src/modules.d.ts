// Ambient types for the Holepunch modules the client (and the daemon) use; they ship none.
// Only the parts these projects call are declared.

declare module 'hyperdht' {
  import { EventEmitter } from 'node:events'
  import type { Duplex } from 'node:stream'
  export interface HyperDHTOptions {
    bootstrap?: Array<string | { host: string, port: number }>
    host?: string
    port?: number
    /** false: no quick firewall probe at bootstrap, so the node stays firewalled for a while (tests) */
    quickFirewall?: boolean
    keyPair?: { publicKey: Buffer, secretKey: Buffer }
    ephemeral?: boolean
    firewalled?: boolean
  }
  export interface DHTServerOptions {
    firewall?: (remotePublicKey: Buffer) => boolean
    holepunch?: boolean
    shareLocalAddress?: boolean
    relayThrough?: Buffer | null
  }
  export interface DHTServer extends EventEmitter {
    readonly publicKey: Buffer | null
    listen (keyPair?: { publicKey: Buffer, secretKey: Buffer }): Promise<this>
    close (): Promise<void>
  }
  /** udx-native's stream; `bytesReceived` counts what it relays too */
  export interface RawStream extends Duplex {
    readonly bytesReceived: number
  }
  export default class HyperDHT extends EventEmitter {
    constructor (opts?: HyperDHTOptions)
    readonly bootstrapped: boolean
    readonly destroyed: boolean
    fullyBootstrapped (): Promise<void>
    /** a Noise stream to the peer with that key; `open` once connected, `error` when it cannot be reached */
    connect (remotePublicKey: Buffer, opts?: { keyPair?: { publicKey: Buffer, secretKey: Buffer }, relayThrough?: Buffer | null, localConnection?: boolean }): import('node:stream').Duplex
    /** `firewall` returns true to refuse a connection at the handshake; `holepunch: false` never punches */
    createServer (opts: DHTServerOptions, onconnection: (conn: import('hyperswarm').NoiseStream) => void): DHTServer
    /** a UDX stream on the DHT's sockets (what blind-relay pairs) */
    createRawStream (opts?: { framed?: boolean, firewall?: unknown }): RawStream
    address (): { host: string, port: number }
    /** dht-rpc's: the machine's first non-loopback IPv4 address (whatever the bind) and the server socket's port */
    localAddress (): { host: string, port: number } | null
    toArray (opts?: { limit?: number }): Array<{ host: string, port: number }>
    /** `force`: without closing its servers first (no unannounce), and failing the requests in flight */
    destroy (opts?: { force?: boolean }): Promise<void>
    static keyPair (seed?: Buffer): { publicKey: Buffer, secretKey: Buffer }
  }
}

declare module 'hyperswarm' {
  import { EventEmitter } from 'node:events'
  import type { Duplex } from 'node:stream'
  import type HyperDHT from 'hyperdht'

  export interface NoiseStream extends Duplex {
    readonly remotePublicKey: Buffer
    readonly publicKey: Buffer
    readonly isInitiator: boolean
    readonly rawBytesRead: number
    readonly rawBytesWritten: number
    /** the transport under the Noise stream (a UDX stream); its remoteHost is the peer's address */
    readonly rawStream: import('node:stream').Duplex & { remoteHost?: string, readonly packetsReceived: number, pause: () => void }
    setKeepAlive (ms: number): void
    setTimeout (ms: number): void
    /** resolves once the other side's stream has acked everything written so far (false if it closed first) */
    flush (): Promise<boolean>
  }

  export interface PeerInfo {
    readonly publicKey: Buffer
    readonly topics: Buffer[]
    readonly client: boolean
    ban (banned?: boolean): void
    /** false: Hyperswarm does not redial it by itself after it disconnects */
    reconnect (value: boolean): void
  }

  export interface PeerDiscovery {
    flushed (): Promise<void>
    refresh (opts?: { client?: boolean, server?: boolean }): Promise<void>
    destroy (): Promise<void>
  }

  export interface HyperswarmOptions {
    keyPair?: { publicKey: Buffer, secretKey: Buffer }
    dht?: HyperDHT
    bootstrap?: Array<string | { host: string, port: number }>
    maxPeers?: number
    firewall?: (remotePublicKey: Buffer, payload: unknown) => boolean
  }

  export default class Hyperswarm extends EventEmitter {
    constructor (opts?: HyperswarmOptions)
    readonly keyPair: { publicKey: Buffer, secretKey: Buffer }
    readonly dht: HyperDHT
    readonly connections: Set<NoiseStream>
    readonly peers: Map<string, PeerInfo>
    readonly destroyed: boolean
    maxPeers: number
    join (topic: Buffer, opts?: { server?: boolean, client?: boolean }): PeerDiscovery
    leave (topic: Buffer): Promise<void>
    joinPeer (publicKey: Buffer): void
    leavePeer (publicKey: Buffer): void
    flush (): Promise<void>
    listen (): Promise<void>
    destroy (opts?: { force?: boolean }): Promise<void>
    on (event: 'connection', listener: (conn: NoiseStream, info: PeerInfo) => void): this
    on (event: string, listener: (...args: any[]) => void): this
  }
}

declare module 'hypercore-crypto' {
  export function hash (data: Buffer | Buffer[]): Buffer
  export function discoveryKey (publicKey: Buffer): Buffer
  export function keyPair (seed?: Buffer): { publicKey: Buffer, secretKey: Buffer }
  export function sign (message: Buffer, secretKey: Buffer): Buffer
  export function verify (message: Buffer, signature: Buffer, publicKey: Buffer): boolean
  export function randomBytes (n: number): Buffer
  const crypto: {
    hash: typeof hash
    discoveryKey: typeof discoveryKey
    keyPair: typeof keyPair
    sign: typeof sign
    verify: typeof verify
    randomBytes: typeof randomBytes
  }
  export default crypto
}

declare module 'safety-catch' {
  /** Rethrows programming errors (TypeError, ReferenceError, assertion failures...); lets every other error go. */
  export default function safetyCatch (err: unknown): void
}

