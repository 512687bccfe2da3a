import { EventEmitter } from '#events'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery, type PeerInfo } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import safetyCatch from 'safety-catch'
import { DEFAULT_DISCOVERY_TOPIC, type BootstrapNode } from './protocol/discovery.js'
import { RootPeerError, type ErrorCode } from './protocol/errors.js'
import type { Limits } from './protocol/frame-types.js'
import { roomKeyPair, signAccess, signMessage, signedRoomName, type KeyPair } from './protocol/room-auth.js'
import { ConnectWatchdog } from './connect-watchdog.js'
import { Follows } from './follows.js'
import { claimedType, decodeRootPeerFrame, type AnnouncementFrame, type ErrorFrame, type FollowEndedFrame, type FollowLiveFrame, type FollowMessagesFrame, type MessageAckFrame, type MessageBatchAckFrame, type RootPeerFrame, type SyncResponseFrame } from './frames.js'
import { Outbox, type MessageAck } from './outbox.js'
import { RecordFilter, type RecordRejected, type SyncedMessage } from './record-filter.js'

export type { MessageAck } from './outbox.js'
export type { RecordRejected, RejectReason, SyncedMessage } from './record-filter.js'

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

/**
 * The root peer's first frame; its `publicKey` is the connection's Noise key, never the frame's word. `limits` holds
 * the limits it announced, each a non-negative integer.
 */
export interface Announcement { version: number, publicKey: string, limits: Partial<Limits>, challenge?: string, access?: number, relay?: string, batch?: { maxMessages: number } }

/** A frame from the root peer that failed its check and was dropped: its claimed type (or null) and why. */
export interface FrameRejected { type: string | null, reason: string }

interface Pending {
  answer: 'room-registered' | 'sync-response'
  roomName: string
  resolve: (frame: any) => void
  reject: (err: RootPeerError) => void
  timer: ReturnType<typeof setTimeout>
}

const RECONNECT_BACKOFF = [250, 500, 1000, 2000, 5000, 10000, 30000]
// a root peer proves useful by answering a request, or by staying this long: only then is the backoff reset
const USEFUL_AFTER = 10_000

