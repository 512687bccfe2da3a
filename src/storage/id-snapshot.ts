import type Corestore from 'corestore'
import type Hypercore from 'hypercore'

// the keys live in the store's RocksDB, beside the room index, per core: `ids/<core key>/s` the state, `/f` a Bloom
// filter of every id in the segments, `/e/<seq>` the segments, each the ids a room held as it closed, oldest first
const PREFIX = 'ids/'
const END = '\xff'
const VERSION = 1
const BITS_PER_ID = 12
const HASHES = 8
const MIN_CAPACITY = 64

export type IdEntry = [id: string, index: number]

interface State {
  v: number
  // every id of the records below it is in a segment (or was forgotten by the bounds)
  length: number
  fork: number
  // the entries in the segments (some stale: forgotten, or stored again since), their characters, what the filter holds
  count: number
  chars: number
  capacity: number
  seq: number
}

/**
 * A room's dedup ids on disk (docs/durability.md): written as the room sleeps, after the blocks they name, and read as
 * it wakes as a Bloom filter, so a new id needs no read; the entries are read only for an id the filter may hold.
 */
export class IdSnapshot {
  private readonly state: State
  private readonly bloom: Buffer

  private constructor (state: State, bloom: Buffer) {
    this.state = state
    this.bloom = bloom
  }

  /** Every id of the records below it is held here. */
  get length (): number {
    return this.state.length
  }

  get fork (): number {
    return this.state.fork
  }

  /** The snapshot of the core's ids (one read); null when there is none, or it cannot be read as one. */
  static async read (core: Hypercore): Promise<IdSnapshot | null> {
    const db = rocksOf(core).session()
    try {
      const batch = db.read({ autoDestroy: true })
      const prefix = prefixOf(core)
      const values = [batch.get(prefix + 's'), batch.get(prefix + 'f')]
      batch.tryFlush()
      const [state, bloom] = await Promise.all(values) as Array<Buffer | null>
      if (state === null || bloom === null) return null
      const s = parseState(state.toString())
      return s === null || bloom.byteLength !== bloomBytes(s.capacity) ? null : new IdSnapshot(s, bloom)
    } finally {
      await db.close()
    }
  }

  /** Replaces whatever the core had with `entries` (oldest first): the ids of the records below `length`. */
  static async write (core: Hypercore, entries: IdEntry[], length: number): Promise<void> {
    const capacity = Math.max(MIN_CAPACITY, 2 * entries.length)
    const bloom = Buffer.alloc(bloomBytes(capacity))
    for (const [id] of entries) add(bloom, id)
    const state: State = { v: VERSION, length, fork: core.fork, count: entries.length, chars: charsOf(entries), capacity, seq: 0 }
    const db = rocksOf(core).session()
    try {
      const batch = db.write({ autoDestroy: true })
      const prefix = prefixOf(core)
      batch.tryDeleteRange(prefix, prefix + END)
      if (entries.length > 0) batch.tryPut(prefix + 'e/' + pad(0), encodeEntries(entries))
      batch.tryPut(prefix + 'f', bloom)
      batch.tryPut(prefix + 's', JSON.stringify(state))
      await batch.flush()
    } finally {
      await db.close()
    }
  }

  /** False when the id is in no segment; true when it may be. */
  mayHold (id: string): boolean {
    return test(this.bloom, id)
  }

  /** Whether `entries` more fit the filter and the bounds kept on disk (twice the room's): otherwise the room writes them all. */
  fits (entries: IdEntry[], window: number, maxChars: number): boolean {
    const count = this.state.count + entries.length
    return count <= this.state.capacity && count <= 2 * window && this.state.chars + charsOf(entries) <= 2 * maxChars
  }

  /** Adds a segment of newer ids (oldest first); the records below `length` are then all named. */
  async append (core: Hypercore, entries: IdEntry[], length: number): Promise<void> {
    const bloom = Buffer.from(this.bloom)
    for (const [id] of entries) add(bloom, id)
    const seq = this.state.seq + 1
    const state: State = { ...this.state, length, count: this.state.count + entries.length, chars: this.state.chars + charsOf(entries), seq }
    const db = rocksOf(core).session()
    try {
      const batch = db.write({ autoDestroy: true })
      const prefix = prefixOf(core)
      if (entries.length > 0) batch.tryPut(prefix + 'e/' + pad(seq), encodeEntries(entries))
      batch.tryPut(prefix + 'f', bloom)
      batch.tryPut(prefix + 's', JSON.stringify(state))
      await batch.flush()
    } finally {
      await db.close()
    }
  }

