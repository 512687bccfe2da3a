import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import { byteOffset, firstHeld, horizon, prune as pruneBlocks, type RetentionPolicy } from './retention.js'
import { Room } from './room.js'
import { RoomIndex } from './room-index.js'
import type { PersistentState, RoomState } from './state-file.js'
import safetyCatch from 'safety-catch'

const OPEN_CONCURRENCY = 16

/** The Corestore name of a room's core, as the seed names it (a room removed and registered again gets a new one). */
export function coreName (roomName: string, generation = 0): string {
  // '/' is not allowed in room names, so no generation's name is another room's
  return generation === 0 ? `room-${roomName}` : `room-${roomName}/${generation}`
}

/** An open room: its core's session, and how many handlers use it now (a held room is never closed). */
interface Slot {
  room: Promise<Room>
  /** the room once its core is ready */
  opened: Room | null
  holds: number
  lastUsed: number
}

export interface RoomsOptions {
  /** cores open at once; the least recently used idle room is closed to open another */
  maxOpen?: number
  /** called before each core append (a group-committed batch) */
  onBatch?: () => void
}

/**
 * Every room the root peer knows. Room names are kept in an index core inside the store, appended
 * before a new room is first used, so the state file is never the only record of which rooms exist.
 * A room's core is open only while it is used: at most `maxOpen` at once, least recently used
 * closed first, never one that is held (appends or reads in flight). Callers `get` a room, which
 * holds it, and `release` it when their work on it is done.
 *
 * Rooms that never stored a message are not permanent: `removeEmpty` takes the one unused longest out
 * (to make room at MAX_ROOMS), `expireEmpty` those unused for a while.
 *
 * Events: `index-recovered` ({ name }) for rooms found only in the index, `room-loaded` ({ name }) as `load`
 * reconciles each room with its core, `created` (name) for a room this root peer created, `removed` (name).
 */
export class Rooms extends EventEmitter {
  readonly maxOpen: number
  private readonly onBatch: (() => void) | null
  private readonly store: Corestore
  private index: RoomIndex | null = null
  private readonly infos = new Map<string, RoomState>()
  /** open rooms, least recently used first */
  private readonly open = new Map<string, Slot>()
  private readonly closing = new Map<string, Promise<void>>()
  private readonly creating = new Map<string, Promise<void>>()
  /** rooms of this root peer's own with no message stored, least recently used first, and when they were last used */
  private readonly empty = new Map<string, number>()
  /** the generation a removed room's name gets when it is registered again */
  private readonly generations = new Map<string, number>()
  /** rooms being signed: acks of their messages wait until the index says so */
  private readonly signing = new Map<string, Promise<void>>()
  private waiters: Array<() => void> = []
  totalMessages = 0
  /** message bytes held, all rooms (pruned blocks not counted) */
  totalBytes = 0
  /** pruned since the process started */
  prunedBytes = 0
  prunedMessages = 0

  constructor (store: Corestore, { maxOpen = 256, onBatch }: RoomsOptions = {}) {
    super()
    this.store = store
    this.maxOpen = maxOpen
    this.onBatch = onBatch ?? null
  }

