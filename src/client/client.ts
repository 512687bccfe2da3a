import { EventEmitter } from 'node:events'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { DEFAULT_DISCOVERY_TOPIC, type BootstrapNode } from '../config.js'
import { RootPeerError, type ErrorCode } from '../protocol/errors.js'
import type { Limits, StoredRecord } from '../protocol/protocol.js'
import { TokenBucket } from '../connection/rate-limit.js'
import { roomKeyPair, signAccess, signMessage, signedRoomName, verifyMessage, type KeyPair } from '../protocol/room-auth.js'
import safetyCatch from 'safety-catch'

export interface RootPeerClientOptions {
  bootstrap?: BootstrapNode[]
  dhtHost?: string
  discoveryTopic?: string
  rootPublicKey?: string | Buffer
  rootPublicKeys?: Array<string | Buffer>
  connectionTimeout?: number
  swarm?: Hyperswarm
  requestTimeout?: number
}

export interface SyncedMessage extends StoredRecord { messageIndex: number }

export interface SyncPage {
  roomName: string
  messages: SyncedMessage[]
  totalMessages: number
  nextIndex: number
  hasMore: boolean
  firstIndex: number
}

export interface MessageAck { id: string, messageIndex: number, duplicate: boolean }

export type RejectReason = 'not-a-record' | 'no-id' | 'not-a-string' | 'unsigned' | 'bad-signature'

export interface RecordRejected { roomName: string, messageIndex: number | null, reason: RejectReason }

interface Outgoing {
  roomName: string
  message: unknown
  id: string
  signature?: string
  size: number
  resolve: (ack: MessageAck) => void
  reject: (err: RootPeerError) => void
  retries: number
  timer: NodeJS.Timeout | null
}

interface Pending {
  resolve: (frame: any) => void
  reject: (err: RootPeerError) => void
  timer: NodeJS.Timeout
}

// refusals after which a message is resent; any other is final
const TRANSIENT: ReadonlySet<string> = new Set(['SHUTTING_DOWN', 'STORAGE_ERROR', 'INTERNAL_ERROR', 'RATE_LIMITED', 'TOO_MANY_PEERS', 'STORAGE_FULL', 'PRIMARY_UNAVAILABLE', 'NOT_REPLICATED'])
const RESEND_BACKOFF = [1000, 5000, 15000, 60000]
const RECONNECT_BACKOFF = [250, 500, 1000, 2000, 5000, 10000]

/** A chat app's side of the protocol: its options and events are in docs/client.md. */
export class RootPeerClient extends EventEmitter {
  readonly swarm: Hyperswarm
  /** its `publicKey` is the connection's Noise key, never the frame's word */
  announcement: { version: number, publicKey: string, limits: Limits, challenge?: string, access?: number } | null = null
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
  private readonly outbox = new Map<string, Outgoing>()
  private sendQueue: Outgoing[] = []
  private sendTimer: NodeJS.Timeout | null = null
  private messageBudget = new TokenBucket(0, 1)
  private byteBudget = new TokenBucket(0, 1)
  private readonly pending = new Map<string, Pending>()
  private nextRequest = 1
  private reconnects = 0
  private reconnectTimer: NodeJS.Timeout | null = null
  private closed = false
  private readonly onConnection = (conn: NoiseStream): void => this.handleConnection(conn)

