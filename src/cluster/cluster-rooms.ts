import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import type Hyperswarm from 'hyperswarm'
import type { NoiseStream } from 'hyperswarm'
import { Cluster, type ForwardedWrite, type RoomAd } from './cluster.js'
import { RootPeerError } from '../protocol/errors.js'
import { MirrorWaits, Mirrors } from './mirror.js'
import { validateRoomName } from '../protocol/protocol.js'
import { rendezvousOwner } from './rendezvous.js'
import { keyMatchesName } from '../protocol/room-auth.js'
import type { Rooms } from '../storage/rooms.js'

/** How long a request waits for its member's link to come (back) before PRIMARY_UNAVAILABLE: a link is replaced now and then. */
const LINK_WAIT = 2000

export interface ClusterRoomsOptions {
  self: string
  /** the other members' public keys, hex */
  members: readonly string[]
  swarm: Hyperswarm
  /** the current store and rooms: both are replaced when storage recovers from a failure */
  store: () => Corestore
  rooms: () => Rooms
  maxRooms: number
  /** mirrored rooms followed actively at once, and ms after which an idle one is put to sleep (see Mirrors) */
  maxOpenRooms: number
  roomIdleTimeout: number
  minMirrors: number
  /** ms a write waits for its mirrors, a request for its member, and a write here for the first member to be heard from */
  timeout: number
  /** this root peer's `root-peer-announcement`, the first frame on a member's connection as on every connection */
  announcement: () => string
  /** stores a message another member forwarded to this root peer, the room's primary */
  onWrite: (write: ForwardedWrite) => Promise<{ messageIndex: number, duplicate: boolean }>
}

/**
 * Which member is primary for which room: tells the other members about the rooms this root peer knows,
 * mirrors the rooms of the others, creates new rooms at their rendezvous owner, hands a room over when
 * a member was promoted over its primary, and holds writes to this root peer's own rooms until it has
 * heard from another member since it started (`writable`): a primary that was replaced while it was
 * down learns so before it appends again.
 *
 * Events: `member-connected` (key), `member-disconnected` (key), `member-error` (key, err),
 * `room-mirrored` ({ roomName, primary }), `room-conflict` ({ roomName, primary, key }), `cluster-error` ({ member, err }).
 */
