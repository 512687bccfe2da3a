import { EventEmitter, once } from 'node:events'
import type { Room } from './room.js'
import type { Rooms } from './rooms.js'
import type { RetentionPolicy } from './retention.js'

const PRUNE_CONCURRENCY = 4

/** Applies retention in the background. Events: `room-pruned`, `prune-error`. */
export class Pruner extends EventEmitter {
  readonly policy: Readonly<RetentionPolicy>
  private readonly rooms: () => Rooms | null
  // rooms being pruned now, and whether another prune was asked for meanwhile
  private readonly running = new Map<string, boolean>()
  private readonly pending = new Set<Promise<unknown>>()
  private readonly settled = new EventEmitter()
  private timer: NodeJS.Timeout | null = null
  private passing = false
  private closed = false

  constructor (policy: Readonly<RetentionPolicy>, rooms: () => Rooms | null) {
    super()
    this.policy = policy
    this.rooms = rooms
  }

  start (): void {
    // every room at start (settings may have changed), and with an age bound every 1/24 of it (10 s to 1 h)
    this.pruneAll()
    if (this.policy.maxAgeMs > 0) {
      this.timer = setInterval(() => this.pruneAll(), Math.min(Math.max(this.policy.maxAgeMs / 24, 10_000), 3_600_000))
      this.timer.unref()
    }
  }

  noteAppend (room: Room): void {
    const { messages, bytes } = this.policy
    const info = room.info
    const held = room.length - (info.firstIndex ?? 0)
    const heldBytes = info.byteLength - (info.prunedBytes ?? 0)
    if ((messages > 0 && held > messages) || (bytes > 0 && heldBytes > bytes)) this.prune(room.name)
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.timer !== null) clearInterval(this.timer)
    while (this.pending.size > 0) await Promise.allSettled([...this.pending])
  }

  private prune (name: string): void {
    const rooms = this.rooms()
    if (this.closed || rooms === null) return
    if (this.running.has(name)) {
      this.running.set(name, true)
      return
    }
    this.running.set(name, false)
    this.track(rooms.prune(name, this.policy).then(pruned => {
      if (pruned.messages > 0) this.emit('room-pruned', { roomName: name, ...pruned })
    }, err => {
      if (!this.closed) this.emit('prune-error', { roomName: name, err })
    }).finally(() => {
      const again = this.running.get(name) === true
      this.running.delete(name)
      this.settled.emit('settled', name)
      if (again) this.prune(name)
    }))
  }

  private pruneAll (): void {
    const rooms = this.rooms()
    if (this.closed || rooms === null || this.passing) return
    this.passing = true
    // the rooms are read from the index as the pass goes: a pass over a million rooms holds a page of them
    const names = rooms.list()
    const worker = async (): Promise<void> => {
      while (!this.closed) {
        const { value: info, done } = await names.next()
        if (done === true) break
        if (info.primary !== undefined || info.messageCount <= (info.firstIndex ?? 0)) continue
        const name = info.name
        if (this.running.has(name)) continue
        this.prune(name)
        while (this.running.has(name)) await once(this.settled, 'settled')
      }
    }
    const workers = Array.from({ length: PRUNE_CONCURRENCY }, worker)
    this.track(Promise.all(workers).finally(() => {
      this.passing = false
      return names.return(undefined)
    }))
  }

  private track (promise: Promise<unknown>): void {
    const p: Promise<unknown> = promise.finally(() => this.pending.delete(p))
    this.pending.add(p)
  }
}
