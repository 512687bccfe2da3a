import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import { byteOffset, firstHeld, horizon, prune as pruneBlocks, type RetentionPolicy } from './retention.js'
import { Room } from './room.js'
import { RoomIndex } from './room-index.js'
import type { PersistentState, RoomState } from './state-file.js'
import safetyCatch from 'safety-catch'

const OPEN_CONCURRENCY = 16

export function coreName (roomName: string, generation = 0): string {
  // '/' is not allowed in room names, so no generation's name is another room's
  return generation === 0 ? `room-${roomName}` : `room-${roomName}/${generation}`
}

interface Slot {
  room: Promise<Room>
  opened: Room | null
  pins: number
  lastUsed: number
}

export interface RoomsOptions {
  maxOpen?: number
  onBatch?: () => void
}

/** The rooms: index, counts and cores. Events: `index-recovered`, `room-loaded`, `created`, `removed`. */
export class Rooms extends EventEmitter {
  readonly maxOpen: number
  private readonly onBatch: (() => void) | null
  private readonly store: Corestore
  private index: RoomIndex | null = null
  private readonly infos = new Map<string, RoomState>()
  // open and empty rooms: least recently used first
  private readonly open = new Map<string, Slot>()
  private readonly closing = new Map<string, Promise<void>>()
  private readonly creating = new Map<string, Promise<void>>()
  private readonly empty = new Map<string, number>()
  private readonly generations = new Map<string, number>()
  private readonly signing = new Map<string, Promise<void>>()
  private waiters: Array<() => void> = []
  totalMessages = 0
  totalBytes = 0
  prunedBytes = 0
  prunedMessages = 0

  constructor (store: Corestore, { maxOpen = 256, onBatch }: RoomsOptions = {}) {
    super()
    this.store = store
    this.maxOpen = maxOpen
    this.onBatch = onBatch ?? null
  }

