import type { Room } from './room.js'
import safetyCatch from 'safety-catch'

interface Slot {
  room: Promise<Room>
  opened: Room | null
  pins: number
  lastUsed: number
}

/**
 * The rooms whose cores are open: at most `max` open or closing, the least recently used idle one closed to open
 * another, a pinned one never. `onClosed` hears of each core closed.
 */
export class OpenRooms {
  readonly max: number
  private readonly onClosed: (name: string) => void
  // least recently used first
  private readonly slots = new Map<string, Slot>()
  private readonly closing = new Map<string, Promise<void>>()
  /** rooms whose core was replaced while pinned: each closes at its last release */
  private readonly retired = new Set<Slot>()
  private waiters: Array<() => void> = []

  constructor (max: number, onClosed: (name: string) => void) {
    this.max = max
    this.onClosed = onClosed
  }

  get count (): number {
    return this.slots.size + this.closing.size
  }

  /** Open, being opened, or still closing. */
  has (name: string): boolean {
    return this.slots.has(name) || this.closing.has(name)
  }

  pins (name: string): number {
    return this.slots.get(name)?.pins ?? 0
  }

  /** The room being opened or open; null when it is not. */
  opening (name: string): Promise<Room> | null {
    return this.slots.get(name)?.room ?? null
  }

  /** Pins the room until `release`, opening it with `open` (once its last core has closed) when it is not open. */
  async pin (name: string, open: () => Promise<Room>): Promise<Room> {
    let slot = this.slots.get(name)
    while (slot === undefined) {
      if (this.count < this.max) {
        const closing = this.closing.get(name)
        const opened: Slot = { room: closing === undefined ? open() : closing.then(open), opened: null, pins: 0, lastUsed: 0 }
        slot = opened
        this.slots.set(name, slot)
        opened.room.then(room => { opened.opened = room }, () => {
          if (this.slots.get(name) === opened) this.slots.delete(name)
          this.wake()
        })
        break
      }
      // every slot is taken: close the least recently used idle room, or wait for a release
      this.closeOne()
      await new Promise<void>(resolve => this.waiters.push(resolve))
      slot = this.slots.get(name)
    }
    this.use(name, slot)
    try {
      return await slot.room
    } catch (err) {
      slot.pins--
      throw err
    }
  }

  /** Pins a room whose core is open already, as `pin` does but without waiting; null when it is not open. */
  pinIfOpen (name: string): Room | null {
    const slot = this.slots.get(name)
    if (slot === undefined || slot.opened === null) return null
    this.use(name, slot)
    return slot.opened
  }

  /** `room`: the room pinned, which may be one retired since (its core replaced) */
  release (name: string, room?: Room): void {
    for (const old of this.retired) {
      if (room === undefined || old.opened !== room) continue
      if (--old.pins === 0) {
        this.retired.delete(old)
        room.close().catch(safetyCatch)
      }
      return
    }
    const slot = this.slots.get(name)
    if (slot === undefined) return
    slot.pins--
    slot.lastUsed = Date.now()
    if (slot.pins === 0 && this.waiters.length > 0) this.closeOne()
  }

  /**
   * The room's core is replaced (it moved to another member's core, or to a new one of this member's): the next pin
   * opens it anew, and the room open now closes at once, or at its last release while it is pinned.
   */
  retire (name: string): void {
    const slot = this.slots.get(name)
    if (slot === undefined) return
    if (slot.pins === 0) {
      this.evict(name, slot)
      return
    }
    this.slots.delete(name)
    this.retired.add(slot)
    this.wake()
  }

  /** Closes the room's core unless it is pinned; false when it is. */
  close (name: string): boolean {
    const slot = this.slots.get(name)
    if (slot === undefined) return true
    if (slot.pins > 0) return false
    this.evict(name, slot)
    return true
  }

  closeIdle (idle: number): void {
    const before = Date.now() - idle
    for (const [name, slot] of this.slots) {
      if (slot.pins === 0 && slot.lastUsed < before) this.evict(name, slot)
    }
  }

  async whenClosed (name: string): Promise<void> {
    await this.closing.get(name)
  }

  * rooms (): IterableIterator<Room> {
    for (const slot of this.slots.values()) if (slot.opened !== null) yield slot.opened
  }

  async settled (): Promise<void> {
    const rooms = await Promise.allSettled([...this.slots.values(), ...this.retired].map(s => s.room))
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.settled() : null))
  }

  async closeAll (): Promise<void> {
    const rooms = await Promise.allSettled([...this.slots.values(), ...this.retired].map(s => s.room))
    this.slots.clear()
    this.retired.clear()
    await Promise.all(rooms.map(r => r.status === 'fulfilled' ? r.value.close() : null))
    await Promise.allSettled(this.closing.values())
  }

  private use (name: string, slot: Slot): void {
    this.slots.delete(name)
    this.slots.set(name, slot)
    slot.pins++
    slot.lastUsed = Date.now()
  }

  private closeOne (): void {
    for (const [name, slot] of this.slots) {
      if (slot.pins === 0) {
        this.evict(name, slot)
        return
      }
    }
  }

  private evict (name: string, slot: Slot): void {
    this.slots.delete(name)
    const closed = slot.room.then(room => room.close(), safetyCatch).finally(() => {
      this.closing.delete(name)
      this.onClosed(name)
      this.wake()
    })
    this.closing.set(name, closed)
  }

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }
}
