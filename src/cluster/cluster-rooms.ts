import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import type Hyperswarm from 'hyperswarm'
import type { NoiseStream } from 'hyperswarm'
import { Cluster } from './cluster.js'
import type { ForwardedWrite, ReadPage, ReadRequest, Requests, RoomAd, WriteResult } from './messages.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { MirrorWaits, Mirrors } from './mirror.js'
import { Failover } from './failover.js'
import { validateRoomName } from '../protocol/protocol.js'
import { rendezvousHolders, rendezvousOwner } from './rendezvous.js'
import { keyMatchesName } from 'root-peer-client/protocol'
import type { Rooms } from '../storage/rooms.js'

/** How long a request waits for its member's link to come (back): a link is replaced now and then. */
const LINK_WAIT = 2000
/** ms: a mirrored copy that grew is told to the other members at most this often (all rooms that grew, at once) */
const REPORT_DELAY = 100

export interface ClusterRoomsOptions {
  self: string
  members: readonly string[]
  swarm: Hyperswarm
  /** both are replaced when storage recovers from a failure */
  store: () => Corestore
  rooms: () => Rooms
  maxRooms: number
  maxOpenRooms: number
  roomIdleTimeout: number
  minMirrors: number
  /** members that hold each room (REPLICAS); the members' count or more: every member holds every room */
  replicas: number
  /** ms: for the mirrors, for a member's answer, and for the first member to be heard from */
  timeout: number
  /** ms; 0: no automatic failover and no control log (also with fewer than three members) */
  failoverAfter: number
  announcement: () => string
  onWrite: (write: ForwardedWrite) => Promise<WriteResult>
  onRead: (read: ReadRequest) => Promise<ReadPage>
}

/** A room this member holds no copy of (REPLICAS below the members), as its holders told of it. */
export interface RemoteRoom {
  primary: string
  key: string
  writerPublicKey?: string
  promotedFrom?: string
  length: number
}

/**
 * Which member is primary for which room (docs/cluster.md). Events: `member-connected`,
 * `member-disconnected`, `member-error`, `room-mirrored`, `room-conflict`, `cluster-error`; with failover (failover.ts)
 * `room-claimed`, `room-taken-over`, `room-followed`, `failover-error`, `log-error`.
 */
export class ClusterRooms extends EventEmitter {
  readonly links: Cluster
  /** null: a cluster of two, or FAILOVER_AFTER=0 */
  readonly failover: Failover | null = null
  private readonly opts: ClusterRoomsOptions
  private readonly waits: MirrorWaits
  private mirrors: Mirrors | null = null
  private readonly pending = new Set<Promise<unknown>>()
  private heard = false
  private readonly applying = new Map<string, Promise<void>>()
  private readonly heardWaiters = new Set<() => void>()
  /** mirrored rooms whose copy here grew since the last report */
  private readonly grown = new Set<string>()
  /** rooms held by other members only, by name: where to forward their writes and reads */
  private readonly remote = new Map<string, RemoteRoom>()
  private reportTimer: NodeJS.Timeout | null = null
  private closed = false

  constructor (opts: ClusterRoomsOptions) {
    super()
    this.opts = opts
    const cluster = new Cluster({
      self: opts.self,
      members: opts.members,
      swarm: opts.swarm,
      store: opts.store,
      handlers: {
        knownRooms: () => this.ads(),
        onRooms: (member, ads, more) => this.onRooms(member, ads, more),
        onWrite: (member, write) => opts.onWrite(write),
        onCreate: (member, req) => this.create(req.roomName, req.writerPublicKey),
        onRead: (member, req) => opts.onRead(req),
        onReplicate: stream => this.failover?.attach(stream)
      }
    })
    cluster.on('member-connected', member => this.emit('member-connected', member))
    cluster.on('member-disconnected', member => {
      this.mirrors?.wakeFrom(member)
      this.emit('member-disconnected', member)
    })
    cluster.on('member-error', (member, err) => this.emit('member-error', member, err))
    cluster.setMaxListeners(0) // each request waiting for a member's link listens
    this.links = cluster
    this.waits = new MirrorWaits(key => cluster.isMember(key))
    // a majority must survive the loss of a member: three members at least
    if (opts.failoverAfter > 0 && cluster.all.length >= 3) {
      const failover = new Failover({
        links: cluster,
        store: opts.store,
        rooms: opts.rooms,
        keyPair: opts.swarm.keyPair,
        failoverAfter: opts.failoverAfter,
        holders: name => this.mirrors?.holders(name) ?? new Map(),
        holds: name => this.holds(name),
        moved: (name, key, primary, from) => this.moved(name, key, primary, from),
        unfollow: async name => { await this.mirrors?.unfollow(name) },
        follow: (name, key, primary, length) => {
          this.mirrors?.follow(name, key, primary, 0, true)
          this.mirrors?.hint(name, key, length)
        },
        announce: async name => {
          const ad = await this.adOf(name)
          if (ad !== null) this.links.announce([ad])
        }
      })
      for (const event of ['room-claimed', 'room-taken-over', 'room-followed', 'failover-error', 'log-error']) failover.on(event, (e: unknown) => this.emit(event, e))
      this.failover = failover
    }
  }