/** A chat app's side of the protocol: its options and events are in docs/client.md. */
export class RootPeerClient extends EventEmitter {
  readonly swarm: Hyperswarm
  announcement: Announcement | null = null
  readonly counters = { recordsRejected: 0, framesRejected: 0, pagesDropped: 0 }
  private readonly ownsSwarm: boolean
  private readonly topic: Buffer
  private readonly pinned: Buffer[]
  private candidate = 0
  private readonly connectionTimeout: number
  private readonly requestTimeout: number
  private conn: NoiseStream | null = null
  private rootKey: Buffer | null = null
  // the last root peer that proved useful: the one dialed directly after a disconnect
  private provenKey: Buffer | null = null
  private usefulTimer: ReturnType<typeof setTimeout> | null = null
  // whether the current connection proved useful, and Hyperswarm's record of its peer
  private useful = false
  private connInfo: PeerInfo | null = null
  private discovery: PeerDiscovery | null = null
  private readonly rooms = new Set<string>()
  private readonly signers = new Map<string, KeyPair>()
  private readonly outbox = new Outbox()
  private readonly pending = new Map<string, Pending>()
  private readonly follows = new Follows({
    connection: () => this.conn,
    write: frame => this.write(frame),
    followFrame: (roomName, fromIndex) => this.withAccess({ type: 'follow', roomName, fromIndex }),
    emit: (event, ...args) => this.emit(event, ...args),
    counters: this.counters
  })
  private readonly watchdog = new ConnectWatchdog()
  private nextRequest = 1
  private reconnects = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private closed = false
  private readonly onConnection = (conn: NoiseStream, info: PeerInfo): void => this.handleConnection(conn, info)
  // checked frames that answer no pending request (those are matched by requestId first), by type
  private readonly frameHandlers: Record<RootPeerFrame['type'], (frame: any, bytes: number) => void> = {
    'root-peer-announcement': () => this.rejectFrame('root-peer-announcement', 'a second announcement'),
    'room-registered': () => this.rejectFrame('room-registered', 'answers no pending request'),
    'sync-response': () => this.rejectFrame('sync-response', 'answers no pending request'),
    'message-ack': (frame: MessageAckFrame) => { if (this.outbox.acked(frame)) this.markUseful() },
    'message-batch-ack': (frame: MessageBatchAckFrame) => {
      if (this.outbox.batchAcked(frame)) this.markUseful()
      else this.rejectFrame('message-batch-ack', 'answers no batch sent, or not with its ids in its order')
    },
    'follow-messages': (frame: FollowMessagesFrame, bytes) => this.follows.messages(frame, bytes),
    'follow-live': (frame: FollowLiveFrame) => { if (this.follows.live(frame)) this.markUseful() },
    'follow-ended': (frame: FollowEndedFrame) => this.follows.ended(frame),
    error: (frame: ErrorFrame) => {
      this.emit('error-frame', frame)
      if (frame.requestType === 'follow') this.follows.refused(frame)
      else if (frame.requestType === 'unfollow') this.follows.unfollowRefused(frame)
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

  /**
   * A record that fails its check is dropped (`record-rejected`); paging goes on past it. `nextIndex` is the index
   * after the last record the page carried, whatever the root peer claimed.
   */
  async syncPage (roomName: string, fromIndex = 0, limit?: number): Promise<SyncPage> {
    return await this.page(this.filterFor(roomName, fromIndex), limit)
  }

  /** Every page from `fromIndex` to the room's end, as an async iterator; a record repeated on a later page is dropped. */
  async * sync (roomName: string, fromIndex = 0, opts: { limit?: number } = {}): AsyncGenerator<SyncPage> {
    const filter = this.filterFor(roomName, fromIndex)
    while (true) {
      const from = filter.delivered
      const page = await this.page(filter, opts.limit)
      yield page
      if (!page.hasMore || page.nextIndex <= from) return
    }
  }

  /**
   * The room's messages from `fromIndex`, then each new one as it is stored, in index order. After a reconnect
   * or a failover it resumes from the message after the last one it had; ends when the room is removed.
   */
  async * follow (roomName: string, fromIndex = 0): AsyncGenerator<SyncedMessage> {
    const queue = this.follows.open(roomName, this.filterFor(roomName, fromIndex))
    try {
      while (true) {
        const message = await queue.next()
        if (message === null) return
        yield message
      }
    } finally {
      this.follows.close(roomName, queue)
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    if (this.usefulTimer !== null) clearTimeout(this.usefulTimer)
    this.outbox.close()
    this.follows.endAll()
    this.failPending('client closed')
    this.swarm.off('connection', this.onConnection)
    if (this.ownsSwarm) {
      await this.swarm.destroy()
    } else {
      if (this.conn !== null) this.conn.end()
      await this.swarm.leave(this.topic)
    }
  }

  private handleConnection (conn: NoiseStream, info: PeerInfo | undefined): void {
    conn.on('error', ignoreError)
    if (this.closed) return
    if (this.ownsSwarm || this.pinned.some(k => k.equals(conn.remotePublicKey))) this.watchdog.watch(conn, this.swarm)
    const onfirst = (data: Buffer): void => {
      const frame = this.announcementOf(conn, data)
      const announced = frame !== null
      const wanted = announced && (this.pinned.length === 0 || this.pinned.some(k => k.equals(conn.remotePublicKey))) && this.conn === null
      if (!wanted) {
        conn.off('data', onfirst)
        if (this.ownsSwarm && !(announced && this.conn?.remotePublicKey.equals(conn.remotePublicKey))) conn.destroy()
        return
      }
      conn.off('data', onfirst)
      this.attach(conn, frame, info ?? null)
    }
    conn.on('data', onfirst)
  }

  /** The first frame of a connection as a root peer's announcement, or null: refused (reported) or another app's peer. */
  private announcementOf (conn: NoiseStream, data: Buffer): AnnouncementFrame | null {
    const remoteKey = conn.remotePublicKey.toString('hex')
    let frame: RootPeerFrame
    try {
      frame = decodeRootPeerFrame(data)
    } catch (err) {
      if (!(err instanceof RootPeerError)) throw err
      if (claimedType(data) === 'root-peer-announcement') this.emit('announcement-refused', remoteKey, err.message)
      return null
    }
    if (frame.type !== 'root-peer-announcement') return null
    // what a member signs names the root peer by its Noise key: a peer announcing another key is not it
    if (frame.publicKey !== remoteKey) {
      this.emit('announcement-refused', remoteKey, 'its publicKey is not the connection\'s key')
      return null
    }
    return frame
  }

  private attach (conn: NoiseStream, announcement: AnnouncementFrame, info: PeerInfo | null): void {
    this.conn = conn
    // until it proves useful, it is redialed only by the client's own backoff, not by Hyperswarm's after a close
    this.connInfo = info
    info?.reconnect(false)
    this.rootKey = conn.remotePublicKey
    if (this.connectionTimeout > 0) conn.setTimeout(this.connectionTimeout)
    const { version, limits, challenge, access, relay, batch } = announcement
    this.announcement = { version, publicKey: conn.remotePublicKey.toString('hex'), limits, challenge, access, ...(relay === undefined ? {} : { relay }), ...(batch === undefined ? {} : { batch }) }
    this.usefulTimer = setTimeout(() => this.markUseful(), USEFUL_AFTER)
    this.usefulTimer.unref?.()
    if (this.pinned.length > 1) {
      this.candidate = Math.max(0, this.pinned.findIndex(k => k.equals(conn.remotePublicKey)))
      for (const k of this.pinned) if (!k.equals(conn.remotePublicKey)) this.swarm.leavePeer(k)
    }
    conn.on('data', (data: Buffer) => { if (this.conn === conn) this.onFrame(data) })
    conn.on('end', () => conn.end())
    conn.on('close', () => this.detach(conn))
    for (const roomName of this.rooms) this.write(this.withAccess({ type: 'register-room', roomName }))
    this.follows.connected()
    this.outbox.connected(frame => this.write(frame), this.announcement.limits, batch?.maxMessages ?? 0)
    this.emit('connect', conn.remotePublicKey.toString('hex'), this.announcement)
  }

  /** The root peer answered a request (or stayed): the reconnect backoff starts again from its shortest wait. */
  private markUseful (): void {
    if (this.usefulTimer !== null) clearTimeout(this.usefulTimer)
    this.usefulTimer = null
    if (this.conn === null || this.useful) return
    this.useful = true
    this.reconnects = 0
    this.provenKey = this.conn.remotePublicKey
    this.connInfo?.reconnect(true)
    // dial it directly from now on, so a restarted root peer is found again without a topic lookup
    this.swarm.joinPeer(this.provenKey)
  }

  private detach (conn: NoiseStream): void {
    if (this.conn !== conn) return
    this.conn = null
    if (this.usefulTimer !== null) clearTimeout(this.usefulTimer)
    this.usefulTimer = null
    this.useful = false
    this.connInfo = null
    this.follows.disconnected()
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
      const key = this.pinned.length > 0 ? this.pinned[this.candidate] : this.provenKey
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

  /** Every frame after the announcement: checked, then matched to its request or handled by its type. */
  private onFrame (data: Buffer): void {
    let frame: RootPeerFrame
    try {
      frame = decodeRootPeerFrame(data)
    } catch (err) {
      if (!(err instanceof RootPeerError)) throw err
      this.rejectFrame(claimedType(data), err.message)
      return
    }
    const requestId = 'requestId' in frame ? frame.requestId : undefined
    const p = requestId === undefined ? undefined : this.pending.get(String(requestId))
    if (p !== undefined) {
      if (frame.type !== 'error' && (frame.type !== p.answer || frame.roomName !== p.roomName)) {
        this.rejectFrame(frame.type, `answers request ${String(requestId)} (a ${p.answer} of ${p.roomName}) with another frame`)
        return
      }
      this.pending.delete(String(requestId))
      clearTimeout(p.timer)
      if (frame.type === 'error') {
        p.reject(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
        return
      }
      this.markUseful()
      p.resolve(frame)
      return
    }
    this.frameHandlers[frame.type](frame, data.byteLength)
  }

  private rejectFrame (type: string | null, reason: string): void {
    this.counters.framesRejected++
    this.emit('frame-rejected', { type, reason } satisfies FrameRejected)
  }

  /** What one stream of the room's records (a follow, a sync) lets through to the app. */
  private filterFor (roomName: string, fromIndex: number): RecordFilter {
    if (!Number.isSafeInteger(fromIndex) || fromIndex < 0) throw new RootPeerError('BAD_FRAME', 'fromIndex: must be a non-negative integer')
    const signer = this.signers.get(roomName)
    return new RecordFilter(roomName, signer === undefined ? null : signer.publicKey.toString('hex'), fromIndex, rejected => {
      this.counters.recordsRejected++
      this.emit('record-rejected', rejected satisfies RecordRejected)
    })
  }

  private async page (filter: RecordFilter, limit?: number): Promise<SyncPage> {
    const roomName = filter.roomName
    const from = filter.delivered
    const frame: SyncResponseFrame = await this.request({ type: 'sync-request', roomName, lastIndex: from, ...(limit ? { limit } : {}) })
    const messages = filter.accept(frame.messages)
    // a page is believed to reach only as far as the records it carried
    const nextIndex = filter.delivered
    return { roomName, messages, totalMessages: frame.totalMessages, nextIndex, hasMore: frame.hasMore && nextIndex > from, firstIndex: frame.firstIndex }
  }

  private withAccess (frame: { type: string, roomName: string } & Record<string, unknown>): Record<string, unknown> {
    const signer = this.signers.get(frame.roomName)
    const challenge = this.announcement?.challenge
    if (signer === undefined || typeof challenge !== 'string' || this.rootKey === null) return frame
    const signature = signAccess(signer.secretKey, this.rootKey.toString('hex'), challenge, frame.roomName)
    return { ...frame, writerPublicKey: signer.publicKey.toString('hex'), signature }
  }

  private async request (frame: { type: 'register-room' | 'sync-request', roomName: string } & Record<string, unknown>): Promise<any> {
    await this.ready()
    frame = this.withAccess(frame) as typeof frame
    const requestId = `r${this.nextRequest++}`
    const answer = frame.type === 'register-room' ? 'room-registered' : 'sync-response'
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId)
        reject(new RootPeerError('TIMEOUT', `no answer to ${String(frame.type)} within ${this.requestTimeout} ms`))
      }, this.requestTimeout)
      this.pending.set(requestId, { answer, roomName: frame.roomName, resolve, reject, timer })
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

