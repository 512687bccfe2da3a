import { EventEmitter } from 'node:events'
import type { Counters } from '../monitor/stats.js'
import type { Rooms } from './rooms.js'
import { STATE_FILE_ROOMS, type PersistentState, type RoomState, type StateFile } from './state-file.js'

const SAVE_EVERY_CHANGES = 10
// a busy root peer must not spend its time rewriting the file
const MIN_SAVE_INTERVAL = 1000

export interface StateSaverOptions {
  file: StateFile
  /** the rooms now (they are replaced when the store is reopened) */
  rooms: () => Rooms | null
  createdAt: () => number
  counters: Counters
}

/**
 * Saves the state file after every few changes (at most once a second) and when asked; never throws.
 *
 * Events: `state-saved`, `state-save-error` (err).
 */
export class StateSaver extends EventEmitter {
  private readonly opts: StateSaverOptions
  private unsaved = 0
  private lastSaveAt = 0
  private timer: NodeJS.Timeout | null = null
  private closed = false

  constructor (opts: StateSaverOptions) {
    super()
    this.opts = opts
  }

  /** One more change the file does not have yet. */
  noteChange (): void {
    if (++this.unsaved < SAVE_EVERY_CHANGES || this.timer !== null || this.closed) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.save()
    }, Math.max(0, this.lastSaveAt + MIN_SAVE_INTERVAL - Date.now()))
    this.timer.unref()
  }

  save (): Promise<void> {
    const rooms = this.opts.rooms()
    if (rooms === null) return Promise.resolve()
    this.unsaved = 0
    this.lastSaveAt = Date.now()
    return this.opts.file.save(() => snapshotOf(rooms, this.opts.createdAt())).then(() => {
      this.opts.counters.stateSaves++
      this.emit('state-saved')
    }, err => {
      this.opts.counters.stateSaveFailures++
      this.emit('state-save-error', err)
    })
  }

  /** No more scheduled saves; `save()` still works, for the last one. */
  close (): void {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
  }
}

/** The state file: every room up to STATE_FILE_ROOMS, above that the most recently active ones. */
export async function snapshotOf (rooms: Rooms, rootPeerCreatedAt: number): Promise<PersistentState> {
  const all = rooms.size <= STATE_FILE_ROOMS
  const listed: RoomState[] = []
  if (all) for await (const info of rooms.list()) listed.push(info)
  else listed.push(...rooms.recent(STATE_FILE_ROOMS))
  const byName: Record<string, RoomState> = {}
  // defineProperty: a room named __proto__ must stay an own key, not reach the prototype
  for (const info of listed) Object.defineProperty(byName, info.name, { value: { ...info }, enumerable: true })
  // the original design's shape while every room is listed; two fields more when not
  const partial = all ? {} : { totalRooms: rooms.size, roomsListed: 'most-recent' as const }
  return { rooms: byName, totalMessages: rooms.totalMessages, ...partial, rootPeerCreatedAt, lastSaved: Date.now() }
}
