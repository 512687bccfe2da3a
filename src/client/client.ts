import { EventEmitter } from '#events'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import safetyCatch from 'safety-catch'
import { DEFAULT_DISCOVERY_TOPIC, type BootstrapNode } from '../protocol/discovery.js'
import { RootPeerError, type ErrorCode } from '../protocol/errors.js'
import type { Limits } from '../protocol/protocol.js'
import { roomKeyPair, signAccess, signMessage, signedRoomName, type KeyPair } from '../protocol/room-auth.js'
import { ConnectWatchdog } from './connect-watchdog.js'
import { FollowQueue } from './follow-queue.js'
import { Outbox, type MessageAck } from './outbox.js'
import { signedRecords, type RecordRejected, type SyncedMessage } from './signed-records.js'

export type { MessageAck } from './outbox.js'
export type { RecordRejected, RejectReason, SyncedMessage } from './signed-records.js'

export interface RootPeerClientOptions {
  bootstrap?: BootstrapNode[]
  dhtHost?: string
  discoveryTopic?: string
  rootPublicKey?: string | Uint8Array
  rootPublicKeys?: Array<string | Uint8Array>
  connectionTimeout?: number
  swarm?: Hyperswarm
  requestTimeout?: number
}

export interface SyncPage {
  roomName: string
  messages: SyncedMessage[]
  totalMessages: number
  nextIndex: number
  hasMore: boolean
  firstIndex: number
}

/** The root peer's first frame; its `publicKey` is the connection's Noise key, never the frame's word. */
export interface Announcement { version: number, publicKey: string, limits: Limits, challenge?: string, access?: number, relay?: string }

interface Pending {
  resolve: (frame: any) => void
  reject: (err: RootPeerError) => void
  timer: ReturnType<typeof setTimeout>
}

const RECONNECT_BACKOFF = [250, 500, 1000, 2000, 5000, 10000]

/** A chat app's side of the protocol: its options and events are in docs/client.md. */
export class RootPeerClient extends EventEmitter {
  readonly swarm: Hyperswarm
  announcement: Announcement | null = null
  readonly counters = { recordsRejected: 0 }
  private readonly ownsSwarm: boolean
  private readonly topic: Buffer
  private readonly pinned: Buffer[]
  private candidate = 0
  private readonly connectionTimeout: number
  private readonly requestTimeout: number
  private conn: NoiseStream | null = null
  private rootKey: Buffer | null = null
  private discovery: PeerDiscovery | null = null
  private readonly rooms = new Set<string>()
  private readonly signers = new Map<string, KeyPair>()
  private readonly outbox = new Outbox()
  private readonly pending = new Map<string, Pending>()
  private readonly follows = new Map<string, FollowQueue>()
  private readonly watchdog = new ConnectWatchdog()
  private nextRequest = 1
  private reconnects = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private closed = false
  private readonly onConnection = (conn: NoiseStream): void => this.handleConnection(conn)
  // frames that answer no request (those are matched by requestId first), by type
  private readonly frameHandlers: Record<string, (frame: any) => void> = {
    'message-ack': frame => this.outbox.acked(frame),
    'follow-messages': frame => this.follows.get(frame.roomName)?.push(this.verified(frame.roomName, frame.messages), frame.nextIndex),
    'follow-live': frame => { if (this.follows.has(frame.roomName)) this.emit('follow-live', frame.roomName, frame.nextIndex) },
    'follow-ended': frame => { if (frame.reason === 'removed') this.follows.get(frame.roomName)?.end() },
    error: frame => {
      this.emit('error-frame', frame)
      if (frame.requestType === 'follow') this.followRefused(frame)
      else this.outbox.refused(frame)
    }
  }

