import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import Hypercore from 'hypercore'
import { eachConcurrently } from './concurrently.js'
import { horizon, prune as pruneBlocks, reconcilePruned, type RetentionPolicy } from './retention.js'
import { Room } from './room.js'
import { dropIds } from './id-snapshot.js'
import { RoomIndex, ops, type IndexOp, type IndexRecord, type Signer, type Totals } from './room-index.js'
import { migrateLegacy } from './legacy-index.js'
import { OpenRooms } from './open-rooms.js'
import { STATE_FILE_ROOMS, type PersistentState, type RoomState } from './state-file.js'
import safetyCatch from 'safety-catch'

const OPEN_CONCURRENCY = 16
// the rooms whose records are kept in memory besides the open ones: the most recently used
const CACHED_ROOMS = 1024
// counts of open rooms reach the index at least this often, and at the latest when their room sleeps
const FLUSH_INTERVAL = 5000
const REMEMBERED_GENERATIONS = 1024

export function coreName (roomName: string, generation = 0): string {
  // '/' is not allowed in room names, so no generation's name is another room's
  return generation === 0 ? `room-${roomName}` : `room-${roomName}/${generation}`
}

/** A room known in memory: open, in use, changed since the index had it, or recently used. */
interface Entry {
  info: RoomState
  // what the index holds for it (null: not yet written)
  saved: { messageCount: number, bytes: number, emptyAt: number | null } | null
  // the room has no messages (and is this root peer's): since when it is unused
  emptyAt: number | null
  dirty: boolean
  // the index marks it awake: its counts there may be behind its core's
  awake: boolean
  created: Promise<void>
}

export interface RoomsOptions {
  maxOpen?: number
  onBatch?: () => void
}

/**
 * The rooms: their index in the store, the records of the rooms in use, the open cores (docs/scaling.md).
 * Events: `index-recovered`, `room-loaded`, `created`, `removed`, `grown`.
 */
export class Rooms extends EventEmitter {
  private readonly onBatch: (() => void) | null
  private readonly store: Corestore
  private index: RoomIndex | null = null
  // least recently used first
  private readonly cache = new Map<string, Entry>()
  private readonly loading = new Map<string, Promise<Entry | undefined>>()
  private readonly removing = new Map<string, Promise<unknown>>()
  private readonly changed = new Set<string>()
  private readonly generations = new Map<string, number>()
  // names the index was just asked for and does not have (with the key a removed signed room left): read once
  private readonly missing = new Map<string, Signer | null>()
  private readonly cores: OpenRooms
  private readonly signing = new Map<string, Promise<void>>()
  private saved: Totals = { rooms: 0, messages: 0, bytes: 0, empty: 0 }
  private timer: NodeJS.Timeout | null = null
  size = 0
  emptyCount = 0
  totalMessages = 0
  totalBytes = 0
  prunedBytes = 0
  prunedMessages = 0

  constructor (store: Corestore, { maxOpen = 256, onBatch }: RoomsOptions = {}) {
    super()
    this.store = store
    this.cores = new OpenRooms(maxOpen, name => {
      // asleep: its counts are written and its awake mark taken out, in one commit
      if (this.cache.get(name)?.awake !== true) return
      this.changed.add(name)
      this.index?.commit().catch(safetyCatch)
    })
    this.onBatch = onBatch ?? null
  }

  /**
   * Reads the totals, and the rooms that were awake when the process stopped (their counts are checked against
   * their cores); with `openAll`, every room. A store from before the index is migrated once. Resolves with how
   * many rooms only the legacy index knew.
   */
  async load (saved: PersistentState | null, { openAll = false } = {}): Promise<number> {
    this.index = new RoomIndex(this.store, () => this.beforeFlush())
    let totals = await this.index.totals()
    let recovered = 0
    if (totals === null) {
      ({ totals, recovered } = await migrateLegacy(this.store, saved, {
        coreOf: info => this.coreOf(info),
        onLoaded: name => this.emit('room-loaded', { name }),
        onRecovered: name => this.emit('index-recovered', { name })
      }))
    }
    this.saved = totals
    this.size = this.saved.rooms
    this.emptyCount = this.saved.empty
    this.totalMessages = this.saved.messages
    this.totalBytes = this.saved.bytes
    const names = openAll ? await this.allNames() : await this.index.awake()
    await this.reconcile(names)
    this.timer = setInterval(() => { if (this.changed.size > 0) this.index!.commit().catch(safetyCatch) }, FLUSH_INTERVAL)
    this.timer.unref()
    return recovered
  }