  get self (): string {
    return this.links.self
  }

  start (): void {
    this.follow(this.opts.store())
    this.watch(this.opts.rooms())
    this.links.start(this.opts.announcement)
    if (this.failover !== null) this.track(this.failover.start(), null)
  }

  attach (conn: NoiseStream): void {
    this.links.attach(conn, this.opts.announcement())
  }

  isMember (key: string): boolean {
    return this.links.isMember(key)
  }

  status (): Array<{ publicKey: string, connected: boolean }> {
    return this.links.status()
  }

  mirrorLag (): Map<string, { blocks: number, seconds: number }> {
    return this.mirrors?.lag() ?? new Map()
  }

  mirroredRooms (): { followed: number, active: number } {
    return { followed: this.mirrors?.size ?? 0, active: this.mirrors?.activeCount ?? 0 }
  }

  replicaLag (own: Iterable<Hypercore>): Map<string, number> {
    return Mirrors.behind(own, key => this.links.isMember(key))
  }

  async waitForMirrors (core: Hypercore, length: number): Promise<void> {
    await this.waits.wait(core, length, this.opts.minMirrors, this.opts.timeout)
    // the fence: a primary cut off from the majority, or whose room a final decision moved, acks nothing
    if (this.failover !== null && !this.failover.mayAck(core)) {
      throw RootPeerError.PRIMARY_UNAVAILABLE(this.self, 'this root peer is cut off from the majority of the cluster, or no longer the room\'s primary: the message is not acked; resend it')
    }
  }