  constructor (opts: RootPeerClientOptions = {}) {
    super()
    const { bootstrap, dhtHost, discoveryTopic = DEFAULT_DISCOVERY_TOPIC, rootPublicKey, rootPublicKeys = [], swarm, requestTimeout = 30_000, connectionTimeout = 15_000 } = opts
    this.ownsSwarm = swarm === undefined
    this.swarm = swarm ?? new Hyperswarm({
      dht: new HyperDHT({ ...(bootstrap ? { bootstrap } : {}), ...(dhtHost ? { host: dhtHost } : {}) })
    })
    this.topic = crypto.hash(Buffer.from(discoveryTopic))
    this.pinned = [...(rootPublicKey === undefined ? [] : [rootPublicKey]), ...rootPublicKeys].map(k => typeof k === 'string' ? Buffer.from(k, 'hex') : Buffer.from(k))
    this.requestTimeout = requestTimeout
    this.connectionTimeout = connectionTimeout
    this.swarm.on('connection', this.onConnection)
    this.discovery = this.swarm.join(this.topic, { client: true, server: false })
    if (this.pinned.length > 0) this.swarm.joinPeer(this.pinned[0])
    // until a root peer answers, look it up again with backoff (it may start after us)
    this.scheduleReconnect()
  }

  get connected (): boolean {
    return this.conn !== null
  }

  get rootPublicKey (): string | null {
    return this.rootKey?.toString('hex') ?? null
  }

  /** The root peer's blind relay, for Hyperswarm's `relayThrough` (docs/relay.md); null when it relays nothing. */
  get relayPublicKey (): Buffer | null {
    const relay = this.announcement?.relay
    return relay === undefined ? null : Buffer.from(relay, 'hex')
  }