  /** Merges the index with the state file's rooms; resolves with how many only the index knows. */
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
      // the index, not the state file, says which rooms are signed, mirrored or promoted
      if (writerPublicKey !== undefined) info.writerPublicKey = writerPublicKey
      else delete info.writerPublicKey
      if (signedFrom !== undefined && writerPublicKey !== undefined) info.signedFrom = signedFrom
      else delete info.signedFrom
      if (generation !== undefined) info.generation = generation
      else delete info.generation
      if (key !== undefined && primary !== undefined) {
        info.coreKey = key
        info.primary = primary
      } else {
        delete info.primary
      }
      if (promotedFrom !== undefined) info.promotedFrom = promotedFrom
      else delete info.promotedFrom
    }
    // a state file from before the room index: its rooms are added to the index
    const missing = savedRooms.filter(r => !indexed.has(r.name))
    if (missing.length > 0) await this.index.append(missing.map(r => ({ name: r.name, createdAt: r.createdAt })))

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

  /** Creates a room unless it exists; with `writerPublicKey` (checked by the caller) it becomes signed. */
  async register (name: string, writerPublicKey?: string, signedFrom?: number): Promise<RoomState> {
    if (!this.infos.has(name)) await this.create(name, writerPublicKey)
    const info = this.infos.get(name)!
    this.noteUse(name)
    if (writerPublicKey !== undefined && info.writerPublicKey === undefined) await this.sign(info, writerPublicKey, signedFrom)
    return info
  }

  async waitForSigning (name: string): Promise<void> {
    await this.signing.get(name)
  }

  private async sign (info: RoomState, writerPublicKey: string, given?: number): Promise<void> {
    const slot = this.open.get(info.name)
    const room = slot === undefined ? null : await slot.room.catch(() => null)
    if (info.writerPublicKey !== undefined) return await this.signing.get(info.name)
    // no await from here to the key being set: what is queued is below signedFrom, what follows is checked
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

  /** Records a room mirrored from another member's core `key`; false when the name has another core. */
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

  /** Moves a room to the core `key` of the member that took it over (`primary` undefined: this root peer). */
  async move (name: string, key: string, primary: string | undefined, promotedFrom: string): Promise<void> {
    const info = this.infos.get(name)!
    await this.index!.append({ name, createdAt: info.createdAt, writerPublicKey: info.writerPublicKey, signedFrom: info.writerPublicKey !== undefined ? info.signedFrom : undefined, key, primary, promotedFrom })
    info.coreKey = key
    info.promotedFrom = promotedFrom
    if (primary === undefined) delete info.primary
    else info.primary = primary
    const slot = this.open.get(name)
    if (slot !== undefined && slot.pins === 0) this.evict(name, slot)
  }

  async coreKey (name: string): Promise<string | null> {
    const info = this.infos.get(name)
    if (info === undefined) return null
    if (info.coreKey !== undefined) return info.coreKey
    const room = await this.get(name)
    if (room !== null) this.release(room)
    return info.coreKey ?? null
  }

  recordMirrored (name: string, length: number, byteLength: number): void {
    const info = this.infos.get(name)
    if (info === undefined || length <= info.messageCount) return
    this.totalMessages += length - info.messageCount
    this.totalBytes += byteLength - info.byteLength
    info.messageCount = length
    info.byteLength = byteLength
    info.lastActivity = Date.now()
    this.emit('grown', name)
  }

  async prune (name: string, policy: RetentionPolicy, now = Date.now()): Promise<{ messages: number, bytes: number }> {
    const room = await this.get(name)
    if (room === null) return { messages: 0, bytes: 0 }
    try {
      const info = room.info
      const first = info.firstIndex ?? 0
      const to = await horizon(room.core, first, policy, now)
      if (to <= first) return { messages: 0, bytes: 0 }
      const bytes = await pruneBlocks(room.core, first, to)
      room.forgetIdsBelow(to)
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

  /** Opens a room (creating it with `create`) and pins it until `release`; null for an unknown room. */
  async get (name: string, { create = false } = {}): Promise<Room | null> {
    if (!this.infos.has(name)) {
      if (!create) return null
      await this.create(name)
    }
    this.noteUse(name)
    let slot = this.open.get(name)
    while (slot === undefined) {
      if (this.open.size + this.closing.size < this.maxOpen) {
        const opened: Slot = { room: this.openRoom(name), opened: null, pins: 0, lastUsed: 0 }
        slot = opened
        this.open.set(name, slot)
        opened.room.then(room => { opened.opened = room }, () => {
          if (this.open.get(name) === opened) this.open.delete(name)
          this.wake()
        })
        break
      }
      // every slot is taken: close the least recently used idle room, or wait for a release
      this.evictOne()
      await new Promise<void>(resolve => this.waiters.push(resolve))
      slot = this.open.get(name)
    }
    this.open.delete(name)
    this.open.set(name, slot)
    slot.pins++
    slot.lastUsed = Date.now()
    try {
      return await slot.room
    } catch (err) {
      slot.pins--
      throw err
    }
  }

  /** Pins a room whose core is open already, as `get` does but without waiting; null when it is not open. */
  getIfOpen (name: string): Room | null {
    const slot = this.open.get(name)
    if (slot === undefined || slot.opened === null) return null
    this.open.delete(name)
    this.open.set(name, slot)
    slot.pins++
    slot.lastUsed = Date.now()
    return slot.opened
  }

  release (room: Room): void {
    const slot = this.open.get(room.name)
    if (slot === undefined) return
    slot.pins--
    slot.lastUsed = Date.now()
    if (slot.pins === 0 && this.waiters.length > 0) this.evictOne()
  }

  closeIdle (idle: number): void {
    const before = Date.now() - idle
    for (const [name, slot] of this.open) {
      if (slot.pins === 0 && slot.lastUsed < before) this.evict(name, slot)
    }
  }

  recordAppend (room: Room, bytes: number): void {
    this.empty.delete(room.name)
    room.info.messageCount = room.length
    room.info.byteLength += bytes
    room.info.lastActivity = Date.now()
    this.totalMessages++
    this.totalBytes += bytes
    this.emit('grown', room.name)
  }

  get emptyCount (): number {
    return this.empty.size
  }

  /** Forgets a room and clears its blocks; false while it is in use (pinned, being created or signed). */
  async remove (name: string, { clear = !this.empty.has(name) } = {}): Promise<boolean> {
    const info = this.infos.get(name)
    if (info === undefined || this.creating.has(name) || this.signing.has(name)) return false
    const slot = this.open.get(name)
    if (slot !== undefined) {
      if (slot.pins > 0) return false
      this.evict(name, slot)
    }
    this.infos.delete(name)
    this.empty.delete(name)
    this.totalMessages -= info.messageCount
    this.totalBytes -= info.byteLength - (info.prunedBytes ?? 0)
    const mine = info.primary === undefined
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

  async removeEmpty (): Promise<string | null> {
    for (const name of this.empty.keys()) {
      if ((this.open.get(name)?.pins ?? 0) > 0 || this.creating.has(name)) continue
      if (await this.remove(name)) return name
    }
    return null
  }

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

  * openRooms (): IterableIterator<Room> {
    for (const slot of this.open.values()) if (slot.opened !== null) yield slot.opened
  }

  get openCount (): number {
    return this.open.size + this.closing.size
  }

  snapshot (rootPeerCreatedAt: number): PersistentState {
    const rooms: Record<string, RoomState> = {}
    // defineProperty: a room named __proto__ must stay an own key, not reach the prototype
    for (const [name, info] of this.infos) Object.defineProperty(rooms, name, { value: { ...info }, enumerable: true })
    return { rooms, totalMessages: this.totalMessages, rootPeerCreatedAt, lastSaved: Date.now() }
  }

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

  private evictOne (): boolean {
    for (const [name, slot] of this.open) {
      if (slot.pins === 0) {
        this.evict(name, slot)
        return true
      }
    }
    return false
  }

  private evict (name: string, slot: Slot): void {
    this.open.delete(name)
    const closed = slot.room.then(room => room.close(), safetyCatch).finally(() => {
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

  private coreOf (info: RoomState): Hypercore {
    return info.primary === undefined ? this.store.get({ name: coreName(info.name, info.generation) }) : this.store.get({ key: Buffer.from(info.coreKey!, 'hex') })
  }

  private noteUse (name: string): void {
    if (!this.empty.delete(name)) return
    this.empty.set(name, Date.now())
  }
}

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