  /** The room's record, from memory or the index; undefined for a room that does not exist. */
  async lookup (name: string): Promise<RoomState | undefined> {
    return (await this.entry(name))?.info
  }

  /** The key of a signed room, live or removed: a name once signed here never becomes unsigned. */
  async writerKey (name: string): Promise<string | undefined> {
    const e = await this.entry(name)
    return e === undefined ? (await this.tombstone(name))?.writerPublicKey : e.info.writerPublicKey
  }

  /**
   * Creates a room unless it exists; with `writerPublicKey` (checked by the caller) it becomes signed. A removed
   * signed room comes back signed under its key, whoever registers it: the caller checks the proof.
   */
  async register (name: string, writerPublicKey?: string, signedFrom?: number): Promise<{ info: RoomState, stored: Promise<void> }> {
    const e = await this.entry(name) ?? this.create(name, writerPublicKey, await this.tombstone(name))
    this.noteUse(name, e)
    if (writerPublicKey !== undefined && e.info.writerPublicKey === undefined) await this.sign(e, writerPublicKey, signedFrom)
    return { info: e.info, stored: e.created }
  }

  async waitForSigning (name: string): Promise<void> {
    await this.signing.get(name)
  }

  /** Records a room mirrored from another member's core `key`; false when the name has another core. */
  async mirror (name: string, key: string, primary: string, writerPublicKey?: string, signedFrom?: number): Promise<boolean> {
    const known = await this.entry(name)
    if (known !== undefined) {
      if (await this.coreKey(name) !== key) return false
      if (writerPublicKey !== undefined && known.info.writerPublicKey === undefined) await this.register(name, writerPublicKey, signedFrom ?? 0)
      return true
    }
    // another caller's lookup missed too, and recorded it first
    if (this.cache.has(name)) return await this.mirror(name, key, primary, writerPublicKey, signedFrom)
    const now = Date.now()
    const info: RoomState = { name, messageCount: 0, createdAt: now, lastActivity: now, byteLength: 0, coreKey: key, primary, ...(writerPublicKey === undefined ? {} : { writerPublicKey }), ...(signedFrom === undefined || signedFrom === 0 || writerPublicKey === undefined ? {} : { signedFrom }) }
    const e = this.add(info, null)
    await e.created
    return true
  }

  /** Moves a room to the core `key` of the member that took it over (`primary` undefined: this root peer). */
  async move (name: string, key: string, primary: string | undefined, promotedFrom: string, { generation, epoch }: { generation?: number, epoch?: number } = {}): Promise<void> {
    const e = (await this.entry(name))!
    const info = e.info
    info.coreKey = key
    info.promotedFrom = promotedFrom
    if (primary === undefined) delete info.primary
    else info.primary = primary
    // an own room's core is opened by name: a failover's core is its epoch's generation (src/cluster/failover.ts)
    if (generation !== undefined) info.generation = generation
    if (epoch !== undefined) info.epoch = epoch
    this.setEmpty(e, primary === undefined && info.messageCount === 0 ? Date.now() : null)
    this.markDirty(name, e)
    await this.index!.commit()
    // a read or write that pinned the old core finishes on it; the next use opens the new one
    this.cores.retire(name)
  }

  /** The key of the room's core; for a room of this root peer's own, derived without opening it. */
  async coreKey (name: string): Promise<string | null> {
    const e = await this.entry(name)
    if (e === undefined) return null
    const info = e.info
    if (info.coreKey === undefined) {
      // as Corestore keys a named core: a version 1 manifest with the name's key pair as its one signer
      const { publicKey } = await this.store.createKeyPair(coreName(info.name, info.generation))
      info.coreKey ??= Hypercore.key({ version: 1, signers: [{ publicKey }] }).toString('hex')
      this.markDirty(name, e)
    }
    return info.coreKey
  }

