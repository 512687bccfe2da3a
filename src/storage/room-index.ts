import type Corestore from 'corestore'
import type Hypercore from 'hypercore'

const ROOM_INDEX = 'root-peer-rooms'

/**
 * One entry of the room index: a room created, a later fact about it (signed: `writerPublicKey` and `signedFrom`;
 * moved to another core: `key`, `primary`, `promotedFrom`), or its removal (`removed`, and the `generation` its
 * name's next core gets). Fields left undefined are not written.
 */
export interface IndexEntry {
  name: string
  createdAt?: number
  writerPublicKey?: string
  signedFrom?: number
  key?: string
  primary?: string
  promotedFrom?: string
  generation?: number
  removed?: true
}

/** What the index says now: each room's entries folded into one, the names removed last, the generations of removed names. */
export interface IndexState {
  rooms: Map<string, IndexEntry & { createdAt: number }>
  removed: Set<string>
  generations: Map<string, number>
}

/**
 * The room index: a core in the store that records, before a room is first used, that it exists (so the state
 * file is never the only record of which rooms there are), and every later fact about it, in order.
 */
export class RoomIndex {
  private readonly core: Hypercore

  constructor (store: Corestore) {
    this.core = store.get({ name: ROOM_INDEX })
  }

  /** Reads every entry and folds them, in order. */
  async read (): Promise<IndexState> {
    await this.core.ready()
    const state: IndexState = { rooms: new Map(), removed: new Set(), generations: new Map() }
    for (let at = 0; at < this.core.length; at += 256) {
      const gets: Array<Promise<Buffer | null>> = []
      for (let i = at; i < Math.min(this.core.length, at + 256); i++) gets.push(this.core.get(i))
      for (const block of await Promise.all(gets)) if (block !== null) fold(state, JSON.parse(block.toString('utf8')) as IndexEntry)
    }
    return state
  }

  async append (entries: IndexEntry | IndexEntry[]): Promise<void> {
    const list = Array.isArray(entries) ? entries : [entries]
    await this.core.append(list.map(e => Buffer.from(JSON.stringify(e))))
  }

  async close (): Promise<void> {
    await this.core.close()
  }
}

function fold (state: IndexState, entry: IndexEntry): void {
  const { rooms, removed, generations } = state
  if (entry.removed === true) {
    rooms.delete(entry.name)
    removed.add(entry.name)
    if (entry.generation !== undefined) generations.set(entry.name, entry.generation)
    return
  }
  removed.delete(entry.name)
  const known = rooms.get(entry.name)
  if (known === undefined) {
    rooms.set(entry.name, { ...entry, createdAt: entry.createdAt ?? 0 })
    return
  }
  // a later entry signs the room...
  if (entry.writerPublicKey !== undefined) {
    known.writerPublicKey = entry.writerPublicKey
    known.signedFrom = entry.signedFrom
  }
  // ...or moves it: to another primary's core, or (promoted) to our own
  if (entry.key !== undefined) {
    known.key = entry.key
    known.primary = entry.primary
    known.promotedFrom = entry.promotedFrom
  }
}
