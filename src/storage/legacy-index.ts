import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import { eachConcurrently } from './concurrently.js'
import { reconcilePruned } from './retention.js'
import { RoomIndex, ops, type IndexOp, type Totals } from './room-index.js'
import type { PersistentState, RoomState } from './state-file.js'

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

const OPEN_CONCURRENCY = 16
const MIGRATE_BATCH = 1000

export interface MigrateOptions {
  coreOf: (info: RoomState) => Hypercore
  /** a room's core was read */
  onLoaded: (name: string) => void
  /** a room only the legacy index knew, beside a state file */
  onRecovered: (name: string) => void
}

/**
 * Builds the room index from a store of an earlier version: its legacy index core and its state file, every room's
 * counts read from its core. The totals are written last, so a migration cut short is done again.
 */
export async function migrateLegacy (store: Corestore, saved: PersistentState | null, { coreOf, onLoaded, onRecovered }: MigrateOptions): Promise<{ totals: Totals, recovered: number }> {
  const legacy = await readLegacyIndex(store)
  const removed = legacy?.removed ?? new Set<string>()
  const infos = new Map<string, RoomState>()
  // a room the legacy index says was removed stays removed, whatever an older state file says
  for (const r of Object.values(saved?.rooms ?? {})) if (!removed.has(r.name)) infos.set(r.name, { ...r })
  let recovered = 0
  for (const [name, { createdAt, writerPublicKey, key, primary, promotedFrom, signedFrom, generation }] of legacy?.rooms ?? []) {
    let info = infos.get(name)
    if (info === undefined) {
      info = { name, messageCount: 0, createdAt, lastActivity: createdAt, byteLength: 0 }
      infos.set(name, info)
      recovered++
      if (saved !== null) onRecovered(name)
    }
    // the index, not the state file, says which rooms are signed, mirrored or promoted
    delete info.writerPublicKey
    delete info.signedFrom
    delete info.generation
    delete info.primary
    delete info.promotedFrom
    if (writerPublicKey !== undefined) info.writerPublicKey = writerPublicKey
    if (signedFrom !== undefined && writerPublicKey !== undefined) info.signedFrom = signedFrom
    if (generation !== undefined) info.generation = generation
    if (key !== undefined && primary !== undefined) {
      info.coreKey = key
      info.primary = primary
    }
    if (promotedFrom !== undefined) info.promotedFrom = promotedFrom
  }
  const list = [...infos.values()]
  await eachConcurrently(list, OPEN_CONCURRENCY, async info => {
    const core = coreOf(info)
    await core.ready()
    info.coreKey = core.key.toString('hex')
    info.messageCount = info.primary === undefined ? core.length : core.contiguousLength
    info.byteLength = core.byteLength
    if (info.primary === undefined) await reconcilePruned(core, info)
    await core.close()
    onLoaded(info.name)
  })
  const totals: Totals = { rooms: 0, messages: 0, bytes: 0, empty: 0 }
  const index = new RoomIndex(store, () => [])
  try {
    let batch: IndexOp[] = []
    for (const [name, generation] of legacy?.generations ?? []) if (!infos.has(name)) batch.push(ops.putGeneration(name, generation))
    for (const info of list) {
      const empty = info.messageCount === 0 && info.primary === undefined
      batch.push(ops.putRoom({ ...info, ...(empty ? { emptyAt: info.lastActivity } : {}) }))
      if (empty) batch.push(ops.putEmpty(info.name, info.lastActivity))
      totals.rooms++
      totals.messages += info.messageCount
      totals.bytes += info.byteLength - (info.prunedBytes ?? 0)
      if (empty) totals.empty++
      if (batch.length >= MIGRATE_BATCH) {
        await index.commit(batch)
        batch = []
      }
    }
    await index.commit([...batch, ops.putTotals(totals)])
  } finally {
    await index.close()
  }
  return { totals, recovered }
}

export interface LegacyIndex {
  rooms: Map<string, LegacyEntry & { createdAt: number }>
  removed: Set<string>
  generations: Map<string, number>
}

/** The legacy index folded into its rooms; null when the store never had one. */
async function readLegacyIndex (store: Corestore): Promise<LegacyIndex | null> {
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
