import type Corestore from 'corestore'
import type Hypercore from 'hypercore'

const ROOM_INDEX = 'root-peer-rooms'

/** A room created, signed (`writerPublicKey`), moved to another core (`key`), or removed. */
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

export interface IndexState {
  rooms: Map<string, IndexEntry & { createdAt: number }>
  removed: Set<string>
  generations: Map<string, number>
}

/** The room index: a core recording each room before its first use, and every later fact about it. */
export class RoomIndex {
  private readonly core: Hypercore

  constructor (store: Corestore) {
    this.core = store.get({ name: ROOM_INDEX })
  }

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
  if (entry.writerPublicKey !== undefined) {
    known.writerPublicKey = entry.writerPublicKey
    known.signedFrom = entry.signedFrom
  }
  if (entry.key !== undefined) {
    known.key = entry.key
    known.primary = entry.primary
    known.promotedFrom = entry.promotedFrom
  }
}
