import { EventEmitter } from 'node:events'
import c from 'compact-encoding'
import Corestore from 'corestore'
import type Hyperswarm from 'hyperswarm'
import type { NoiseStream } from 'hyperswarm'
import Protomux, { type Message } from 'protomux'
import { RootPeerError, type ErrorCode } from '../protocol/errors.js'
import { openStore } from '../storage/data-dir-lock.js'
import { MemberDialer } from './member-dial.js'

/** The root-to-root protocol's Protomux channel. */
export const CLUSTER_PROTOCOL = 'root-peer-cluster/v1'
/** A member link sends a keep-alive this often, and is dropped after this long without a byte from the member. */
const KEEP_ALIVE = 2000
const LINK_TIMEOUT = 6000
/**
 * Two connections to one member within this long of each other are a simultaneous dial: both sides keep the one the
 * member with the greater key initiated. A later one replaces the link only when the link has read nothing (not even
 * a keep-alive) for LIVE_WINDOW: the member lost it and came back; a live link is kept, and the newcomer dropped.
 */
const DUPLICATE_WINDOW = 2000
const LIVE_WINDOW = 3000
/** Rooms per `rooms` frame: a write of a few MiB can reset a connection, so a long list goes in several frames. */
const ROOMS_PER_FRAME = 256

/** The Corestore name of the key pair a root peer's swarm (and so its public key) uses. */
export const SWARM_KEY_PAIR = 'root-peer-swarm'

/** A room as members tell each other about it: its name, its core's key, and the member whose core it is. */
export interface RoomAd {
  name: string
  /** core key, hex */
  key: string
  /** the member that holds the core (absent: the sender) */
  primary?: string
  writerPublicKey?: string
  /** the room was taken over (`root-peer promote`) from this gone member: mirrors of its old core follow this one */
  promotedFrom?: string
  /** blocks the sender holds from 0 without a gap: a mirror holding fewer follows the room actively until it has them */
  length?: number
  /** a signed room's first signed index (see RoomState.signedFrom) */
  signedFrom?: number
}

/** A `message` forwarded by a member that is not the room's primary. */
export interface ForwardedWrite {
  roomName: string
  message: unknown
  id?: string
  /** the client that sent it to the forwarding member */
  fromPeer: string
  signature?: string
}

export interface ClusterHandlers {
  /** the rooms this root peer knows, told to a member when its channel opens */
  knownRooms: () => Promise<RoomAd[]>
  /** `more`: the list sent on the channel's opening continues in the next `rooms` frame */
  onRooms: (member: string, rooms: RoomAd[], more: boolean) => void
  onWrite: (member: string, write: ForwardedWrite) => Promise<{ messageIndex: number, duplicate: boolean }>
  onCreate: (member: string, req: { roomName: string, writerPublicKey?: string }) => Promise<RoomAd>
}

/** A member's connection, from the moment it is attached: `open` once its cluster channel is. */
interface Link {
  conn: NoiseStream
  message: Message | null
  open: boolean
  /** when it was attached, and when it last read a byte (sampled) */
  at: number
  rawRead: number
  heardAt: number
}

interface PendingRequest {
  member: string
  resolve: (result: any) => void
  reject: (err: RootPeerError) => void
  timer: NodeJS.Timeout
}

/**
 * The other root peers of this operator: dials them (MemberDialer, outside Hyperswarm's peer handling), and on each member's
 * connection, after the announcements, runs Hypercore replication of the whole store and the
 * `root-peer-cluster/v1` channel: `rooms` (the rooms the sender knows, with core keys and primaries), and
 * `request` / `response` (a forwarded write, a room to create at its rendezvous owner).
 *
 * Events: `member-connected` (key hex), `member-disconnected` (key hex), `member-error` (key hex, err).
 */
export class Cluster extends EventEmitter {
  /** every member, this root peer included, hex */
  readonly all: readonly string[]
  readonly self: string
  private readonly others: ReadonlySet<string>
  private readonly swarm: Hyperswarm
  private readonly store: () => Corestore
  private readonly handlers: ClusterHandlers
  /** members with a connection now, whether or not its channel has opened yet */
  private readonly links = new Map<string, Link>()
  private liveTimer: NodeJS.Timeout | null = null
  private readonly pending = new Map<number, PendingRequest>()
  private nextRequest = 1
  private closed = false
  private dialer: MemberDialer | null = null

  constructor (opts: { self: string, members: readonly string[], swarm: Hyperswarm, store: () => Corestore, handlers: ClusterHandlers }) {
    super()
    this.self = opts.self
    this.others = new Set(opts.members.filter(m => m !== opts.self))
    this.all = [opts.self, ...this.others].sort()
    this.swarm = opts.swarm
    this.store = opts.store
    this.handlers = opts.handlers
  }