  ready (timeout = this.requestTimeout): Promise<void> {
    if (this.conn !== null) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('connect', onconnect)
        reject(new RootPeerError('TIMEOUT', `no root peer found within ${timeout} ms`))
      }, timeout)
      const onconnect = (): void => {
        clearTimeout(timer)
        resolve()
      }
      this.once('connect', onconnect)
    })
  }

  /** Registers a room, again after each reconnect; given a room key (bytes) instead of a name, a signed room. */
  async registerRoom (room: string | Uint8Array): Promise<{ roomName: string, messageCount: number }> {
    let roomName: string
    if (typeof room === 'string') {
      roomName = room
    } else {
      const keyPair = roomKeyPair(room)
      roomName = signedRoomName(keyPair.publicKey)
      this.signers.set(roomName, keyPair)
    }
    this.rooms.add(roomName)
    const frame = await this.request({ type: 'register-room', roomName })
    return { roomName, messageCount: frame.messageCount }
  }

  /** Kept in the outbox until acked: resent after a reconnect, and after a refusal that may pass. */
  sendMessage (roomName: string, message: unknown, opts: { id?: string } = {}): Promise<MessageAck> {
    const id = opts.id ?? crypto.randomBytes(16).toString('hex')
    const signer = this.signers.get(roomName)
    if (signer === undefined) return this.outbox.add(roomName, message, id)
    if (typeof message !== 'string') return Promise.reject(new RootPeerError('BAD_FRAME', 'a signed room\'s messages are strings'))
    return this.outbox.add(roomName, message, id, signMessage(signer.secretKey, roomName, id, message))
  }

  get unacked (): number {
    return this.outbox.size
  }

  /** In a signed room a record that fails its check is dropped (`record-rejected`); paging goes on past it. */
  async syncPage (roomName: string, fromIndex = 0, limit?: number): Promise<SyncPage> {
    const frame = await this.request({ type: 'sync-request', roomName, lastIndex: fromIndex, ...(limit ? { limit } : {}) })
    const signed = this.signers.has(roomName)
    const messages = this.verified(roomName, frame.messages)
    return { roomName: signed ? roomName : frame.roomName, messages, totalMessages: frame.totalMessages, nextIndex: frame.nextIndex, hasMore: frame.hasMore, firstIndex: frame.firstIndex ?? 0 }
  }

  /** Every page from `fromIndex` to the room's end, as an async iterator. */
  async * sync (roomName: string, fromIndex = 0, opts: { limit?: number } = {}): AsyncGenerator<SyncPage> {
    let from = fromIndex
    while (true) {
      const page = await this.syncPage(roomName, from, opts.limit)
      yield page
      if (!page.hasMore || page.nextIndex <= from) return
      from = page.nextIndex
    }
  }

  /**
   * The room's messages from `fromIndex`, then each new one as it is stored, in index order. After a reconnect
   * or a failover it resumes from the message after the last one it had; ends when the room is removed.
   */
  async * follow (roomName: string, fromIndex = 0): AsyncGenerator<SyncedMessage> {
    if (this.follows.has(roomName)) throw new RootPeerError('BAD_FRAME', `room ${roomName} is followed already`)
    const queue = new FollowQueue(fromIndex)
    this.follows.set(roomName, queue)
    this.startFollow(roomName, queue)
    try {
      while (true) {
        const message = await queue.next()
        if (message === null) return
        yield message
      }
    } finally {
      this.follows.delete(roomName)
      this.write({ type: 'unfollow', roomName })
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.outbox.close()
    for (const queue of this.follows.values()) queue.end()
    this.failPending('client closed')
    this.swarm.off('connection', this.onConnection)
    if (this.ownsSwarm) {
      await this.swarm.destroy()
    } else {
      if (this.conn !== null) this.conn.end()
      await this.swarm.leave(this.topic)
    }
  }

  private handleConnection (conn: NoiseStream): void {
    conn.on('error', ignoreError)
    if (this.closed) return
    if (this.ownsSwarm || this.pinned.some(k => k.equals(conn.remotePublicKey))) this.watchdog.watch(conn, this.swarm)
    let announced = false
    const onfirst = (data: Buffer): void => {
      let frame: any
      try {
        frame = JSON.parse(data.toString('utf8'))
      } catch {
        frame = null
      }
      announced = frame?.type === 'root-peer-announcement'
      // what a member signs names the root peer by its Noise key: a peer announcing another key is not it
      if (announced && (typeof frame.publicKey !== 'string' || frame.publicKey.toLowerCase() !== conn.remotePublicKey.toString('hex'))) {
        announced = false
        this.emit('announcement-refused', conn.remotePublicKey.toString('hex'), 'its publicKey is not the connection\'s key')
      }
      const wanted = announced && (this.pinned.length === 0 || this.pinned.some(k => k.equals(conn.remotePublicKey))) && this.conn === null
      if (!wanted) {
        conn.off('data', onfirst)
        if (this.ownsSwarm && !(announced && this.conn?.remotePublicKey.equals(conn.remotePublicKey))) conn.destroy()
        return
      }
      conn.off('data', onfirst)
      this.attach(conn, frame)
    }
    conn.on('data', onfirst)
  }

  private attach (conn: NoiseStream, announcement: any): void {
    this.conn = conn
    this.rootKey = conn.remotePublicKey
    if (this.connectionTimeout > 0) conn.setTimeout(this.connectionTimeout)
    this.announcement = { version: announcement.version, publicKey: conn.remotePublicKey.toString('hex'), limits: announcement.limits, challenge: announcement.challenge, access: announcement.access }
    if (typeof announcement.relay === 'string' && /^[0-9a-f]{64}$/.test(announcement.relay)) this.announcement.relay = announcement.relay
    this.reconnects = 0
    // dial it directly from now on, so a restarted root peer is found again without a topic lookup
    this.swarm.joinPeer(conn.remotePublicKey)
    if (this.pinned.length > 1) {
      this.candidate = Math.max(0, this.pinned.findIndex(k => k.equals(conn.remotePublicKey)))
      for (const k of this.pinned) if (!k.equals(conn.remotePublicKey)) this.swarm.leavePeer(k)
    }
    conn.on('data', (data: Buffer) => this.onFrame(data))
    conn.on('end', () => conn.end())
    conn.on('close', () => this.detach(conn))
    for (const roomName of this.rooms) this.write(this.withAccess({ type: 'register-room', roomName }))
    for (const [roomName, queue] of this.follows) this.startFollow(roomName, queue)
    this.outbox.connected(frame => this.write(frame), this.announcement.limits)
    this.emit('connect', conn.remotePublicKey.toString('hex'), this.announcement)
  }

  private detach (conn: NoiseStream): void {
    if (this.conn !== conn) return
    this.conn = null
    this.outbox.disconnected()
    this.failPending('disconnected from the root peer')
    if (this.pinned.length > 1) this.nextCandidate(conn.remotePublicKey)
    this.emit('disconnect', conn.remotePublicKey.toString('hex'))
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    if (this.closed || this.reconnectTimer !== null) return
    const delay = RECONNECT_BACKOFF[Math.min(this.reconnects++, RECONNECT_BACKOFF.length - 1)]
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      if (this.closed || this.conn !== null) return
      if (this.pinned.length > 1 && this.reconnects > 1) this.nextCandidate(this.pinned[this.candidate])
      const key = this.pinned.length > 0 ? this.pinned[this.candidate] : this.rootKey
      if (key !== null && !this.swarm.connections.size) {
        // a fresh peer entry retries at once instead of after Hyperswarm's long backoff
        this.swarm.leavePeer(key)
        this.swarm.joinPeer(key)
      }
      this.discovery?.refresh().catch(safetyCatch)
      this.scheduleReconnect()
    }, delay)
    this.reconnectTimer.unref()
  }

  private nextCandidate (from: Buffer): void {
    this.swarm.leavePeer(from)
    const at = this.pinned.findIndex(k => k.equals(from))
    this.candidate = (at + 1) % this.pinned.length
    this.swarm.joinPeer(this.pinned[this.candidate])
  }

  private onFrame (data: Buffer): void {
    let frame: any
    try {
      frame = JSON.parse(data.toString('utf8'))
    } catch {
      return
    }
    if (typeof frame !== 'object' || frame === null) return
    const p = frame.requestId === undefined ? undefined : this.pending.get(String(frame.requestId))
    if (p !== undefined) {
      this.pending.delete(String(frame.requestId))
      clearTimeout(p.timer)
      if (frame.type === 'error') p.reject(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      else p.resolve(frame)
      return
    }
    if (typeof frame.type === 'string' && Object.hasOwn(this.frameHandlers, frame.type)) this.frameHandlers[frame.type](frame)
  }

  /** A signed room's records that its writer signed; each other one is reported and counted. */
  private verified (roomName: string, records: unknown): SyncedMessage[] {
    const signer = this.signers.get(roomName)
    if (signer === undefined) return records as SyncedMessage[]
    return signedRecords(roomName, signer.publicKey.toString('hex'), records, rejected => {
      this.counters.recordsRejected++
      this.emit('record-rejected', rejected satisfies RecordRejected)
    })
  }

  private startFollow (roomName: string, queue: FollowQueue): void {
    this.write(this.withAccess({ type: 'follow', roomName, fromIndex: queue.nextIndex }))
  }

  /** A rate limit is waited out; any other refusal ends the follow with it. */
  private followRefused (frame: any): void {
    const queue = this.follows.get(frame.roomName)
    if (queue === undefined) return
    if (frame.code !== 'RATE_LIMITED') {
      queue.fail(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      return
    }
    setTimeout(() => { if (this.follows.get(frame.roomName) === queue) this.startFollow(frame.roomName, queue) }, Number(frame.retryAfterMs) || 1000)
  }

  private withAccess (frame: { type: string, roomName: string } & Record<string, unknown>): Record<string, unknown> {
    const signer = this.signers.get(frame.roomName)
    const challenge = this.announcement?.challenge
    if (signer === undefined || typeof challenge !== 'string' || this.rootKey === null) return frame
    const signature = signAccess(signer.secretKey, this.rootKey.toString('hex'), challenge, frame.roomName)
    return { ...frame, writerPublicKey: signer.publicKey.toString('hex'), signature }
  }

  private async request (frame: { type: string, roomName: string } & Record<string, unknown>): Promise<any> {
    await this.ready()
    frame = this.withAccess(frame) as typeof frame
    const requestId = `r${this.nextRequest++}`
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId)
        reject(new RootPeerError('TIMEOUT', `no answer to ${String(frame.type)} within ${this.requestTimeout} ms`))
      }, this.requestTimeout)
      this.pending.set(requestId, { resolve, reject, timer })
      this.write({ ...frame, requestId })
    })
  }

  private failPending (reason: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(new RootPeerError('DISCONNECTED', reason))
    }
    this.pending.clear()
  }

  private write (frame: object): void {
    if (this.conn !== null) this.conn.write(JSON.stringify(frame))
  }
}

// the close that follows a connection's error is what the client acts on (detach, reconnect)
function ignoreError (): void {}