  /**
   * Opens the index, merges it with the state file's rooms, and reconciles every room's count with its core
   * (without `openAll`, only the rooms opened later are: an admin command that needs one room).
   * Resolves with the number of rooms found in the index but not in `saved`.
   */
  async load (saved: PersistentState | null, { openAll = true } = {}): Promise<number> {
    this.index = new RoomIndex(this.store)
    const { rooms: indexed, removed, generations } = await this.index.read()
    for (const [name, generation] of generations) this.generations.set(name, generation)
    // a room the index says was removed stays removed, whatever an older state file says
    const savedRooms = saved === null ? [] : Object.values(saved.rooms).filter(r => !removed.has(r.name))
    for (const r of savedRooms) this.infos.set(r.name, { ...r })
    let recovered = 0
    for (const [name, { createdAt, writerPublicKey, key, primary, promotedFrom, signedFrom, generation }] of indexed) {
      let info = this.infos.get(name)
      if (info === undefined) {
        info = { name, messageCount: 0, createdAt, lastActivity: createdAt, byteLength: 0 }
        this.infos.set(name, info)
        recovered++
        if (saved !== null) this.emit('index-recovered', { name })
      }
      // the index, not the state file, says which rooms are signed
      if (writerPublicKey !== undefined) info.writerPublicKey = writerPublicKey
      else delete info.writerPublicKey
      if (signedFrom !== undefined && writerPublicKey !== undefined) info.signedFrom = signedFrom
      else delete info.signedFrom
      if (generation !== undefined) info.generation = generation
      else delete info.generation
      // and which rooms are mirrored from another cluster member, by core key
      if (key !== undefined && primary !== undefined) {
        info.coreKey = key
        info.primary = primary
      } else {
        delete info.primary
      }
      // the member this room was taken over from (`root-peer promote`), kept by mirrors too so any member can tell it on
      if (promotedFrom !== undefined) info.promotedFrom = promotedFrom
      else delete info.promotedFrom
    }
    // rooms a state file of the seed's knows but the index does not yet: add them
    const missing = savedRooms.filter(r => !indexed.has(r.name))
    if (missing.length > 0) await this.index.append(missing.map(r => ({ name: r.name, createdAt: r.createdAt })))

    // the cores are the truth: each is opened, its length read, and closed again, a few at a time
    const names = openAll ? [...this.infos.keys()] : []
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < names.length) {
        const name = names[next++]
        const info = this.infos.get(name)!
        const core = this.coreOf(info)
        await core.ready()
        info.coreKey = core.key.toString('hex')
        info.messageCount = info.primary === undefined ? core.length : core.contiguousLength
        info.byteLength = core.byteLength
        if (info.primary === undefined) await reconcilePruned(core, info)
        await core.close()
        this.emit('room-loaded', { name })
      }
    }
    await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, names.length) }, worker))
    this.totalMessages = 0
    this.totalBytes = 0
    const empty: RoomState[] = []
    for (const info of this.infos.values()) {
      this.totalMessages += info.messageCount
      this.totalBytes += info.byteLength - (info.prunedBytes ?? 0)
      if (info.messageCount === 0 && info.primary === undefined) empty.push(info)
    }
    empty.sort((a, b) => a.lastActivity - b.lastActivity)
    for (const info of empty) this.empty.set(info.name, info.lastActivity)
    return recovered
  }

  has (name: string): boolean {
    return this.infos.has(name)
  }

  get size (): number {
    return this.infos.size
  }

  info (name: string): RoomState | undefined {
    return this.infos.get(name)
  }

  list (): IterableIterator<RoomState> {
    return this.infos.values()
  }

  /**
   * Creates a room unless it exists; returns its info. With `writerPublicKey` the room is (or becomes) a
   * signed room; the caller has checked that the key matches the name.
   */
  async register (name: string, writerPublicKey?: string, signedFrom?: number): Promise<RoomState> {
    if (!this.infos.has(name)) await this.create(name, writerPublicKey)
    const info = this.infos.get(name)!
    this.used(name)
    if (writerPublicKey !== undefined && info.writerPublicKey === undefined) await this.sign(info, writerPublicKey, signedFrom)
    return info
  }

  /** Resolves once a room being signed is signed in the index too (at once for any other room). */
  async signed (name: string): Promise<void> {
    await this.signing.get(name)
  }

  /**
   * Makes a room a signed room. Blocks stored before it (a stranger's, under the name before its members came)
   * stay below `signedFrom`, never served to members, and their ids are forgotten; from the moment the key is set,
   * every block queued is checked against it (see ChatRootPeer.onMessage), so nothing unsigned lands after.
   */
  private async sign (info: RoomState, writerPublicKey: string, given?: number): Promise<void> {
    const slot = this.open.get(info.name)
    const room = slot === undefined ? null : await slot.room.catch(() => null)
    if (info.writerPublicKey !== undefined) return await this.signing.get(info.name)
    // no await from here to the key being set: what is queued is below signedFrom, what comes after is checked
    const signedFrom = given ?? Math.max(info.messageCount, room?.nextIndex ?? 0)
    info.writerPublicKey = writerPublicKey
    if (signedFrom > 0) {
      info.signedFrom = signedFrom
      room?.forgetIds()
    }
    const done = this.index!.append({ name: info.name, createdAt: info.createdAt, writerPublicKey, signedFrom: signedFrom > 0 ? signedFrom : undefined, generation: info.generation })
    this.signing.set(info.name, done)
    try {
      await done
    } finally {
      if (this.signing.get(info.name) === done) this.signing.delete(info.name)
    }
  }

  /**
   * Records a room another cluster member is primary for, mirrored here from its core `key` (hex).
   * Resolves with false when the name is held already (by this root peer, or mirrored from another core).
   */
  async mirror (name: string, key: string, primary: string, writerPublicKey?: string, signedFrom?: number): Promise<boolean> {
    const known = this.infos.get(name)
    if (known !== undefined) {
      if (known.coreKey !== key) return false
      if (writerPublicKey !== undefined && known.writerPublicKey === undefined) await this.register(name, writerPublicKey, signedFrom ?? 0)
      return true
    }
    const now = Date.now()
    await this.index!.append({ name, createdAt: now, writerPublicKey, signedFrom: writerPublicKey !== undefined && (signedFrom ?? 0) > 0 ? signedFrom : undefined, key, primary })
    if (this.infos.has(name)) return this.infos.get(name)!.coreKey === key
    this.infos.set(name, { name, messageCount: 0, createdAt: now, lastActivity: now, byteLength: 0, coreKey: key, primary, ...(writerPublicKey === undefined ? {} : { writerPublicKey }), ...(signedFrom === undefined || signedFrom === 0 ? {} : { signedFrom }) })
    return true
  }

  /**
   * Moves a room to the core `key` (hex) of the member that took it over from `promotedFrom`: `primary`, or this
   * root peer (`primary` undefined: `root-peer promote`, after the blocks were copied into the core named for it).
   * An open session of the old core is closed when no one holds it.
   */
  async move (name: string, key: string, primary: string | undefined, promotedFrom: string): Promise<void> {
    const info = this.infos.get(name)!
    await this.index!.append({ name, createdAt: info.createdAt, writerPublicKey: info.writerPublicKey, signedFrom: info.writerPublicKey !== undefined ? info.signedFrom : undefined, key, primary, promotedFrom })
    info.coreKey = key
    info.promotedFrom = promotedFrom
    if (primary === undefined) delete info.primary
    else info.primary = primary
    const slot = this.open.get(name)
    if (slot !== undefined && slot.holds === 0) this.evict(name, slot)
  }

  /** The room's core key (hex), opening its core once when it was never opened. */
  async coreKey (name: string): Promise<string | null> {
    const info = this.infos.get(name)
    if (info === undefined) return null
    if (info.coreKey !== undefined) return info.coreKey
    const room = await this.get(name)
    if (room !== null) this.release(room)
    return info.coreKey ?? null
  }

  /** Updates a mirrored room's count to what its core holds now. */
  mirrored (name: string, length: number, byteLength: number): void {
    const info = this.infos.get(name)
    if (info === undefined || length <= info.messageCount) return
    this.totalMessages += length - info.messageCount
    this.totalBytes += byteLength - info.byteLength
    info.messageCount = length
    info.byteLength = byteLength
    info.lastActivity = Date.now()
  }

  /**
   * Clears the blocks of room `name` below the horizon `policy` gives, keeping every index; resolves with
   * what was pruned. The room is held meanwhile, so it is not closed under the prune.
   */
  async prune (name: string, policy: RetentionPolicy, now = Date.now()): Promise<{ messages: number, bytes: number }> {
    const room = await this.get(name)
    if (room === null) return { messages: 0, bytes: 0 }
    try {
      const info = room.info
      const first = info.firstIndex ?? 0
      const to = await horizon(room.core, first, policy, now)
      if (to <= first) return { messages: 0, bytes: 0 }
      const bytes = await pruneBlocks(room.core, first, to)
      info.firstIndex = to
      info.prunedBytes = (info.prunedBytes ?? 0) + bytes
      this.totalBytes -= bytes
      this.prunedBytes += bytes
      this.prunedMessages += to - first
      return { messages: to - first, bytes }
    } finally {
      this.release(room)
    }
  }

  /**
   * Opens a known room (or creates it when `create`) and holds it until `release(room)`; null for an
   * unknown room without `create`. Waits for a free slot when `maxOpen` rooms are open and all are held.
   */
  async get (name: string, { create = false } = {}): Promise<Room | null> {
    if (!this.infos.has(name)) {
      if (!create) return null
      await this.create(name)
    }
    this.used(name)
    let slot = this.open.get(name)
    while (slot === undefined) {
      if (this.open.size + this.closing.size < this.maxOpen) {
        const opened: Slot = { room: this.openRoom(name), opened: null, holds: 0, lastUsed: 0 }
        slot = opened
        this.open.set(name, slot)
        opened.room.then(room => { opened.opened = room }, () => {
          if (this.open.get(name) === opened) this.open.delete(name)
          this.wake()
        })
        break
      }
      // every slot is taken: close the least recently used idle room, or wait for a hold to end
      this.evictOne()
      await new Promise<void>(resolve => this.waiters.push(resolve))
      slot = this.open.get(name)
    }
    // most recently used last
    this.open.delete(name)
    this.open.set(name, slot)
    slot.holds++
    slot.lastUsed = Date.now()
    try {
      return await slot.room
    } catch (err) {
      slot.holds--
      throw err
    }
  }

  /** Holds a room whose core is open already (as `get` does, without waiting); null when it is not open. */
  hold (name: string): Room | null {
    const slot = this.open.get(name)
    if (slot === undefined || slot.opened === null) return null
    this.open.delete(name)
    this.open.set(name, slot)
    slot.holds++
    slot.lastUsed = Date.now()
    return slot.opened
  }

  /** Ends one hold taken by `get`; an idle room stays open until its slot is needed or it idles out. */
  release (room: Room): void {
    const slot = this.open.get(room.name)
    if (slot === undefined) return
    slot.holds--
    slot.lastUsed = Date.now()
    if (slot.holds === 0 && this.waiters.length > 0) this.evictOne()
  }

  /** Closes the rooms no one has held for `idle` ms. */
  closeIdle (idle: number): void {
    const before = Date.now() - idle
    for (const [name, slot] of this.open) {
      if (slot.holds === 0 && slot.lastUsed < before) this.evict(name, slot)
    }
  }

  /** Notes one message of `bytes` newly stored in `room`. */
  stored (room: Room, bytes: number): void {
    this.empty.delete(room.name)
    room.info.messageCount = room.length
    room.info.byteLength += bytes
    room.info.lastActivity = Date.now()
    this.totalMessages++
    this.totalBytes += bytes
  }

  /** Rooms that never stored a message. */
  get emptyCount (): number {
    return this.empty.size
  }

  /**
   * Forgets a room: the index records its removal, its core is closed and its blocks cleared; registered again,
   * it starts empty in a new core. Resolves with false when it is in use now (held, or being created).
   * `clear` (default: unless the room is known to be empty) opens its core to clear what it holds.
   */
  async remove (name: string, { clear = !this.empty.has(name) } = {}): Promise<boolean> {
    const info = this.infos.get(name)
    if (info === undefined || this.creating.has(name) || this.signing.has(name)) return false
    const slot = this.open.get(name)
    if (slot !== undefined) {
      if (slot.holds > 0) return false
      this.evict(name, slot)
    }
    this.infos.delete(name)
    this.empty.delete(name)
    this.totalMessages -= info.messageCount
    this.totalBytes -= info.byteLength - (info.prunedBytes ?? 0)
    const mine = info.primary === undefined
    // a room that held blocks comes back, if registered again, in a core of its own: the old indices are not reused
    const generation = clear && mine ? (info.generation ?? 0) + 1 : info.generation
    if (generation !== undefined) this.generations.set(name, generation)
    await this.index!.append({ name, removed: true, generation })
    if (clear && mine) {
      await this.closing.get(name)
      const core = this.coreOf(info)
      await core.ready()
      if (core.length > 0) await core.clear(0, core.length)
      await core.close()
    }
    this.emit('removed', name)
    return true
  }

  /** Removes the empty room unused longest that is not in use now; resolves with its name, or null when there is none. */
  async removeEmpty (): Promise<string | null> {
    for (const name of this.empty.keys()) {
      if ((this.open.get(name)?.holds ?? 0) > 0 || this.creating.has(name)) continue
      if (await this.remove(name)) return name
    }
    return null
  }

  /** Removes the empty rooms unused since `before` (ms); resolves with their names. */
  async expireEmpty (before: number): Promise<string[]> {
    const old: string[] = []
    for (const [name, used] of this.empty) {
      if (used >= before) break
      old.push(name)
    }
    const removed: string[] = []
    for (const name of old) if (await this.remove(name)) removed.push(name)
    return removed
  }

  /** The rooms whose core is open now (not those still opening or closing). */
  * openRooms (): IterableIterator<Room> {
    for (const slot of this.open.values()) if (slot.opened !== null) yield slot.opened
  }

  /** Rooms whose core is open now (closing ones included). */
  get openCount (): number {
    return this.open.size + this.closing.size
  }

  /** The state file's content. */
  snapshot (rootPeerCreatedAt: number): PersistentState {
    const rooms: Record<string, RoomState> = {}
    // defineProperty: a room named __proto__ must stay an own key, not reach the prototype
    for (const [name, info] of this.infos) Object.defineProperty(rooms, name, { value: { ...info }, enumerable: true })
    return { rooms, totalMessages: this.totalMessages, rootPeerCreatedAt, lastSaved: Date.now() }
  }

  /** Waits for every room's appends in flight. */
  async settled (): Promise<void> {
    const rooms = await Promise.allSettled([...this.open.values()].map(s => s.room))
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.settled() : null))
  }

  async close (): Promise<void> {
    const rooms = await Promise.allSettled([...this.open.values()].map(s => s.room))
    this.open.clear()
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.close() : null))
    await Promise.allSettled(this.closing.values())
    if (this.index !== null) await this.index.close()
  }

  /** Starts closing the least recently used room no one holds; false when every open room is held. */
  private evictOne (): boolean {
    for (const [name, slot] of this.open) {
      if (slot.holds === 0) {
        this.evict(name, slot)
        return true
      }
    }
    return false
  }

  private evict (name: string, slot: Slot): void {
    this.open.delete(name)
    // the room's dedup ids go with it; they are read back from the core when it is next opened
    const closed = slot.room.then(room => room.close(), () => {}).finally(() => {
      this.closing.delete(name)
      this.wake()
    })
    this.closing.set(name, closed)
  }

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }

  private async create (name: string, writerPublicKey?: string): Promise<void> {
    let pending = this.creating.get(name)
    if (pending === undefined) {
      pending = (async () => {
        const now = Date.now()
        // in the index before first use: an acked message's room is always recoverable
        const generation = this.generations.get(name)
        await this.index!.append({ name, createdAt: now, writerPublicKey, generation })
        this.infos.set(name, { name, messageCount: 0, createdAt: now, lastActivity: now, byteLength: 0, ...(writerPublicKey === undefined ? {} : { writerPublicKey }), ...(generation === undefined ? {} : { generation }) })
        this.empty.set(name, now)
        this.emit('created', name)
      })()
      this.creating.set(name, pending)
      pending.finally(() => this.creating.delete(name)).catch(safetyCatch)
    }
    await pending
  }

  private async openRoom (name: string): Promise<Room> {
    // a room being closed is reopened once its close is done
    const closing = this.closing.get(name)
    if (closing !== undefined) await closing
    const info = this.infos.get(name)!
    const core = this.coreOf(info)
    await core.ready()
    info.coreKey = core.key.toString('hex')
    const length = info.primary === undefined ? core.length : core.contiguousLength
    // the core is the truth: the state file may be behind after a crash
    if (length > 0) this.empty.delete(name)
    if (info.messageCount !== length || info.byteLength !== core.byteLength) {
      this.totalMessages += length - info.messageCount
      this.totalBytes += core.byteLength - info.byteLength
      info.messageCount = length
      info.byteLength = core.byteLength
    }
    return new Room(name, core, info, this.onBatch)
  }

  /** A session of the room's core: its own by name, or a mirrored one by key. */
  private coreOf (info: RoomState): Hypercore {
    return info.primary === undefined ? this.store.get({ name: coreName(info.name, info.generation) }) : this.store.get({ key: Buffer.from(info.coreKey!, 'hex') })
  }

  /** Notes that an empty room was used now, so it is the last to be removed. */
  private used (name: string): void {
    if (!this.empty.delete(name)) return
    this.empty.set(name, Date.now())
  }
}

/** Checks the pruned prefix the state file names against the core (which is the truth), and its bytes. */
async function reconcilePruned (core: Hypercore, info: RoomState): Promise<void> {
  const first = await firstHeld(core, info.firstIndex ?? 0)
  if (first === 0) {
    delete info.firstIndex
    delete info.prunedBytes
  } else if (first !== info.firstIndex || info.prunedBytes === undefined) {
    info.firstIndex = first
    info.prunedBytes = await byteOffset(core, first)
  }
}
