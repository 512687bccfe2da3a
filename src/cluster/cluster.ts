import { EventEmitter } from 'node:events'
import Corestore from 'corestore'
import type Hyperswarm from 'hyperswarm'
import type { NoiseStream } from 'hyperswarm'
import ProtomuxRPC from 'protomux-rpc'
import safetyCatch from 'safety-catch'
import { RootPeerError } from 'root-peer-client/protocol'
import { openStore } from '../storage/data-dir-lock.js'
import { MemberDialer } from './member-dial.js'
import { requests, roomsEvent, type CreateRequest, type ForwardedWrite, type ReadPage, type ReadRequest, type Requests, type RoomAd, type WriteResult } from './messages.js'

export type { ForwardedWrite, RoomAd } from './messages.js'

/** The members' Protomux channel: protomux-rpc, messages in messages.ts (docs/cluster.md). */
export const CLUSTER_PROTOCOL = 'root-peer-cluster/v2'
/** a dead member's link (kill -9, a lost machine) goes within LINK_TIMEOUT: until then Hypercore may wait on it */
const KEEP_ALIVE = 1000
const LINK_TIMEOUT = 3000
const DUPLICATE_WINDOW = 2000
const LIVE_WINDOW = 3000
/** a write of a few MiB can reset a connection */
const ROOMS_PER_FRAME = 256
const LINK_LOST = new Set(['CHANNEL_CLOSED', 'CHANNEL_DESTROYED', 'TIMEOUT_EXCEEDED'])

export const SWARM_KEY_PAIR = 'root-peer-swarm'

export interface ClusterHandlers {
  knownRooms: () => Promise<RoomAd[]>
  onRooms: (member: string, rooms: RoomAd[], more: boolean) => void
  onWrite: (member: string, write: ForwardedWrite) => Promise<WriteResult>
  onCreate: (member: string, req: CreateRequest) => Promise<RoomAd>
  onRead: (member: string, req: ReadRequest) => Promise<ReadPage>
  /** the link's replication stream is up (the control log's wakeup rides on it) */
  onReplicate?: (stream: unknown) => void
}

interface Link {
  conn: NoiseStream
  rpc: ProtomuxRPC | null
  open: boolean
  attachedAt: number
  rawRead: number
  heardAt: number
  /** this member's whole `rooms` list has been sent on the link: a later `rooms` cannot end it early */
  listed: boolean
  /** rooms to tell the member once its list is sent, by name */
  pending: Map<string, RoomAd>
}

/**
 * The links to the other members: Hypercore replication of the whole store and the cluster channel on each.
 * Events: `member-connected` (key hex), `member-disconnected` (key hex), `member-error` (key hex, err).
 */
export class Cluster extends EventEmitter {
  readonly all: readonly string[]
  readonly self: string
  private readonly others: ReadonlySet<string>
  private readonly swarm: Hyperswarm
  private readonly store: () => Corestore
  private readonly handlers: ClusterHandlers
  private readonly links = new Map<string, Link>()
  /** when each member not linked now was last heard from (its link's last read) */
  private readonly lastHeard = new Map<string, number>()
  private liveTimer: NodeJS.Timeout | null = null
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

  connected (member: string): boolean {
    return this.links.get(member)?.open === true
  }

  /** When `member` was last heard from: now while it is linked; null when never, since this member started. */
  heardAt (member: string): number | null {
    if (this.connected(member)) return Date.now()
    return this.lastHeard.get(member) ?? null
  }