  /** Dials every other member, and again whenever it is not connected; `announcement` is this root peer's first frame. */
  start (announcement: () => string): void {
    this.liveTimer = setInterval(() => {
      const now = Date.now()
      for (const a of this.links.values()) {
        if (a.conn.rawBytesRead !== a.rawRead) {
          a.rawRead = a.conn.rawBytesRead
          a.heardAt = now
        }
      }
    }, 500)
    this.liveTimer.unref()
    this.dialer = new MemberDialer({
      self: this.self,
      dht: this.swarm.dht,
      keyPair: this.swarm.keyPair,
      members: [...this.others],
      linked: member => this.links.has(member),
      onConnection: conn => this.attach(conn, announcement())
    })
    this.dialer.start()
  }

  isMember (key: string): boolean {
    return this.others.has(key)
  }

  /** True while the member's channel is open. */
  connected (member: string): boolean {
    return this.links.get(member)?.open === true
  }

  /** Every other member, and whether its channel is open. */
  status (): Array<{ publicKey: string, connected: boolean }> {
    return [...this.others].map(publicKey => ({ publicKey, connected: this.connected(publicKey) }))
  }

  /**
   * Takes a member's connection: writes our `announcement` (the first frame, as on every connection), reads
   * theirs, then runs replication and the cluster channel on it.
   */
  attach (conn: NoiseStream, announcement: string): void {
    const member = conn.remotePublicKey.toString('hex')
    conn.on('error', (err: Error) => this.emit('member-error', member, err))
    if (this.closed) {
      conn.destroy()
      return
    }
    const existing = this.links.get(member)
    const now = Date.now()
    if (existing !== undefined) {
      const keepNew = now - existing.at < DUPLICATE_WINDOW ? conn.isInitiator === (this.self > member) : now - existing.heardAt >= LIVE_WINDOW
      if (!keepNew) {
        conn.destroy()
        return
      }
      this.detach(member, existing)
      existing.conn.destroy()
    }
    const link: Link = { conn, message: null, open: false, at: now, rawRead: conn.rawBytesRead, heardAt: now }
    this.links.set(member, link)
    // a member that dies without closing (kill -9, a lost machine) is noticed within LINK_TIMEOUT
    conn.setKeepAlive(KEEP_ALIVE)
    conn.setTimeout(LINK_TIMEOUT)
    conn.write(announcement)
    const onfirst = (): void => {
      conn.off('data', onfirst)
      // the peer's announcement is read and dropped: from here on the stream carries Protomux
      if (this.closed || conn.destroyed) return
      try {
        this.store().replicate(conn)
      } catch (err) {
        // the store is being reopened after a storage failure: the member redials
        this.emit('member-error', member, err)
        conn.destroy()
        return
      }
      const mux = Protomux.from(conn)
      const channel = mux.createChannel({
        protocol: CLUSTER_PROTOCOL,
        onopen: () => {
          if (this.links.get(member) !== link) return
          link.open = true
          this.emit('member-connected', member)
          this.sendRooms(member).catch(err => this.emit('member-error', member, err))
        },
        // a channel the other side never opens (promote's catch-up replicates only) leaves the connection as it is
        onclose: () => { if (link.open) this.detach(member, link) }
      })
      if (channel === null) return
      link.message = channel.addMessage({ encoding: c.json, onmessage: (frame: any) => this.onFrame(member, frame) })
      channel.open()
    }
    conn.on('data', onfirst)
    conn.on('close', () => this.detach(member, link))
  }

  /** Tells every connected member about rooms this root peer is primary for. */
  announce (rooms: RoomAd[]): void {
    for (const [, link] of this.links) if (link.open) link.message!.send({ type: 'rooms', rooms })
  }

