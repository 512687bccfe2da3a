import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import Hypercore from 'hypercore'
import { RootPeerError } from 'root-peer-client/protocol'
import safetyCatch from 'safety-catch'
import { coreName, type Rooms } from '../storage/rooms.js'
import type { RoomState } from '../storage/state-file.js'
import type { Cluster } from './cluster.js'
import { ControlLog, type Decision } from './control-log.js'

/** ms between looks at the members gone quiet */
const TICK = 250
/** ms between evaluations of the same gone members' rooms (each lists every room) */
const EVALUATE_EVERY = 2000
const COPY_BATCH = 256
/** ms the new primary waits for its copy to hold what the live members hold, before it continues the room */
const CATCH_UP = 3000
/** ms a member linked to a majority again waits for the members' writer cores of the log before it writes anyway */
const SYNC_TIMEOUT = 2000

export interface ControlLogStatus {
  /** decisions in the log, final or not */
  entries: number
  final: number
  indexer: boolean
  /** linked to a majority, and the log read since: this member may write to its rooms */
  writable: boolean
}

export interface FailoverOptions {
  links: Cluster
  store: () => Corestore
  rooms: () => Rooms
  keyPair: { publicKey: Buffer, secretKey: Buffer }
  failoverAfter: number
  /** per member, the blocks of the room it has told this one's replication it holds */
  holders: (room: string) => Map<string, number>
  unfollow: (room: string) => Promise<void>
  /** whether this member is one of the room's holders (REPLICAS) */
  holds: (room: string) => boolean
  /** a decision about a room held elsewhere: its new primary, for forwarding */
  moved: (room: string, core: string, primary: string, from: string) => void
  follow: (room: string, key: string, primary: string, length: number) => void
  /** tells the linked members of an own room (a RoomAd with `promotedFrom`) */
  announce: (room: string) => Promise<void>
}

/**
 * Failover without an operator (docs/cluster.md): when a room's primary has been unreachable for FAILOVER_AFTER, the
 * surviving member with the longest copy claims the room in the control log; once the claim is final it continues
 * the room as `promote` does, and every member follows. The fence: a member writes and acks only while it is linked
 * to a majority and has read the log since, and never into a core a final decision took from it.
 * Events: `room-claimed`, `room-taken-over`, `room-followed`, `failover-error` (err), `log-error` (err).
 */
export class Failover extends EventEmitter {
  readonly log: ControlLog
  private readonly opts: FailoverOptions
  private readonly links: Cluster
  private readonly self: string
  private readonly startedAt = Date.now()
  /** the log was read (and its decisions applied) since this member was last linked to a majority */
  private synced = false
  private syncing: Promise<void> | null = null
  private readonly claimed = new Map<string, number>()
  /** cores of this member's own that final decisions took over (hex keys): nothing more in them is acked */
  private readonly demoted = new Set<string>()
  private readonly applying = new Map<string, Promise<void>>()
  private readonly waiters = new Set<() => void>()
  private timer: NodeJS.Timeout | null = null
  private evaluating = false
  private evaluated = { at: 0, gone: '' }
  private closed = false

  constructor (opts: FailoverOptions) {
    super()
    this.opts = opts
    this.links = opts.links
    this.self = opts.links.self
    this.log = new ControlLog({ store: opts.store(), keyPair: opts.keyPair, members: opts.links.all })
    this.log.on('decision', (d: Decision) => this.onDecision(d))
    this.log.on('log-error', err => this.emit('log-error', err))
  }

  get majority (): number {
    return Math.floor(this.links.all.length / 2) + 1
  }

  quorate (): boolean {
    return this.links.linked().length + 1 >= this.majority
  }

  /** This member may append to its rooms: linked to a majority, and it has read the log since. */
  writable (): boolean {
    return this.log.opened && this.synced && this.quorate() && !this.closed
  }

  /** An append to `core` may be acked: the member is writable and no final decision took the core from it. */
  mayAck (core: Hypercore): boolean {
    return this.writable() && !this.demoted.has(core.key.toString('hex'))
  }