  constructor (opts: RootPeerClientOptions = {}) {
    super()
    const { bootstrap, dhtHost, discoveryTopic = DEFAULT_DISCOVERY_TOPIC, rootPublicKey, rootPublicKeys = [], swarm, requestTimeout = 30_000, connectionTimeout = 15_000 } = opts
    this.ownsSwarm = swarm === undefined
    this.swarm = swarm ?? new Hyperswarm({
      dht: new HyperDHT({ ...(bootstrap ? { bootstrap } : {}), ...(dhtHost ? { host: dhtHost } : {}) })
    })
    this.topic = crypto.hash(Buffer.from(discoveryTopic))
    this.pinned = [...(rootPublicKey === undefined ? [] : [rootPublicKey]), ...rootPublicKeys].map(k => typeof k === 'string' ? Buffer.from(k, 'hex') : k)
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

  sendMessage (roomName: string, message: unknown, opts: { id?: string } = {}): Promise<MessageAck> {
    const id = opts.id ?? crypto.randomBytes(16).toString('hex')
    const signer = this.signers.get(roomName)
    if (signer !== undefined && typeof message !== 'string') return Promise.reject(new RootPeerError('BAD_FRAME', 'a signed room\'s messages are strings'))
    return new Promise((resolve, reject) => {
      const size = typeof message === 'string' ? Buffer.byteLength(message) : Buffer.byteLength(JSON.stringify(message) ?? '')
      const out: Outgoing = { roomName, message, id, size, resolve, reject, retries: 0, timer: null }
      if (signer !== undefined) out.signature = signMessage(signer.secretKey, roomName, id, message as string)
      this.outbox.set(id, out)
      this.queueSend(out)
    })
  }

  get unacked (): number {
    return this.outbox.size
  }

  /** In a signed room a record that fails its check is dropped (`record-rejected`); paging goes on past it. */
  async syncPage (roomName: string, fromIndex = 0, limit?: number): Promise<SyncPage> {
    const frame = await this.request({ type: 'sync-request', roomName, lastIndex: fromIndex, ...(limit ? { limit } : {}) })
    const signer = this.signers.get(roomName)
    const messages = signer === undefined ? frame.messages : this.signedOnly(roomName, signer.publicKey.toString('hex'), frame.messages)
    return { roomName: signer === undefined ? frame.roomName : roomName, messages, totalMessages: frame.totalMessages, nextIndex: frame.nextIndex, hasMore: frame.hasMore, firstIndex: frame.firstIndex ?? 0 }
  }

  async * sync (roomName: string, fromIndex = 0, opts: { limit?: number } = {}): AsyncGenerator<SyncPage> {
    let from = fromIndex
    while (true) {
      const page = await this.syncPage(roomName, from, opts.limit)
      yield page
      if (!page.hasMore || page.nextIndex <= from) return
      from = page.nextIndex
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    if (this.sendTimer !== null) clearTimeout(this.sendTimer)
    this.sendQueue = []
    for (const out of this.outbox.values()) {
      if (out.timer !== null) clearTimeout(out.timer)
      out.reject(new RootPeerError('DISCONNECTED', 'client closed before the message was acked'))
    }
    this.outbox.clear()
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
    // stay within the root peer's advertised budgets (90% of them), so a resent outbox is never refused
    const limits = this.announcement.limits
    this.messageBudget = new TokenBucket((limits?.messagesPerSecond ?? 0) * 0.9, (limits?.messagesPerSecond ?? 0) * 9)
    this.byteBudget = new TokenBucket((limits?.bytesPerSecond ?? 0) * 0.9, (limits?.bytesPerSecond ?? 0) * 9)
    for (const roomName of this.rooms) this.write(this.withAccess({ type: 'register-room', roomName }))
    this.sendQueue = []
    for (const out of this.outbox.values()) {
      if (out.timer !== null) clearTimeout(out.timer)
      out.timer = null
      this.sendQueue.push(out)
    }
    this.pump()
    this.emit('connect', conn.remotePublicKey.toString('hex'), this.announcement)
  }

  private detach (conn: NoiseStream): void {
    if (this.conn !== conn) return
    this.conn = null
    if (this.sendTimer !== null) clearTimeout(this.sendTimer)
    this.sendTimer = null
    this.sendQueue = []
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
    if (frame.type === 'message-ack') {
      const out = this.outbox.get(frame.id)
      if (out === undefined) return
      this.outbox.delete(frame.id)
      if (out.timer !== null) clearTimeout(out.timer)
      out.resolve({ id: frame.id, messageIndex: frame.messageIndex, duplicate: frame.duplicate === true })
      return
    }
    if (frame.requestId !== undefined && this.pending.has(String(frame.requestId))) {
      const key = String(frame.requestId)
      const p = this.pending.get(key)!
      this.pending.delete(key)
      clearTimeout(p.timer)
      if (frame.type === 'error') p.reject(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      else p.resolve(frame)
      return
    }
    if (frame.type === 'error') {
      this.emit('error-frame', frame)
      if (typeof frame.id === 'string' && this.outbox.has(frame.id)) this.messageRefused(this.outbox.get(frame.id)!, frame)
    }
  }

  private messageRefused (out: Outgoing, frame: any): void {
    if (!TRANSIENT.has(frame.code)) {
      this.outbox.delete(out.id)
      out.reject(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      return
    }
    // SHUTTING_DOWN: the reconnect resends it; others after a backoff
    if (frame.code === 'SHUTTING_DOWN' || out.timer !== null) return
    const delay = typeof frame.retryAfterMs === 'number' ? frame.retryAfterMs : RESEND_BACKOFF[Math.min(out.retries++, RESEND_BACKOFF.length - 1)]
    out.timer = setTimeout(() => {
      out.timer = null
      if (this.outbox.has(out.id)) this.queueSend(out)
    }, delay)
    out.timer.unref()
  }

  private queueSend (out: Outgoing): void {
    this.sendQueue.push(out)
    this.pump()
  }

  private pump (): void {
    if (this.sendTimer !== null || this.conn === null) return
    while (this.sendQueue.length > 0) {
      const out = this.sendQueue[0]
      const wait = Math.max(this.messageBudget.wait(1), this.byteBudget.wait(out.size))
      if (wait > 0) {
        this.sendTimer = setTimeout(() => {
          this.sendTimer = null
          this.pump()
        }, wait)
        this.sendTimer.unref()
        return
      }
      this.messageBudget.consume(1)
      this.byteBudget.consume(out.size)
      this.sendQueue.shift()
      if (this.outbox.has(out.id)) {
        this.write({ type: 'message', roomName: out.roomName, message: out.message, id: out.id, ...(out.signature === undefined ? {} : { signature: out.signature }) })
      }
    }
  }

  private signedOnly (roomName: string, writerPublicKey: string, records: unknown): SyncedMessage[] {
    const kept: SyncedMessage[] = []
    for (const record of Array.isArray(records) ? records : []) {
      const reason = rejectReason(roomName, writerPublicKey, record)
      if (reason === null) {
        kept.push(record as SyncedMessage)
        continue
      }
      this.counters.recordsRejected++
      const messageIndex = Number.isSafeInteger(record?.messageIndex) ? record.messageIndex as number : null
      this.emit('record-rejected', { roomName, messageIndex, reason } satisfies RecordRejected)
    }
    return kept
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

function rejectReason (roomName: string, writerPublicKey: string, record: any): RejectReason | null {
  if (typeof record !== 'object' || record === null) return 'not-a-record'
  if (typeof record.id !== 'string') return 'no-id'
  if (typeof record.message !== 'string') return 'not-a-string'
  if (record.signature === undefined) return 'unsigned'
  return verifyMessage(writerPublicKey, roomName, record.id, record.message, record.signature) ? null : 'bad-signature'
}
