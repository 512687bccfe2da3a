import type { Page, Room } from '../storage/room.js'
import type { Rooms } from '../storage/rooms.js'
import type { Counters } from '../monitor/stats.js'

/** Pages read ahead held at once across all connections: at most this many times `maxPageBytes`. */
export const READ_AHEAD_PAGES = 32

/** How long a page read ahead waits for the request that would take it. */
export const READ_AHEAD_HOLD_MS = 5000

interface Ahead {
  room: Room
  fork: number
  from: number
  limit: number
  maxBytes: number
  page: Promise<Page | null>
  timer: ReturnType<typeof setTimeout>
}

/**
 * A catch-up's next page, read while the page before it is on the wire (docs/performance.md#read-ahead).
 * Started only by a sync-request the guard admitted whose page said there is more; at most one per connection
 * and `maxPages` in all, the oldest dropped for a new one (so pages nobody asks for cannot keep the places of the
 * ones a client is about to); dropped unused after READ_AHEAD_HOLD_MS. Given to the next request only if it asks
 * for the same range of the same open room and the room has not grown or forked: what a fresh read would give.
 * Only a range whose blocks are all held here is read ahead: a mirror's blocks arrive without its length changing.
 */
export class ReadAhead {
  private readonly maxPages: number
  private readonly counters: Counters
  // by connection, oldest first; an entry lives at most READ_AHEAD_HOLD_MS
  private readonly held = new Map<object, Ahead>()

  constructor (maxPages: number, counters: Counters) {
    this.maxPages = maxPages
    this.counters = counters
  }

  get size (): number {
    return this.held.size
  }

  start (owner: object, rooms: Rooms, roomName: string, from: number, limit: number, maxBytes: number): void {
    if (this.maxPages === 0) return
    this.unused(owner)
    if (this.held.size >= this.maxPages) this.unused(this.held.keys().next().value as object)
    const room = rooms.getIfOpen(roomName)
    if (room === null) return
    // appends in flight would leave the page short of what a read after them gives
    if (room.length !== room.core.length || from >= room.length) {
      rooms.release(room)
      return
    }
    // nor is a page read ahead where blocks are still to come (a mirror catching up): they arrive at the same length
    const core = room.core
    const page = core.has(from, Math.min(from + limit, core.length))
      .then(held => held ? room.readPage(from, limit, maxBytes) : null)
      .catch(() => null)
      .finally(() => rooms.release(room))
    const timer = setTimeout(() => this.unused(owner), READ_AHEAD_HOLD_MS)
    timer.unref?.()
    this.held.set(owner, { room, fork: room.core.fork, from, limit, maxBytes, page, timer })
  }

  /** The page read ahead for exactly this read, or null (the caller reads it itself). Call after `room.barrier()`. */
  async take (owner: object, room: Room, from: number, limit: number, maxBytes: number): Promise<Page | null> {
    const ahead = this.drop(owner)
    if (ahead === undefined) return null
    const page = ahead.room === room && ahead.from === from && ahead.limit === limit && ahead.maxBytes === maxBytes ? await ahead.page : null
    // the room grew or forked since: a fresh read gives more, or other blocks
    if (page === null || page.totalMessages !== room.length || room.core.fork !== ahead.fork || room.core.closed) {
      this.counters.pagesReadAheadUnused++
      return null
    }
    this.counters.pagesReadAhead++
    return page
  }

  private unused (owner: object): void {
    if (this.drop(owner) !== undefined) this.counters.pagesReadAheadUnused++
  }

  private drop (owner: object): Ahead | undefined {
    const ahead = this.held.get(owner)
    if (ahead === undefined) return undefined
    this.held.delete(owner)
    clearTimeout(ahead.timer)
    return ahead
  }
}