  /** Resolves once writable, or PRIMARY_UNAVAILABLE after `timeout` ms. */
  async waitWritable (timeout: number): Promise<void> {
    if (this.writable()) return
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(done)
        reject(RootPeerError.PRIMARY_UNAVAILABLE(this.self, 'this root peer is not linked to a majority of the cluster, or has not read the control log since it was; it takes writes again once it has'))
      }, timeout)
      const done = (): void => {
        clearTimeout(timer)
        resolve()
      }
      this.waiters.add(done)
    })
  }

  status (): ControlLogStatus {
    const { length, signed } = this.log.lengths
    return { entries: length, final: signed, indexer: this.log.isIndexer, writable: this.writable() }
  }

  attach (stream: unknown): void {
    this.log.attach(stream)
  }

  async start (): Promise<void> {
    this.links.on('member-connected', () => this.resync())
    this.links.on('member-disconnected', () => {
      if (!this.quorate()) this.synced = false
    })
    await this.log.ready()
    if (this.closed) return
    this.timer = setInterval(() => this.tick(), TICK)
    this.timer.unref()
    this.resync()
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.timer !== null) clearInterval(this.timer)
    for (const done of this.waiters) done()
    this.waiters.clear()
    await this.syncing?.catch(safetyCatch)
    while (this.applying.size > 0) await Promise.allSettled([...this.applying.values()])
    await this.log.close()
  }

  /** Linked to a majority (again): reads the log before this member writes. */
  private resync (): void {
    if (this.syncing !== null || this.synced || !this.log.opened || this.closed || !this.quorate()) return
    this.syncing = (async () => {
      await this.log.catchUp(this.links.linked(), SYNC_TIMEOUT)
      while (this.applying.size > 0) await Promise.allSettled([...this.applying.values()])
      if (!this.quorate() || this.closed) return
      this.synced = true
      for (const done of this.waiters) done()
      this.waiters.clear()
    })().catch(err => { this.emit('failover-error', err) }).finally(() => {
      // not synced: tried again on the next tick or link
      this.syncing = null
    })
  }

  private tick (): void {
    if (!this.synced) this.resync()
    if (this.evaluating || !this.writable() || this.opts.failoverAfter <= 0) return
    const now = Date.now()
    const since = (m: string): number => now - (this.links.heardAt(m) ?? this.startedAt)
    const gone = this.links.all.filter(m => m !== this.self && !this.links.connected(m) && since(m) >= this.opts.failoverAfter)
    if (gone.length === 0) return
    const key = gone.join()
    if (key === this.evaluated.gone && now - this.evaluated.at < EVALUATE_EVERY) return
    this.evaluated = { at: now, gone: key }
    // gone for twice FAILOVER_AFTER: a room no one claimed (the members saw each other's copies differently) is claimed by any
    const late = new Set(gone.filter(m => since(m) >= 2 * this.opts.failoverAfter))
    this.evaluating = true
    this.evaluate(new Set(gone), late).catch(err => { this.emit('failover-error', err) }).finally(() => { this.evaluating = false })
  }

  /** Claims each room of a gone primary of which this member holds the longest copy (ties: the lowest key). */
  private async evaluate (gone: Set<string>, late: Set<string>): Promise<void> {
    const rooms = this.opts.rooms()
    const theirs: RoomState[] = []
    for await (const info of rooms.list()) if (info.primary !== undefined && gone.has(info.primary)) theirs.push(info)
    for (const info of theirs) {
      if (this.closed || !this.writable()) return
      const epoch = this.log.epoch(info.name) + 1
      if ((this.claimed.get(info.name) ?? 0) >= epoch) continue
      const held = (await rooms.lookup(info.name))?.messageCount ?? 0
      const lengths = this.opts.holders(info.name)
      const better = this.links.linked().some(m => {
        if (gone.has(m)) return false
        const length = lengths.get(m) ?? -1
        return length > held || (length === held && m < this.self)
      })
      if (better && !late.has(info.primary!)) continue
      this.claimed.set(info.name, epoch)
      const core = await ownCoreKey(this.opts.store(), info.name, epoch)
      await this.log.claim({ room: info.name, epoch, fromLength: held, core, from: info.primary! })
      this.emit('room-claimed', { roomName: info.name, epoch, fromLength: held, from: info.primary })
    }
  }

  /** Decisions of a room are applied in order; each applies the room's latest (a restart folds them all again). */
  private onDecision (d: Decision): void {
    const previous = this.applying.get(d.room) ?? Promise.resolve()
    const next: Promise<void> = previous.then(async () => await this.apply(d.room)).catch(err => { this.emit('failover-error', err) }).finally(() => {
      if (this.applying.get(d.room) === next) this.applying.delete(d.room)
    })
    this.applying.set(d.room, next)
  }

  private async apply (room: string): Promise<void> {
    const d = this.log.decision(room)
    if (d === undefined || this.closed) return
    const rooms = this.opts.rooms()
    const info = await rooms.lookup(room)
    if (info === undefined) {
      // a room held elsewhere (REPLICAS): noted, for forwarding; nothing is stored here
      if (!this.opts.holds(room)) {
        this.opts.moved(room, d.core, d.primary, d.from)
        return
      }
      // a room this member has not heard of yet: it mirrors the new primary's core
      if (d.primary !== this.self && await rooms.mirror(room, d.core, d.primary)) this.opts.follow(room, d.core, d.primary, d.fromLength)
      return
    }
    // applied already (a restart folds every decision again), or an older one than the room's
    if ((info.epoch ?? 0) >= d.epoch) return
    const key = await rooms.coreKey(room)
    if (d.primary === this.self) {
      if (info.primary === undefined && key === d.core) {
        await rooms.move(room, d.core, undefined, d.from, { generation: d.epoch, epoch: d.epoch })
        return
      }
      await this.takeOver(d, info)
      return
    }
    if (info.primary === d.primary && key === d.core) {
      // followed already, through the new primary's announcement: the epoch is noted
      await rooms.move(room, d.core, d.primary, d.from, { epoch: d.epoch })
      return
    }
    // this member was the room's primary: nothing more in its core is acked
    if (info.primary === undefined && key !== null) this.demoted.add(key)
    await this.opts.unfollow(room)
    await rooms.move(room, d.core, d.primary, d.from, { epoch: d.epoch })
    this.opts.follow(room, d.core, d.primary, d.fromLength)
    this.emit('room-followed', { roomName: room, primary: d.primary, epoch: d.epoch, from: d.from })
  }

  /** As `promote` does: a core of its own with the same records, so every acked index keeps its meaning. */
  private async takeOver (d: Decision, info: RoomState): Promise<void> {
    const store = this.opts.store()
    const rooms = this.opts.rooms()
    const mirrored = store.get({ key: Buffer.from(info.coreKey!, 'hex') })
    const own = store.get({ name: coreName(d.room, d.epoch) })
    try {
      await Promise.all([mirrored.ready(), own.ready()])
      if (own.key.toString('hex') !== d.core) throw new Error(`room ${d.room}: the claimed core is not this member's core of epoch ${d.epoch}`)
      // a live member may hold blocks this one lacks (told by its replication): fetched before the copy
      const lengths = this.opts.holders(d.room)
      const target = Math.max(d.fromLength, ...this.links.linked().filter(m => m !== d.from).map(m => lengths.get(m) ?? 0))
      mirrored.download({ start: 0, end: -1 })
      const deadline = Date.now() + CATCH_UP
      while (mirrored.contiguousLength < target && Date.now() < deadline && !this.closed) await new Promise(resolve => setTimeout(resolve, 20))
      const upTo = mirrored.contiguousLength
      if (upTo < d.fromLength) throw new Error(`room ${d.room}: holds ${upTo} blocks, claimed ${d.fromLength}`)
      for (let at = own.length; at < upTo; at += COPY_BATCH) {
        const blocks: Buffer[] = []
        for (let i = at; i < Math.min(upTo, at + COPY_BATCH); i++) blocks.push((await mirrored.get(i, { wait: false }))!)
        await own.append(blocks)
      }
      await rooms.recordMirrored(d.room, own.length, own.byteLength)
      await this.opts.unfollow(d.room)
      await own.close()
      await rooms.move(d.room, d.core, undefined, d.from, { generation: d.epoch, epoch: d.epoch })
      this.emit('room-taken-over', { roomName: d.room, from: d.from, epoch: d.epoch, messages: upTo })
    } finally {
      await Promise.allSettled([mirrored.close(), own.close()])
    }
    await this.opts.announce(d.room)
  }
}

/** The key of this member's core of `room` at `epoch` (named as an own room's core of that generation). */
async function ownCoreKey (store: Corestore, room: string, epoch: number): Promise<string> {
  const { publicKey } = await store.createKeyPair(coreName(room, epoch))
  return Hypercore.key({ version: 1, signers: [{ publicKey }] }).toString('hex')
}