  /** Sends a request to a member; rejects with PRIMARY_UNAVAILABLE when it is not connected or goes away, and after `timeout` ms. */
  request (member: string, body: Record<string, unknown>, timeout: number): Promise<any> {
    const link = this.links.get(member)
    if (link === undefined || !link.open) return Promise.reject(RootPeerError.PRIMARY_UNAVAILABLE(member))
    const reqId = this.nextRequest++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(reqId)
        reject(RootPeerError.PRIMARY_UNAVAILABLE(member))
      }, timeout)
      this.pending.set(reqId, { member, resolve, reject, timer })
      link.message!.send({ type: 'request', reqId, ...body })
    })
  }

  /** Drops every member link (they redial): after the store was reopened, replication must start over on the new one. */
  reconnect (): void {
    for (const link of this.links.values()) link.conn.destroy()
  }

  close (): void {
    this.closed = true
    this.dialer?.close()
    if (this.liveTimer !== null) clearInterval(this.liveTimer)
    for (const [reqId, p] of this.pending) {
      clearTimeout(p.timer)
      p.reject(RootPeerError.SHUTTING_DOWN())
      this.pending.delete(reqId)
    }
    for (const link of this.links.values()) link.conn.destroy()
    this.links.clear()
  }

  /** Forgets a member's link; if its channel was open, its requests fail and `member-disconnected` is emitted. */
  private detach (member: string, link: Link): void {
    if (this.links.get(member) !== link) return
    this.links.delete(member)
    const wasOpen = link.open
    link.open = false
    if (!wasOpen) return
    for (const [reqId, p] of this.pending) {
      if (p.member !== member) continue
      clearTimeout(p.timer)
      this.pending.delete(reqId)
      p.reject(RootPeerError.PRIMARY_UNAVAILABLE(member))
    }
    if (!this.closed) this.emit('member-disconnected', member)
  }

  private async sendRooms (member: string): Promise<void> {
    const rooms = await this.handlers.knownRooms()
    const link = this.links.get(member)
    if (link?.open !== true) return
    let at = 0
    do {
      const chunk = rooms.slice(at, at + ROOMS_PER_FRAME)
      at += ROOMS_PER_FRAME
      link.message!.send(at < rooms.length ? { type: 'rooms', rooms: chunk, more: true } : { type: 'rooms', rooms: chunk })
    } while (at < rooms.length)
  }

  private onFrame (member: string, frame: any): void {
    if (this.closed || typeof frame !== 'object' || frame === null) return
    if (frame.type === 'rooms' && Array.isArray(frame.rooms)) {
      this.handlers.onRooms(member, frame.rooms.filter(isRoomAd), frame.more === true)
    } else if (frame.type === 'request' && Number.isSafeInteger(frame.reqId)) {
      this.answer(member, frame)
    } else if (frame.type === 'response') {
      const p = this.pending.get(frame.reqId)
      if (p === undefined || p.member !== member) return
      this.pending.delete(frame.reqId)
      clearTimeout(p.timer)
      if (frame.error !== undefined) p.reject(new RootPeerError(frame.error.code as ErrorCode, String(frame.error.message), frame.error.details ?? {}))
      else p.resolve(frame.result)
    }
  }

  private answer (member: string, frame: any): void {
    const reqId: number = frame.reqId
    let work: Promise<unknown>
    if (frame.op === 'write' && typeof frame.roomName === 'string' && typeof frame.fromPeer === 'string') {
      work = this.handlers.onWrite(member, { roomName: frame.roomName, message: frame.message, id: frame.id, fromPeer: frame.fromPeer, signature: frame.signature })
    } else if (frame.op === 'create' && typeof frame.roomName === 'string') {
      work = this.handlers.onCreate(member, { roomName: frame.roomName, writerPublicKey: frame.writerPublicKey })
    } else {
      work = Promise.reject(RootPeerError.BAD_FRAME(`unknown cluster request ${JSON.stringify(String(frame.op)).slice(0, 64)}`))
    }
    work.then(result => {
      this.links.get(member)?.message?.send({ type: 'response', reqId, result })
    }, err => {
      const coded = err instanceof RootPeerError ? err : RootPeerError.INTERNAL_ERROR(err)
      this.links.get(member)?.message?.send({ type: 'response', reqId, error: { code: coded.code, message: coded.message, details: coded.details } })
    })
  }
}

function isRoomAd (ad: any): ad is RoomAd {
  return typeof ad === 'object' && ad !== null && typeof ad.name === 'string' && typeof ad.key === 'string' && /^[0-9a-f]{64}$/.test(ad.key) &&
    (ad.primary === undefined || (typeof ad.primary === 'string' && /^[0-9a-f]{64}$/.test(ad.primary))) &&
    (ad.promotedFrom === undefined || (typeof ad.promotedFrom === 'string' && /^[0-9a-f]{64}$/.test(ad.promotedFrom))) &&
    (ad.length === undefined || (Number.isSafeInteger(ad.length) && ad.length >= 0)) &&
    (ad.signedFrom === undefined || (Number.isSafeInteger(ad.signedFrom) && ad.signedFrom >= 0))
}

/** The public key (hex) a root peer on `storageDir` has, from its store; the store is created when missing. */
export async function readPublicKey (storageDir: string): Promise<string> {
  const store = await openStore(storageDir)
  try {
    const { publicKey } = await store.createKeyPair(SWARM_KEY_PAIR)
    return publicKey.toString('hex')
  } finally {
    await store.close()
  }
}