  /** Waits until another member was heard from since start (null: it was), or PRIMARY_UNAVAILABLE. */
  waitWritable (): Promise<void> | null {
    const failover = this.failover
    // with failover: linked to a majority, and the control log read since
    const fenced = failover === null || failover.writable() ? null : (): Promise<void> => failover.waitWritable(this.opts.timeout)
    if (this.heard) return fenced === null ? null : fenced()
    const heard = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.heardWaiters.delete(done)
        reject(RootPeerError.PRIMARY_UNAVAILABLE(this.self, 'this root peer has not heard from any other cluster member since it started; it takes writes to its rooms once it has'))
      }, this.opts.timeout)
      const done = (): void => {
        clearTimeout(timer)
        resolve()
      }
      this.heardWaiters.add(done)
    })
    return fenced === null ? heard : heard.then(fenced)
  }

  /** Whether this member keeps a copy of the room: one of its REPLICAS holders by rendezvous hashing. */
  holds (roomName: string): boolean {
    const all = this.links.all
    return this.opts.replicas >= all.length || rendezvousHolders(roomName, all, this.opts.replicas).includes(this.self)
  }

  /** The members that hold the room (REPLICAS of them), by rendezvous hashing; its first primary first. */
  holders (roomName: string): string[] {
    return rendezvousHolders(roomName, this.links.all, this.opts.replicas)
  }

  /** A room held by other members only, as they told of it; undefined when this member holds it or never heard of it. */
  remoteRoom (roomName: string): RemoteRoom | undefined {
    return this.remote.get(roomName)
  }

  /**
   * Creates a new room at its rendezvous owner and mirrors it if this member is one of its holders; `admit` checks the
   * caps first (`held`: whether the room would take a place here; a client creating rooms is charged either way).
   */
  async place (roomName: string, writerPublicKey: string | undefined, admit: (held: boolean) => void): Promise<void> {
    const owner = rendezvousOwner(roomName, this.links.all)
    if (owner === this.self) return
    admit(this.holds(roomName))
    const ad = await this.request(owner, 'create', { roomName, writerPublicKey }, this.opts.timeout)
    await this.adopt(owner, ad)
    if (await this.opts.rooms().lookup(roomName) === undefined && !this.remote.has(roomName)) throw RootPeerError.PRIMARY_UNAVAILABLE(owner)
  }

  /**
   * A page of a room this member holds no copy of, read at one of its holders (the primary first, then the others
   * linked): UNKNOWN_ROOM only when every one asked has no such room (a holder still catching up may not have it yet);
   * PRIMARY_UNAVAILABLE when none answers. The holder bounds the page by `maxBytes` as a page read here is.
   */
  async read (req: ReadRequest): Promise<ReadPage> {
    // a room not heard of yet (this member just started, say) is asked of its holders: they know whether it exists
    const primary = this.remote.get(req.roomName)?.primary
    const holders = rendezvousHolders(req.roomName, this.links.all, this.opts.replicas).filter(m => m !== this.self)
    const order = primary === undefined ? holders : [primary, ...holders.filter(m => m !== primary)]
    const linked = order.filter(m => this.links.connected(m))
    let last: unknown = null
    for (const member of linked.length > 0 ? linked : order.slice(0, 1)) {
      try {
        const page = await this.request(member, 'read', req, this.opts.timeout)
        const bytes = page.entries.reduce((sum, e) => sum + e.byteLength + 1, 0)
        // a member's page is no bigger than asked: what a client is sent from here is bounded here
        if (page.entries.length > req.limit || (page.entries.length > 1 && bytes > req.maxBytes + 1)) throw RootPeerError.INTERNAL_ERROR(new Error(`member ${member} answered a read with more than a page`))
        return page
      } catch (err) {
        const code = (err as RootPeerError).code
        if (code === 'UNAUTHORIZED') throw err
        // another answer than "no such room" wins: the client retries rather than reads an empty room
        if (code !== 'UNKNOWN_ROOM' || last === null) last = err
      }
    }
    throw last ?? RootPeerError.PRIMARY_UNAVAILABLE(order[0] ?? this.self)
  }

  /** A mirrored room's key, learned here: its primary signs the room (it knows where signing starts). */
  async sign (primary: string, roomName: string, writerPublicKey: string): Promise<void> {
    const ad = await this.request(primary, 'create', { roomName, writerPublicKey }, this.opts.timeout)
    await this.adopt(primary, ad)
  }

  async forward (primary: string, write: ForwardedWrite, timeout: number): Promise<WriteResult> {
    return await this.request(primary, 'write', write, timeout)
  }

  private async request<M extends keyof Requests> (member: string, method: M, value: Requests[M][0], timeout: number): Promise<Requests[M][1]> {
    // with failover, a member gone for longer than a link's replacement takes is not waited for: its rooms move
    const heard = this.links.heardAt(member)
    const gone = this.failover !== null && heard !== null && Date.now() - heard > LINK_WAIT
    if (!this.links.connected(member) && !gone) {
      await new Promise<void>(resolve => {
        const done = (): void => {
          clearTimeout(timer)
          this.links.off('member-connected', onConnected)
          resolve()
        }
        const onConnected = (m: string): void => { if (m === member) done() }
        const timer = setTimeout(done, Math.min(LINK_WAIT, timeout))
        this.links.on('member-connected', onConnected)
      })
    }
    return await this.links.request(member, method, value, timeout)
  }

  /** After a storage failure: follows the mirrored rooms in the reopened store; restarts the links. */
  resume (): void {
    this.follow(this.opts.store())
    this.watch(this.opts.rooms())
    this.links.reconnect()
  }

  async pause (): Promise<void> {
    if (this.reportTimer !== null) clearTimeout(this.reportTimer)
    this.reportTimer = null
    this.grown.clear()
    const mirrors = this.mirrors
    this.mirrors = null
    if (mirrors !== null) await mirrors.close()
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.reportTimer !== null) clearTimeout(this.reportTimer)
    this.waits.close()
    this.links.close()
    while (this.pending.size > 0) await Promise.allSettled([...this.pending])
    await this.failover?.close()
    await this.pause()
  }

  private follow (store: Corestore): void {
    const mirrors = new Mirrors(store, {
      maxOpen: this.opts.maxOpenRooms,
      idleTimeout: this.opts.roomIdleTimeout,
      onProgress: (name, held, byteLength) => {
        this.track(this.opts.rooms().recordMirrored(name, held, byteLength), null)
        this.grew(name)
      }
    })
    this.mirrors = mirrors
    // asleep until its core grows, or a member's `rooms` says it holds more
    this.track((async () => {
      for await (const info of this.opts.rooms().list()) {
        if (info.primary !== undefined && this.mirrors === mirrors) mirrors.follow(info.name, info.coreKey!, info.primary, info.messageCount, false)
      }
    })(), null)
  }

  private grew (name: string): void {
    this.grown.add(name)
    if (this.reportTimer !== null || this.closed) return
    this.reportTimer = setTimeout(() => {
      this.reportTimer = null
      this.track(this.report(), null)
    }, REPORT_DELAY)
  }

  /**
   * Tells the other members (not the primary) how much of each mirrored room that grew here this member holds, unless
   * the member's replication of the room says it holds as much: a mirror that is behind (asleep, or not told by the
   * primary) wakes the room and fetches the blocks from whichever member has them, so every acked block is soon on
   * every live member, not only on the primary and the mirrors that acked it.
   */
  private async report (): Promise<void> {
    const names = [...this.grown]
    this.grown.clear()
    const ads: RoomAd[] = []
    for (const name of names) {
      const ad = await this.adOf(name)
      if (ad?.primary !== undefined) ads.push(ad)
    }
    if (this.closed) return
    for (const member of this.links.linked()) {
      const holds = (ad: RoomAd): number => this.mirrors?.holders(ad.name).get(member) ?? -1
      this.links.tell(member, ads.filter(ad => ad.primary !== member && holds(ad) < ad.length!))
    }
  }

  private watch (rooms: Rooms): void {
    rooms.on('created', (name: string) => {
      this.track(this.announceCreated(rooms, name), null)
    })
    // a room of this member's own signed: the mirrors are told at once, not with its next growth
    rooms.on('signed', (name: string) => {
      this.track(this.announceSigned(name), null)
    })
  }

  /** A new room of this member's own: its core is made (opened once) before the members are told to follow it. */
  private async announceCreated (rooms: Rooms, name: string): Promise<void> {
    const room = await rooms.get(name)
    if (room === null) return
    rooms.release(room)
    const ad = await this.adOf(name)
    if (ad !== null) this.links.announce([ad])
  }

  private async announceSigned (name: string): Promise<void> {
    const ad = await this.adOf(name)
    if (ad !== null && ad.primary === undefined) this.links.announce([ad])
  }

  private async ads (): Promise<RoomAd[]> {
    const ads: RoomAd[] = []
    for await (const info of this.opts.rooms().list()) {
      const ad = await this.adOf(info.name)
      if (ad !== null) ads.push(ad)
    }
    return ads
  }

  private async adOf (name: string): Promise<RoomAd | null> {
    const rooms = this.opts.rooms()
    const key = await rooms.coreKey(name)
    const info = await rooms.lookup(name)
    if (key === null || info === undefined) return null
    const ad: RoomAd = { name, key }
    if (info.primary !== undefined) ad.primary = info.primary
    if (info.writerPublicKey !== undefined) ad.writerPublicKey = info.writerPublicKey
    if (info.signedFrom !== undefined) ad.signedFrom = info.signedFrom
    if (info.promotedFrom !== undefined) ad.promotedFrom = info.promotedFrom
    ad.length = info.messageCount
    return ad
  }

  /** What `rooms` says of this root peer's own rooms (a hand-over) is applied in order, before writes. */
  private onRooms (member: string, ads: RoomAd[], more: boolean): void {
    const rooms = this.opts.rooms()
    const applied = (this.applying.get(member) ?? Promise.resolve()).then(async () => {
      const own: RoomAd[] = []
      for (const ad of ads) {
        const info = await rooms.lookup(ad.name)
        if (info !== undefined && info.primary === undefined) own.push(ad)
        else this.track(this.adopt(member, ad), member)
      }
      await Promise.all(own.map(ad => this.adopt(member, ad).catch(err => {
        this.emit('cluster-error', { member, err })
      })))
      if (more || this.heard || this.closed) return
      this.heard = true
      for (const done of this.heardWaiters) done()
      this.heardWaiters.clear()
    })
    this.applying.set(member, applied)
    this.track(applied.finally(() => { if (this.applying.get(member) === applied) this.applying.delete(member) }), member)
  }

  private async adopt (from: string, ad: RoomAd): Promise<void> {
    const cluster = this.links
    const rooms = this.opts.rooms()
    const primary = ad.primary ?? from
    if (primary === this.self || !cluster.isMember(primary) || this.closed) return
    validateRoomName(ad.name)
    if (ad.writerPublicKey !== undefined && !keyMatchesName(ad.writerPublicKey, ad.name)) return
    const known = await rooms.lookup(ad.name)
    if (known === undefined && !this.holds(ad.name)) {
      this.learn(ad, primary)
      return
    }
    // news older than ours: the room was taken over from that member already
    if (known !== undefined && known.promotedFrom === primary) return
    const promotedOver = ad.promotedFrom !== undefined && (known?.primary === ad.promotedFrom || (ad.promotedFrom === this.self && known?.primary === undefined))
    if (known !== undefined && promotedOver && await rooms.coreKey(ad.name) !== ad.key) {
      // `primary` took the room over from a gone member (maybe this one, restarted): follow its core
      await this.mirrors?.unfollow(ad.name)
      await rooms.move(ad.name, ad.key, primary, ad.promotedFrom!)
      this.mirrors?.follow(ad.name, ad.key, primary, 0, true)
      if (ad.length !== undefined) this.mirrors?.hint(ad.name, ad.key, ad.length)
      this.emit('room-mirrored', { roomName: ad.name, primary })
      return
    }
    if (!(await rooms.mirror(ad.name, ad.key, primary, ad.writerPublicKey, ad.signedFrom))) {
      this.emit('room-conflict', { roomName: ad.name, primary, key: ad.key })
      return
    }
    this.mirrors?.follow(ad.name, ad.key, primary, known?.messageCount ?? 0, known === undefined)
    // the member holds `length` blocks (it may be another mirror): a copy here that is shorter catches up
    if (ad.length !== undefined) this.mirrors?.hint(ad.name, ad.key, ad.length)
    if (known === undefined) this.emit('room-mirrored', { roomName: ad.name, primary })
  }

  /** A room held elsewhere, as a member tells of it: its primary, key and length (news older than ours is dropped). */
  private learn (ad: RoomAd, primary: string): void {
    const known = this.remote.get(ad.name)
    if (known !== undefined && known.promotedFrom === primary) return
    const moved = known !== undefined && known.key !== ad.key
    if (moved && ad.promotedFrom === undefined) return
    const room: RemoteRoom = { primary, key: ad.key, length: Math.max(ad.length ?? 0, moved ? 0 : known?.length ?? 0) }
    const writerPublicKey = ad.writerPublicKey ?? known?.writerPublicKey
    if (writerPublicKey !== undefined) room.writerPublicKey = writerPublicKey
    const promotedFrom = ad.promotedFrom ?? known?.promotedFrom
    if (promotedFrom !== undefined) room.promotedFrom = promotedFrom
    this.remote.set(ad.name, room)
  }

  /** A final failover decision of a room held elsewhere: its writes and reads go to the new primary. */
  private moved (name: string, key: string, primary: string, from: string): void {
    const known = this.remote.get(name)
    const room: RemoteRoom = { ...known, primary, key, promotedFrom: from, length: known?.length ?? 0 }
    this.remote.set(name, room)
  }

  private async create (roomName: string, writerPublicKey?: string): Promise<RoomAd> {
    validateRoomName(roomName)
    if (writerPublicKey !== undefined && !keyMatchesName(writerPublicKey, roomName)) throw RootPeerError.BAD_ROOM_KEY()
    const rooms = this.opts.rooms()
    if (await rooms.lookup(roomName) === undefined && rooms.size >= this.opts.maxRooms) throw RootPeerError.TOO_MANY_ROOMS(this.opts.maxRooms)
    await (await rooms.register(roomName, writerPublicKey)).stored
    const ad = await this.adOf(roomName)
    if (ad === null) throw RootPeerError.INTERNAL_ERROR(new Error('room without a core key'))
    if (ad.primary === undefined) ad.primary = this.self
    return ad
  }

  private track (promise: Promise<unknown>, member: string | null): void {
    const p: Promise<unknown> = promise.catch(err => this.emit('cluster-error', { member, err })).finally(() => this.pending.delete(p))
    this.pending.add(p)
  }
}
