import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import { Room } from './room.js'
import type { PersistentState, RoomState } from './state-file.js'

const ROOM_INDEX = 'root-peer-rooms'
const OPEN_CONCURRENCY = 16

/** The Corestore name of a room's core, as the seed names it. */
export function coreName (roomName: string): string {
  return `room-${roomName}`
}

/**
 * Every room the root peer knows. Room names are kept in an index core inside the store, appended
 * before a new room is first used, so the state file is never the only record of which rooms exist.
 *
 * Events: `room-opened` (room), `index-recovered` ({ name }) for rooms found only in the index.
 */
export class Rooms extends EventEmitter {
  private readonly store: Corestore
  private index: Hypercore | null = null
  private readonly infos = new Map<string, RoomState>()
  private readonly open = new Map<string, Promise<Room>>()
  private readonly creating = new Map<string, Promise<void>>()
  totalMessages = 0
  totalBytes = 0

  constructor (store: Corestore) {
    super()
    this.store = store
  }

  /**
   * Opens the index, merges it with the state file's rooms, and reconciles every room's count with its core
   * (without `openAll`, only the rooms opened later are: an admin command that needs one room).
   */
  async load (saved: PersistentState | null, { openAll = true } = {}): Promise<void> {
    this.index = this.store.get({ name: ROOM_INDEX })
    await this.index.ready()
    const indexed = new Map<string, number>()
    for (let at = 0; at < this.index.length; at += 256) {
      const gets: Array<Promise<Buffer | null>> = []
      for (let i = at; i < Math.min(this.index.length, at + 256); i++) gets.push(this.index.get(i))
      for (const block of await Promise.all(gets)) {
        if (block === null) continue
        const entry = JSON.parse(block.toString('utf8')) as { name: string, createdAt: number }
        if (!indexed.has(entry.name)) indexed.set(entry.name, entry.createdAt)
      }
    }
    const savedRooms = saved === null ? [] : Object.values(saved.rooms)
    for (const r of savedRooms) this.infos.set(r.name, { ...r })
    for (const [name, createdAt] of indexed) {
      if (!this.infos.has(name)) {
        this.infos.set(name, { name, messageCount: 0, createdAt, lastActivity: createdAt, byteLength: 0 })
        if (saved !== null) this.emit('index-recovered', { name })
      }
    }
    // rooms a state file of the seed's knows but the index does not yet: add them
    const missing = savedRooms.filter(r => !indexed.has(r.name))
    if (missing.length > 0) await this.index.append(missing.map(r => indexBlock(r.name, r.createdAt)))

    const names = openAll ? [...this.infos.keys()] : []
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < names.length) await this.get(names[next++], false)
    }
    await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, names.length) }, worker))
    this.totalMessages = 0
    this.totalBytes = 0
    for (const info of this.infos.values()) {
      this.totalMessages += info.messageCount
      this.totalBytes += info.byteLength
    }
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

  /** Opens a known room, or creates it when `create`; null for an unknown room without `create`. */
  async get (name: string, create: boolean): Promise<Room | null> {
    const opening = this.open.get(name)
    if (opening !== undefined) return opening
    if (!this.infos.has(name)) {
      if (!create) return null
      await this.create(name)
      return this.get(name, false)
    }
    const promise = this.openRoom(name)
    this.open.set(name, promise)
    promise.catch(() => this.open.delete(name))
    return promise
  }

  /** Notes one message of `bytes` newly stored in `room`. */
  stored (room: Room, bytes: number): void {
    room.info.messageCount = room.length
    room.info.byteLength += bytes
    room.info.lastActivity = Date.now()
    this.totalMessages++
    this.totalBytes += bytes
  }

  /** Rooms whose core is open now. */
  get openCount (): number {
    return this.open.size
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
    const rooms = await Promise.allSettled(this.open.values())
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.settled() : null))
  }

  async close (): Promise<void> {
    const rooms = await Promise.allSettled(this.open.values())
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.close() : null))
    this.open.clear()
    if (this.index !== null) await this.index.close()
  }

  private async create (name: string): Promise<void> {
    let pending = this.creating.get(name)
    if (pending === undefined) {
      pending = (async () => {
        const now = Date.now()
        // in the index before first use: an acked message's room is always recoverable
        await this.index!.append(indexBlock(name, now))
        this.infos.set(name, { name, messageCount: 0, createdAt: now, lastActivity: now, byteLength: 0 })
      })()
      this.creating.set(name, pending)
      pending.finally(() => this.creating.delete(name)).catch(() => {})
    }
    await pending
  }

  private async openRoom (name: string): Promise<Room> {
    const core = this.store.get({ name: coreName(name) })
    await core.ready()
    const info = this.infos.get(name)!
    const room = new Room(name, core, info)
    // the core is the truth: the state file may be behind after a crash
    if (info.messageCount !== core.length || info.byteLength !== core.byteLength) {
      this.totalMessages += core.length - info.messageCount
      this.totalBytes += core.byteLength - info.byteLength
      info.messageCount = core.length
      info.byteLength = core.byteLength
    }
    this.emit('room-opened', room)
    return room
  }
}

function indexBlock (name: string, createdAt: number): Buffer {
  return Buffer.from(JSON.stringify({ name, createdAt }))
}