export class ClusterRooms extends EventEmitter {
  /** the member links and the cluster channel */
  readonly links: Cluster
  private readonly opts: ClusterRoomsOptions
  private readonly waits: MirrorWaits
  private mirrors: Mirrors | null = null
  private readonly pending = new Set<Promise<unknown>>()
  /** set once the rooms of some other member were heard and applied since start */
  private heard = false
  /** per member, its `rooms` frames applied one after the other */
  private readonly applying = new Map<string, Promise<void>>()
  private readonly heardWaiters = new Set<() => void>()
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
        onCreate: (member, req) => this.create(req.roomName, req.writerPublicKey)
      }
    })
    cluster.on('member-connected', member => this.emit('member-connected', member))
    cluster.on('member-disconnected', member => {
      this.mirrors?.wakeFrom(member)
      this.emit('member-disconnected', member)
    })
    cluster.on('member-error', (member, err) => this.emit('member-error', member, err))
    // requests waiting for a member's link listen for it
    cluster.setMaxListeners(0)
    this.links = cluster
    this.waits = new MirrorWaits(key => cluster.isMember(key))
  }

  get self (): string {
    return this.links.self
  }

  /** Follows the mirrored rooms and dials the other members. */
  start (): void {
    this.follow(this.opts.store())
    this.watch(this.opts.rooms())
    this.links.start(this.opts.announcement)
  }

  /** Takes a member's connection (see Cluster.attach). */
  attach (conn: NoiseStream): void {
    this.links.attach(conn, this.opts.announcement())
  }

  isMember (key: string): boolean {
    return this.links.isMember(key)
  }

  /** Every other member, and whether it is connected. */
  status (): Array<{ publicKey: string, connected: boolean }> {
    return this.links.status()
  }

  /** Per primary: what this member, its mirror, has not stored yet. */
  mirrorLag (): Map<string, { blocks: number, seconds: number }> {
    return this.mirrors?.lag() ?? new Map()
  }

  /** Mirrored rooms, and those followed actively now. */
  mirroredRooms (): { followed: number, active: number } {
    return { followed: this.mirrors?.size ?? 0, active: this.mirrors?.activeCount ?? 0 }
  }

  /** Per mirror: blocks of `own` cores (this root peer's, open now) it has not stored yet. */
  replicaLag (own: Iterable<Hypercore>): Map<string, number> {
    return Mirrors.behind(own, key => this.links.isMember(key))
  }

  /** Resolves once MIN_MIRRORS members have stored `core` up to `length`; NOT_REPLICATED after the timeout. */
  waitForMirrors (core: Hypercore, length: number): Promise<void> {
    return this.waits.wait(core, length, this.opts.minMirrors, this.opts.timeout)
  }

  /**
   * Resolves when this root peer may append to its own rooms: once it has heard the rooms of another member
   * since it started (and handed over any room a member was promoted over it for). PRIMARY_UNAVAILABLE after the timeout.
   */
  writable (): Promise<void> | null {
    if (this.heard) return null
    return new Promise((resolve, reject) => {
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
  }

  /**
   * A new room, named here: created at its rendezvous owner and mirrored here (nothing to do when this root peer
   * is the owner). `admit` checks this root peer's own caps before a member is asked.
   */
  async place (roomName: string, writerPublicKey: string | undefined, admit: () => void): Promise<void> {
    const owner = rendezvousOwner(roomName, this.links.all)
    if (owner === this.self) return
    admit()
    const ad = await this.request(owner, { op: 'create', roomName, writerPublicKey }, this.opts.timeout) as RoomAd
    await this.adopt(owner, ad)
    if (!this.opts.rooms().has(roomName)) throw RootPeerError.PRIMARY_UNAVAILABLE(owner)
  }

  /** A mirrored room's key, learned here: its primary signs the room (it alone knows where the signed history starts), and this mirror follows. */
  async sign (primary: string, roomName: string, writerPublicKey: string): Promise<void> {
    const ad = await this.request(primary, { op: 'create', roomName, writerPublicKey }, this.opts.timeout) as RoomAd
    await this.adopt(primary, ad)
  }

  /** Sends a write to the room's primary; resolves with the primary's index. PRIMARY_UNAVAILABLE when it does not answer within `timeout`. */
  async forward (primary: string, write: ForwardedWrite, timeout: number): Promise<{ messageIndex: number, duplicate: boolean }> {
    return await this.request(primary, { op: 'write', ...write }, timeout)
  }

  /** A request to a member, once its link is up (waiting up to LINK_WAIT for it). */
  private async request (member: string, body: Record<string, unknown>, timeout: number): Promise<any> {
    if (!this.links.connected(member)) {
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
    return await this.links.request(member, body, timeout)
  }

  /** Follows the mirrored rooms again, in the store reopened after a storage failure, and restarts the member links on it. */
  resume (): void {
    this.follow(this.opts.store())
    this.watch(this.opts.rooms())
    this.links.reconnect()
  }

  /** Stops following mirrored rooms (before the store is closed for a reopen). */
  async pause (): Promise<void> {
    const mirrors = this.mirrors
    this.mirrors = null
    if (mirrors !== null) await mirrors.close()
  }

  async close (): Promise<void> {
    this.closed = true
    this.waits.close()
    this.links.close()
    while (this.pending.size > 0) await Promise.allSettled([...this.pending])
    await this.pause()
  }

  /** Follows every mirrored room in `store`. */
  private follow (store: Corestore): void {
    const mirrors = new Mirrors(store, {
      maxOpen: this.opts.maxOpenRooms,
      idleTimeout: this.opts.roomIdleTimeout,
      onProgress: (name, held, byteLength) => this.opts.rooms().mirrored(name, held, byteLength)
    })
    this.mirrors = mirrors
    // asleep: a room is woken when its core grows, or when a member says it holds more (its `rooms` on connecting)
    for (const info of this.opts.rooms().list()) {
      if (info.primary !== undefined) mirrors.follow(info.name, info.coreKey!, info.primary, info.messageCount, false)
    }
  }

  /** A room created here is told to every member, which mirrors it. */
  private watch (rooms: Rooms): void {
    rooms.on('created', (name: string) => {
      this.track(this.adOf(name).then(ad => { if (ad !== null) this.links.announce([ad]) }), null)
    })
  }

  /**
   * Every room this root peer knows, with its core key and (for a mirrored one) its primary: a member learns
   * the rooms of a primary it cannot reach from the others, and a hand-over (`promotedFrom`) from any of them.
   */
  private async ads (): Promise<RoomAd[]> {
    const ads: RoomAd[] = []
    for (const info of [...this.opts.rooms().list()]) {
      const ad = await this.adOf(info.name)
      if (ad !== null) ads.push(ad)
    }
    return ads
  }

  private async adOf (name: string): Promise<RoomAd | null> {
    const rooms = this.opts.rooms()
    const key = await rooms.coreKey(name)
    const info = rooms.info(name)
    if (key === null || info === undefined) return null
    const ad: RoomAd = { name, key }
    if (info.primary !== undefined) ad.primary = info.primary
    if (info.writerPublicKey !== undefined) ad.writerPublicKey = info.writerPublicKey
    if (info.signedFrom !== undefined) ad.signedFrom = info.signedFrom
    if (info.promotedFrom !== undefined) ad.promotedFrom = info.promotedFrom
    ad.length = info.messageCount
    return ad
  }

  /**
   * A member's `rooms` frame: each room adopted. What it says of rooms this root peer is primary for (a hand-over)
   * is applied in order, frame after frame; once the last frame of the first whole list since start is (its last
   * frame has no `more`), this root peer is writable. The other rooms are mirrored meanwhile, not waited for.
   */
  private onRooms (member: string, ads: RoomAd[], more: boolean): void {
    const rooms = this.opts.rooms()
    const own: RoomAd[] = []
    for (const ad of ads) {
      const info = rooms.info(ad.name)
      if (info !== undefined && info.primary === undefined) own.push(ad)
      else this.track(this.adopt(member, ad), member)
    }
    const applied = (this.applying.get(member) ?? Promise.resolve()).then(async () => {
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

  /** Mirrors a room another member told us about (unless this root peer holds that name in another core). */
  private async adopt (from: string, ad: RoomAd): Promise<void> {
    const cluster = this.links
    const rooms = this.opts.rooms()
    const primary = ad.primary ?? from
    if (primary === this.self || !cluster.isMember(primary) || this.closed) return
    validateRoomName(ad.name)
    if (ad.writerPublicKey !== undefined && !keyMatchesName(ad.writerPublicKey, ad.name)) return
    const known = rooms.info(ad.name)
    // news older than ours: the room was taken over from that member already
    if (known !== undefined && known.promotedFrom === primary) return
    const promotedOver = ad.promotedFrom !== undefined && (known?.primary === ad.promotedFrom || (ad.promotedFrom === this.self && known?.primary === undefined))
    if (known !== undefined && promotedOver && known.coreKey !== ad.key) {
      // the old primary is gone for good and `primary` took its rooms over: follow the new core
      // (this root peer too, when it is that old primary started again: it hands the room over and stops writing to it)
      await this.mirrors?.unfollow(ad.name)
      await rooms.move(ad.name, ad.key, primary, ad.promotedFrom!)
      this.mirrors?.follow(ad.name, ad.key, primary, 0, true)
      this.emit('room-mirrored', { roomName: ad.name, primary })
      return
    }
    if (!(await rooms.mirror(ad.name, ad.key, primary, ad.writerPublicKey, ad.signedFrom))) {
      this.emit('room-conflict', { roomName: ad.name, primary, key: ad.key })
      return
    }
    this.mirrors?.follow(ad.name, ad.key, primary, known?.messageCount ?? 0, known === undefined)
    if (ad.length !== undefined) this.mirrors?.hint(ad.name, ad.length)
    if (known === undefined) this.emit('room-mirrored', { roomName: ad.name, primary })
  }

  /** A member asks this root peer, the rendezvous owner, to create a room (idempotent). */
  private async create (roomName: string, writerPublicKey?: string): Promise<RoomAd> {
    validateRoomName(roomName)
    if (writerPublicKey !== undefined && !keyMatchesName(writerPublicKey, roomName)) throw RootPeerError.BAD_ROOM_KEY()
    const rooms = this.opts.rooms()
    if (!rooms.has(roomName) && rooms.size >= this.opts.maxRooms) throw RootPeerError.TOO_MANY_ROOMS(this.opts.maxRooms)
    await rooms.register(roomName, writerPublicKey)
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