  status (): Array<{ publicKey: string, connected: boolean }> {
    return [...this.others].map(publicKey => ({ publicKey, connected: this.connected(publicKey) }))
  }

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
      // two dials at once: both sides keep the greater key's; a later one replaces only a link gone silent
      const keepNew = now - existing.attachedAt < DUPLICATE_WINDOW ? conn.isInitiator === (this.self > member) : now - existing.heardAt >= LIVE_WINDOW
      if (!keepNew) {
        conn.destroy()
        return
      }
      this.detach(member, existing)
      existing.conn.destroy()
    }
    const link: Link = { conn, rpc: null, open: false, attachedAt: now, rawRead: conn.rawBytesRead, heardAt: now, listed: false, pending: new Map() }
    this.links.set(member, link)
    // a member that dies without closing (kill -9, a lost machine) is noticed within LINK_TIMEOUT
    conn.setKeepAlive(KEEP_ALIVE)
    conn.setTimeout(LINK_TIMEOUT)
    conn.write(announcement)
    const onfirst = (): void => {
      conn.off('data', onfirst)
      // the member's announcement is dropped: from here on the stream carries Protomux
      if (this.closed || conn.destroyed) return
      try {
        const stream = this.store().replicate(conn)
        this.handlers.onReplicate?.(stream)
        link.rpc = this.channel(member, link)
      } catch (err) {
        // e.g. the store is being reopened after a storage failure: the member redials
        this.emit('member-error', member, err)
        conn.destroy()
      }
    }
    conn.on('data', onfirst)
    conn.on('close', () => this.detach(member, link))
  }

  /** The members whose channel is open. */
  linked (): string[] {
    return [...this.links].filter(([, link]) => link.open).map(([member]) => member)
  }

  announce (rooms: RoomAd[]): void {
    for (const member of this.linked()) this.tell(member, rooms)
  }

  /**
   * Sends `rooms` to `member` as a `rooms` event of its own, after this member's whole list: one that came first would
   * end the list early at the receiver (its write fence waits for the list's last frame), so until then they wait.
   */
  tell (member: string, rooms: RoomAd[]): void {
    const link = this.links.get(member)
    if (link?.open !== true || rooms.length === 0) return
    if (link.listed) this.send(link, rooms, false)
    else for (const ad of rooms) link.pending.set(ad.name, ad)
  }

  /** PRIMARY_UNAVAILABLE when the member is not connected, goes away, or does not answer in time. */
  async request<M extends keyof Requests> (member: string, method: M, value: Requests[M][0], timeout: number): Promise<Requests[M][1]> {
    const link = this.links.get(member)
    if (link?.open !== true) throw RootPeerError.PRIMARY_UNAVAILABLE(member)
    let reply: Requests[M][1] | RootPeerError
    try {
      reply = await link.rpc!.request(method, value, { ...requests[method], timeout })
    } catch (err) {
      throw this.refusal(member, err)
    }
    if (reply instanceof RootPeerError) throw reply
    return reply
  }

  /** Drops every member link (they redial), so that replication starts over on a reopened store. */
  reconnect (): void {
    for (const link of this.links.values()) link.conn.destroy()
  }

  close (): void {
    this.closed = true
    this.dialer?.close()
    if (this.liveTimer !== null) clearInterval(this.liveTimer)
    for (const [member, link] of this.links) {
      this.detach(member, link)
      link.conn.destroy()
    }
  }

  private channel (member: string, link: Link): ProtomuxRPC {
    const rpc = new ProtomuxRPC(link.conn, { protocol: CLUSTER_PROTOCOL })
    rpc.respond('write', requests.write, write => this.answer(() => this.handlers.onWrite(member, write)))
    rpc.respond('create', requests.create, req => this.answer(() => this.handlers.onCreate(member, req)))
    rpc.respond('read', requests.read, req => this.answer(() => this.handlers.onRead(member, req)))
    rpc.respond('rooms', roomsEvent, list => { if (!this.closed) this.handlers.onRooms(member, list.rooms, list.more) })
    rpc.on('open', () => {
      if (this.links.get(member) !== link) return
      link.open = true
      this.emit('member-connected', member)
      this.sendRooms(member).catch(err => this.emit('member-error', member, err))
    })
    // a channel never opened (promote's catch-up, another version) leaves the connection as it is
    rpc.on('close', () => { if (link.open) this.detach(member, link) })
    return rpc
  }

  private detach (member: string, link: Link): void {
    if (this.links.get(member) !== link) return
    this.links.delete(member)
    const wasOpen = link.open
    link.open = false
    if (!wasOpen) return
    this.lastHeard.set(member, link.heardAt)
    link.rpc!.destroy(this.closed ? RootPeerError.SHUTTING_DOWN() : RootPeerError.PRIMARY_UNAVAILABLE(member))
    if (!this.closed) this.emit('member-disconnected', member)
  }

  private async sendRooms (member: string): Promise<void> {
    const rooms = await this.handlers.knownRooms()
    const link = this.links.get(member)
    if (link?.open !== true) return
    this.send(link, rooms, true)
    link.listed = true
    const pending = [...link.pending.values()]
    link.pending.clear()
    if (pending.length > 0) this.send(link, pending, false)
  }

  /** `list`: the frames are one list (`more` on all but the last); else each frame stands alone. */
  private send (link: Link, rooms: RoomAd[], list: boolean): void {
    let at = 0
    do {
      const chunk = rooms.slice(at, at + ROOMS_PER_FRAME)
      at += ROOMS_PER_FRAME
      link.rpc!.event('rooms', { rooms: chunk, more: list && at < rooms.length }, roomsEvent)
    } while (at < rooms.length)
  }

  /** A refusal is sent as a value: protomux-rpc would carry only its message. */
  private async answer<T> (work: () => Promise<T>): Promise<T | RootPeerError> {
    if (this.closed) return RootPeerError.SHUTTING_DOWN()
    try {
      return await work()
    } catch (err) {
      return err instanceof RootPeerError ? err : RootPeerError.INTERNAL_ERROR(err)
    }
  }

  private refusal (member: string, err: unknown): RootPeerError {
    safetyCatch(err)
    if (err instanceof RootPeerError) return err
    if (this.closed) return RootPeerError.SHUTTING_DOWN()
    const code = (err as { code?: unknown }).code
    return typeof code === 'string' && LINK_LOST.has(code) ? RootPeerError.PRIMARY_UNAVAILABLE(member) : RootPeerError.INTERNAL_ERROR(err)
  }
}

/** The public key (hex) of the root peer on `storageDir`; its store is created when missing. */
export async function readPublicKey (storageDir: string): Promise<string> {
  const store = await openStore(storageDir)
  try {
    const { publicKey } = await store.createKeyPair(SWARM_KEY_PAIR)
    return publicKey.toString('hex')
  } finally {
    await store.close()
  }
}
