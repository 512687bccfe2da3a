import type Corestore from 'corestore'

// the room index of versions before the RocksDB one: a core of JSON entries, read once to migrate
const LEGACY_INDEX = 'root-peer-rooms'

interface LegacyEntry {
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

export interface LegacyIndex {
  rooms: Map<string, LegacyEntry & { createdAt: number }>
  removed: Set<string>
  generations: Map<string, number>
}

/** The legacy index folded into its rooms; null when the store never had one. */
export async function readLegacyIndex (store: Corestore): Promise<LegacyIndex | null> {
  const core = store.get({ name: LEGACY_INDEX })
  try {
    await core.ready()
    if (core.length === 0) return null
    const state: LegacyIndex = { rooms: new Map(), removed: new Set(), generations: new Map() }
    for (let at = 0; at < core.length; at += 256) {
      const gets: Array<Promise<Buffer | null>> = []
      for (let i = at; i < Math.min(core.length, at + 256); i++) gets.push(core.get(i))
      for (const block of await Promise.all(gets)) if (block !== null) fold(state, JSON.parse(block.toString('utf8')) as LegacyEntry)
    }
    return state
  } finally {
    await core.close()
  }
}

function fold (state: LegacyIndex, entry: LegacyEntry): void {
  const { rooms, removed, generations } = state
  if (entry.generation !== undefined) generations.set(entry.name, entry.generation)
  if (entry.removed === true) {
    rooms.delete(entry.name)
    removed.add(entry.name)
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