  async recordMirrored (name: string, length: number, byteLength: number): Promise<void> {
    const e = await this.entry(name)
    if (e === undefined || length <= e.info.messageCount) return
    const info = e.info
    this.totalMessages += length - info.messageCount
    this.totalBytes += byteLength - info.byteLength
    info.messageCount = length
    info.byteLength = byteLength
    info.lastActivity = Date.now()
    this.markChanged(name, e)
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
      this.markChanged(name)
      return { messages: to - first, bytes }
    } finally {
      this.release(room)
    }
  }

  /** Opens a room (creating it with `create`) and pins it until `release`; null for an unknown room. */
  async get (name: string, { create = false } = {}): Promise<Room | null> {
    let e = await this.entry(name)
    if (e === undefined) {
      if (!create) return null
      e = this.create(name, undefined, await this.tombstone(name))
    }
    this.noteUse(name, e)
    const entry = e
    return await this.cores.pin(name, () => this.openRoom(name, entry))
  }

  /** Pins a room whose core is open already, as `get` does but without waiting; null when it is not open. */
  getIfOpen (name: string): Room | null {
    return this.cores.pinIfOpen(name)
  }

  release (room: Room): void {
    this.cores.release(room.name, room)
  }

  closeIdle (idle: number): void {
    this.cores.closeIdle(idle)
  }

  recordAppend (room: Room, bytes: number): void {
    const e = this.cache.get(room.name)
    if (e !== undefined) this.setEmpty(e, null)
    room.info.messageCount = room.length
    room.info.byteLength += bytes
    room.info.lastActivity = Date.now()
    this.totalMessages++
    this.totalBytes += bytes
    this.markChanged(room.name, e)
    this.emit('grown', room.name)
  }

  /** Forgets a room and clears its blocks; false while it is in use (pinned, being created or signed). */
  async remove (name: string, { clear }: { clear?: boolean } = {}): Promise<boolean> {
    const e = await this.entry(name)
    if (e === undefined || this.signing.has(name) || e.saved === null || this.removing.has(name)) return false
    if (!this.cores.close(name)) return false
    const info = e.info
    const mine = info.primary === undefined
    const wipe = (clear ?? e.emptyAt === null) && mine
    const generation = wipe ? (info.generation ?? 0) + 1 : info.generation
    // the index drops what it had of the room; the totals follow in the same batch
    const list: IndexOp[] = [ops.delRoom(name), ops.delAwake(name)]
    if (e.saved.emptyAt !== null) list.push(ops.delEmpty(name, e.saved.emptyAt))
    if (generation !== undefined) {
      list.push(ops.putGeneration(name, generation))
      this.rememberGeneration(name, generation)
    }
    // the name stays signed: a stranger can take an empty room's place, never its name (docs/security.md)
    if (info.writerPublicKey !== undefined) {
      // wiped: its next history starts at 0 in a new core; kept: its core and the indices in it stay
      const signedFrom = wipe ? undefined : info.signedFrom
      list.push(ops.putSigner(name, { writerPublicKey: info.writerPublicKey, ...(signedFrom === undefined ? {} : { signedFrom }) }))
    }
    this.saved.rooms--
    this.saved.messages -= e.saved.messageCount
    this.saved.bytes -= e.saved.bytes
    if (e.saved.emptyAt !== null) this.saved.empty--
    this.cache.delete(name)
    this.changed.delete(name)
    this.size--
    if (e.emptyAt !== null) this.emptyCount--
    this.totalMessages -= info.messageCount
    this.totalBytes -= info.byteLength - (info.prunedBytes ?? 0)
    const committed = this.index!.commit(list)
    this.removing.set(name, committed.catch(safetyCatch))
    try {
      await committed
    } finally {
      this.removing.delete(name)
    }
    if (wipe) {
      await this.cores.whenClosed(name)
      const core = this.coreOf(info)
      await core.ready()
      if (core.length > 0) await core.clear(0, core.length)
      await dropIds(this.store, core.key!.toString('hex'))
      await core.close()
    }
    this.emit('removed', name)
    return true
  }

  /** Removes the empty room unused longest that is not in use (`followed`: a live follow is use); null when there is none. */
  async removeEmpty (followed: (name: string) => boolean = () => false): Promise<string | null> {
    for await (const { name, at } of this.index!.empty()) {
      if (await this.removableEmpty(name, at, followed) && await this.remove(name)) return name
    }
    return null
  }

  /** Removes the empty rooms unused since `before`, except those in use. */
  async expireEmpty (before: number, followed: (name: string) => boolean = () => false): Promise<string[]> {
    const old: Array<{ name: string, at: number }> = []
    for await (const empty of this.index!.empty(before)) old.push(empty)
    const removed: string[] = []
    for (const { name, at } of old) if (await this.removableEmpty(name, at, followed) && await this.remove(name)) removed.push(name)
    return removed
  }

  /** Every room, from the index (the records in memory where they are newer). */
  async * list (): AsyncGenerator<RoomState> {
    const unsaved = [...this.cache.values()].filter(e => e.saved === null)
    for (const e of unsaved) yield e.info
    for await (const record of this.index!.rooms()) {
      const cached = this.cache.get(record.name)
      if (cached === undefined) yield toInfo(record)
      else if (cached.saved !== null) yield cached.info
    }
  }

  /** Reads up to STATE_FILE_ROOMS of these rooms into memory (those the last state file listed). */
  async warm (names: string[]): Promise<void> {
    await eachConcurrently(names.slice(0, STATE_FILE_ROOMS), OPEN_CONCURRENCY, async name => { await this.entry(name) })
  }

  /** Up to `n` rooms in memory, most recently active first. */
  recent (n: number): RoomState[] {
    const infos = [...this.cache.values()].map(e => e.info)
    infos.sort((a, b) => b.lastActivity - a.lastActivity)
    return infos.slice(0, n)
  }

  openRooms (): IterableIterator<Room> {
    return this.cores.rooms()
  }

  get openCount (): number {
    return this.cores.count
  }

  async settled (): Promise<void> {
    await this.cores.settled()
  }

  async close (): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    await this.cores.closeAll()
    if (this.index === null) return
    // every room is asleep now: their counts are written and no room stays marked awake
    for (const [name, e] of this.cache) if (e.awake || e.dirty) this.changed.add(name)
    await this.index.commit().catch(safetyCatch)
    await this.index.close()
  }

  private async entry (name: string): Promise<Entry | undefined> {
    const cached = this.cache.get(name)
    if (cached !== undefined) {
      this.cache.delete(name)
      this.cache.set(name, cached)
      return cached
    }
    if (this.missing.has(name)) return undefined
    const removing = this.removing.get(name)
    if (removing !== undefined) await removing
    let loading = this.loading.get(name)
    if (loading === undefined) {
      loading = this.read(name).finally(() => this.loading.delete(name))
      this.loading.set(name, loading)
    }
    return await loading
  }

  private async read (name: string): Promise<Entry | undefined> {
    const { record, generation, signer } = await this.index!.get(name)
    // created, or read by another caller, meanwhile
    const known = this.cache.get(name)
    if (known !== undefined) return known
    if (record === null) {
      if (generation !== undefined) this.rememberGeneration(name, generation)
      this.missing.set(name, signer ?? null)
      if (this.missing.size > CACHED_ROOMS) this.missing.delete(this.missing.keys().next().value as string)
      return undefined
    }
    const e = this.add(toInfo(record), { messageCount: record.messageCount, bytes: stored(record), emptyAt: record.emptyAt ?? null })
    e.emptyAt = record.emptyAt ?? null
    return e
  }

  /** Puts a record in memory; a new room (`saved` null) is written with the next commit. */
  private add (info: RoomState, saved: Entry['saved']): Entry {
    const e: Entry = { info, saved, emptyAt: null, dirty: false, awake: false, created: Promise.resolve() }
    this.cache.set(info.name, e)
    this.missing.delete(info.name)
    if (saved === null) {
      this.size++
      this.markDirty(info.name, e)
      // a failed write fails the store, which is reopened and its rooms read again (storage-health.ts)
      e.created = this.index!.commit()
      e.created.catch(safetyCatch)
    }
    this.trimCache()
    return e
  }

  /** A new room; a removed signed room's (`signer`) is signed again under its key, its indices continuing. */
  private create (name: string, writerPublicKey?: string, signer?: Signer): Entry {
    // another caller's lookup missed too, and created it first
    const known = this.cache.get(name)
    if (known !== undefined) return known
    const now = Date.now()
    const generation = this.generations.get(name)
    const key = signer?.writerPublicKey ?? writerPublicKey
    const signedFrom = signer?.signedFrom
    const e = this.add({ name, messageCount: 0, createdAt: now, lastActivity: now, byteLength: 0, ...(key === undefined ? {} : { writerPublicKey: key }), ...(signedFrom === undefined ? {} : { signedFrom }), ...(generation === undefined ? {} : { generation }) }, null)
    this.setEmpty(e, now)
    this.emit('created', name)
    return e
  }

  private async sign (e: Entry, writerPublicKey: string, given?: number): Promise<void> {
    const info = e.info
    const room = await this.cores.opening(info.name)?.catch(() => null) ?? null
    if (info.writerPublicKey !== undefined) return await this.signing.get(info.name)
    // no await from here to the key being set: what is queued is below signedFrom, what follows is checked
    const signedFrom = given ?? Math.max(info.messageCount, room?.nextIndex ?? 0)
    info.writerPublicKey = writerPublicKey
    if (signedFrom > 0) {
      info.signedFrom = signedFrom
      room?.forgetIds()
    }
    this.markDirty(info.name, e)
    const done = this.index!.commit()
    this.signing.set(info.name, done)
    try {
      await done
    } finally {
      if (this.signing.get(info.name) === done) this.signing.delete(info.name)
    }
    this.emit('signed', info.name)
  }

  /** The index's part of every commit: the changed records, whether rooms sleep, and the totals that match. */
  private beforeFlush (): IndexOp[] {
    const list: IndexOp[] = []
    for (const name of this.changed) {
      const e = this.cache.get(name)
      if (e === undefined) continue
      const info = e.info
      const bytes = info.byteLength - (info.prunedBytes ?? 0)
      const before = e.saved ?? { messageCount: 0, bytes: 0, emptyAt: null }
      if (e.dirty) {
        list.push(ops.putRoom({ ...info, ...(e.emptyAt === null ? {} : { emptyAt: e.emptyAt }) }))
        if (e.saved === null) this.saved.rooms++
        this.saved.messages += info.messageCount - before.messageCount
        this.saved.bytes += bytes - before.bytes
        if (before.emptyAt !== e.emptyAt) {
          if (before.emptyAt !== null) list.push(ops.delEmpty(name, before.emptyAt))
          if (e.emptyAt !== null) list.push(ops.putEmpty(name, e.emptyAt))
          this.saved.empty += (e.emptyAt === null ? 0 : 1) - (before.emptyAt === null ? 0 : 1)
        }
        e.saved = { messageCount: info.messageCount, bytes, emptyAt: e.emptyAt }
        e.dirty = false
      }
      if (e.awake && !this.cores.has(name)) {
        list.push(ops.delAwake(name))
        e.awake = false
      }
      this.changed.delete(name)
    }
    list.push(ops.putTotals(this.saved))
    return list
  }

  /** The record changed: written with the next commit. */
  private markDirty (name: string, e: Entry): void {
    e.dirty = true
    this.changed.add(name)
  }

  /** The counts changed: besides, the room is marked awake in the index until they are written. */
  private markChanged (name: string, e = this.cache.get(name)): void {
    if (e === undefined) return
    this.markDirty(name, e)
    // a crash before they are written is repaired from the core at the next start
    if (!e.awake && e.saved !== null) {
      e.awake = true
      this.index!.commit([ops.putAwake(name)]).catch(safetyCatch)
    }
  }

  private setEmpty (e: Entry, at: number | null): void {
    if ((e.emptyAt === null) === (at === null) && (at === null || e.emptyAt === at)) return
    this.emptyCount += (at === null ? 0 : 1) - (e.emptyAt === null ? 0 : 1)
    e.emptyAt = at
    this.markDirty(e.info.name, e)
  }

  private noteUse (name: string, e: Entry): void {
    // an empty room used again goes to the back of the line for eviction; at most once a second
    if (e.emptyAt !== null && Date.now() - e.emptyAt >= 1000) this.setEmpty(e, Date.now())
    this.cache.delete(name)
    this.cache.set(name, e)
  }

  /** `at`: when the index has it unused since; used since (not yet written), it is not the one to remove. */
  private async removableEmpty (name: string, at: number, followed: (name: string) => boolean): Promise<boolean> {
    const e = await this.entry(name)
    if (e === undefined || e.emptyAt === null || e.emptyAt > at || this.cores.pins(name) > 0) return false
    if (!followed(name)) return true
    // followed: used now, so it goes to the back of the line (and its time to live starts again)
    this.noteUse(name, e)
    return false
  }

  /** The key a removed signed room left; undefined for a name never signed here. */
  private async tombstone (name: string): Promise<Signer | undefined> {
    const known = this.missing.get(name)
    if (known !== undefined) return known ?? undefined
    return (await this.index!.get(name)).signer
  }

  private trimCache (): void {
    if (this.cache.size <= CACHED_ROOMS) return
    for (const [name, e] of this.cache) {
      if (this.cache.size <= CACHED_ROOMS) return
      if (e.dirty || e.awake || e.saved === null || this.changed.has(name) || this.cores.has(name) || this.signing.has(name)) continue
      this.cache.delete(name)
    }
  }

  private rememberGeneration (name: string, generation: number): void {
    this.generations.delete(name)
    this.generations.set(name, generation)
    if (this.generations.size > REMEMBERED_GENERATIONS) this.generations.delete(this.generations.keys().next().value as string)
  }

  private async openRoom (name: string, e: Entry): Promise<Room> {
    await e.created
    const info = e.info
    // marked awake before anything is appended: a crash before its counts are written is repaired from the core
    if (!e.awake) {
      e.awake = true
      await this.index!.commit([ops.putAwake(name)])
    }
    const core = this.coreOf(info)
    await core.ready()
    const key = core.key.toString('hex')
    if (info.coreKey !== key) {
      info.coreKey = key
      this.markDirty(name, e)
    }
    this.check(e, core)
    return new Room(name, core, info, this.onBatch)
  }

  /** The core is the truth: the index may be behind after a crash. */
  private check (e: Entry, core: Hypercore): void {
    const info = e.info
    const length = info.primary === undefined ? core.length : core.contiguousLength
    if (length > 0) this.setEmpty(e, null)
    if (info.messageCount !== length || info.byteLength !== core.byteLength) {
      this.totalMessages += length - info.messageCount
      this.totalBytes += core.byteLength - info.byteLength
      info.messageCount = length
      info.byteLength = core.byteLength
      this.markChanged(info.name, e)
    }
  }

  /** Checks each room's counts against its core, OPEN_CONCURRENCY at a time, and writes what changed. */
  private async reconcile (names: string[]): Promise<void> {
    await eachConcurrently(names, OPEN_CONCURRENCY, async name => {
      const e = await this.entry(name)
      if (e !== undefined && !this.cores.has(name)) {
        const core = this.coreOf(e.info)
        await core.ready()
        const prunedBefore = e.info.prunedBytes ?? 0
        if (e.info.primary === undefined) await reconcilePruned(core, e.info)
        this.totalBytes -= (e.info.prunedBytes ?? 0) - prunedBefore
        this.check(e, core)
        // marked awake by the process that stopped: taken out once the counts are written
        e.awake = true
        this.changed.add(name)
        await core.close()
      }
      this.emit('room-loaded', { name })
    })
    if (names.length > 0) await this.index!.commit()
  }

  private async allNames (): Promise<string[]> {
    const names: string[] = []
    for await (const record of this.index!.rooms()) names.push(record.name)
    return names
  }

  private coreOf (info: RoomState): Hypercore {
    return info.primary === undefined ? this.store.get({ name: coreName(info.name, info.generation) }) : this.store.get({ key: Buffer.from(info.coreKey!, 'hex') })
  }
}

function toInfo (record: IndexRecord): RoomState {
  const { emptyAt, ...info } = record
  return info
}

function stored (r: RoomState): number {
  return r.byteLength - (r.prunedBytes ?? 0)
}
