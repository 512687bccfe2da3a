import { EventEmitter } from 'node:events'
import type { RoomTopics } from '../connection/room-topics.js'
import { bump, type Counters } from '../monitor/stats.js'
import type { Rooms } from './rooms.js'

export interface RoomUpkeepOptions {
  rooms: () => Rooms | null
  topics: RoomTopics
  idleTimeout: number
  /** 0: empty rooms are kept until MAX_ROOMS needs their place */
  emptyRoomTtl: number
  /** a room some connection follows live is in use: neither expired nor evicted */
  isFollowed: (roomName: string) => boolean
  counters: Counters
  track: (work: Promise<unknown>) => void
}

/**
 * Closes idle rooms' cores and leaves their topics, and takes out empty rooms (expired, or to make room).
 *
 * Events: `room-removed` ({ roomName, reason }), `append-error` ({ roomName: null, err }).
 */
export class RoomUpkeep extends EventEmitter {
  private readonly opts: RoomUpkeepOptions
  private timer: NodeJS.Timeout | null = null

  constructor (opts: RoomUpkeepOptions) {
    super()
    this.opts = opts
  }

  /** Rooms active before a restart are announced again, the most recent ones within the caps. */
  announceRecent (rooms: Rooms): void {
    const now = Date.now()
    const recent = rooms.recent(this.opts.topics.maxAnnounced).filter(r => now - r.lastActivity <= this.opts.idleTimeout)
    for (const r of recent.reverse()) this.opts.topics.touch(r.name, r.lastActivity)
  }

  /** Sweeps every half idle timeout (1 s to 1 min). */
  start (): void {
    const { idleTimeout, emptyRoomTtl } = this.opts
    this.timer = setInterval(() => {
      const rooms = this.opts.rooms()
      rooms?.closeIdle(idleTimeout)
      this.opts.topics.sweep()
      if (emptyRoomTtl > 0 && rooms !== null) this.opts.track(this.expireEmpty(rooms))
    }, Math.max(1000, Math.min(idleTimeout / 2, emptyRoomTtl > 0 ? emptyRoomTtl / 2 : Infinity, 60_000)))
    this.timer.unref()
  }

  close (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /** Removes the empty room unused longest; false when every room has history or is in use. */
  async removeEmpty (): Promise<boolean> {
    const name = await this.opts.rooms()!.removeEmpty(this.opts.isFollowed)
    if (name !== null) this.recordRemoval(name, 'evicted')
    return name !== null
  }

  private async expireEmpty (rooms: Rooms): Promise<void> {
    const removed = await rooms.expireEmpty(Date.now() - this.opts.emptyRoomTtl, this.opts.isFollowed).catch(err => {
      this.emit('append-error', { roomName: null, err })
      return []
    })
    for (const name of removed) this.recordRemoval(name, 'expired')
  }

  private recordRemoval (roomName: string, reason: 'evicted' | 'expired'): void {
    bump(this.opts.counters.roomsRemoved, reason)
    this.emit('room-removed', { roomName, reason })
  }
}