  /** Every entry of the segments, oldest first (an id stored again appears again, later). */
  async entries (core: Hypercore): Promise<IdEntry[]> {
    const db = rocksOf(core).session()
    const entries: IdEntry[] = []
    try {
      const prefix = prefixOf(core) + 'e/'
      for await (const { value } of db.iterator({ gte: prefix, lt: prefix + END })) {
        const segment = decodeEntries(value.toString())
        if (segment === null) throw new Error('a segment of dedup ids cannot be read')
        for (const e of segment) entries.push(e)
      }
    } finally {
      await db.close()
    }
    return entries
  }
}

/** Removes the ids of the core `coreKey` (hex), as its room is removed. */
export async function dropIds (store: Corestore, coreKey: string): Promise<void> {
  const db = store.storage.rocks.session()
  try {
    const prefix = `${PREFIX}${coreKey}/`
    await db.deleteRange(prefix, prefix + END)
  } finally {
    await db.close()
  }
}

function parseState (text: string): State | null {
  let s: any
  try {
    s = JSON.parse(text)
  } catch {
    return null
  }
  if (s === null || typeof s !== 'object' || s.v !== VERSION) return null
  for (const k of ['length', 'fork', 'count', 'chars', 'capacity', 'seq']) if (!Number.isSafeInteger(s[k]) || s[k] < 0) return null
  return s as State
}

/** Ids and their indices as steps from the previous one (mostly 1). */
function encodeEntries (entries: IdEntry[]): string {
  const ids: string[] = []
  const at: number[] = []
  let last = 0
  for (const [id, index] of entries) {
    ids.push(id)
    at.push(index - last)
    last = index
  }
  return JSON.stringify({ ids, at })
}

function decodeEntries (text: string): IdEntry[] | null {
  let v: any
  try {
    v = JSON.parse(text)
  } catch {
    return null
  }
  if (v === null || !Array.isArray(v.ids) || !Array.isArray(v.at) || v.ids.length !== v.at.length) return null
  const entries: IdEntry[] = []
  let index = 0
  for (let i = 0; i < v.ids.length; i++) {
    index += v.at[i]
    if (typeof v.ids[i] !== 'string' || !Number.isSafeInteger(index) || index < 0) return null
    entries.push([v.ids[i], index])
  }
  return entries
}

function charsOf (entries: IdEntry[]): number {
  let chars = 0
  for (const [id] of entries) chars += id.length
  return chars
}

function bloomBytes (capacity: number): number {
  return Math.ceil(capacity * BITS_PER_ID / 8)
}

/** Two 32-bit hashes of the id (FNV-1a and a variant), combined as h1 + i·h2 for the filter's bits. */
function hashes (id: string): [number, number] {
  let h1 = 0x811c9dc5
  let h2 = 0x5bd1e995
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i)
    h1 = Math.imul(h1 ^ c, 0x01000193)
    h2 = Math.imul(h2 ^ c, 0x5bd1e995)
    h2 ^= h2 >>> 15
  }
  return [h1 >>> 0, (h2 | 1) >>> 0]
}

function add (bloom: Buffer, id: string): void {
  const bits = bloom.byteLength * 8
  const [h1, h2] = hashes(id)
  for (let i = 0; i < HASHES; i++) {
    const bit = ((h1 + Math.imul(i, h2)) >>> 0) % bits
    bloom[bit >>> 3] |= 1 << (bit & 7)
  }
}

function test (bloom: Buffer, id: string): boolean {
  const bits = bloom.byteLength * 8
  const [h1, h2] = hashes(id)
  for (let i = 0; i < HASHES; i++) {
    const bit = ((h1 + Math.imul(i, h2)) >>> 0) % bits
    if ((bloom[bit >>> 3] & (1 << (bit & 7))) === 0) return false
  }
  return true
}

function prefixOf (core: Hypercore): string {
  return `${PREFIX}${core.key!.toString('hex')}/`
}

/** The store's RocksDB, which the core's blocks are written to: a snapshot is written after them, in the same log. */
function rocksOf (core: Hypercore): any {
  return (core as any).state.storage.store.rocks
}

function pad (seq: number): string {
  return String(seq).padStart(15, '0')
}
