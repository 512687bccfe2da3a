import type Corestore from 'corestore'
import type Hypercore from 'hypercore'

/** A room keeps the ids of its newest records: at most DEDUP_WINDOW of them and DEDUP_ID_CHARS characters. */
export const DEDUP_WINDOW = 10_000
export const DEDUP_ID_CHARS = 256 * 1024

// the keys live in the default column family of the store's RocksDB, beside the room index, per core:
// `ids/<core key>/m` the table's state, `/i/<id>` the index of the id's record, `/n/<index>` the id of a record
const PREFIX = 'ids/'
const END = '\xff'
const READ_AHEAD = 256

export interface IdEntry { id: string, index: number }

/** What is indexed: the ids of the records below `length` (none below `floor`), `count` ids of `chars` characters from `low` up. */
interface Table { length: number, floor: number, low: number, count: number, chars: number }

type Op = { write: IdEntry[], to: number } | { dropBelow: number }

interface Pending { op: Op, resolve: () => void, reject: (err: unknown) => void }

/**
 * A room's dedup ids, kept in the store's RocksDB (docs/durability.md): one read finds an id. The table is written
 * after the records it names are appended, with how far it reaches; opening it reads the records past that (a crash's
 * tail) instead of the room's history.
 */
export class IdIndex {
  private readonly db: any
  private readonly prefix: string
  private readonly tail: (from: number, to: number) => Promise<IdEntry[]>
  private readonly openedAt: number
  private table: Table = { length: 0, floor: 0, low: 0, count: 0, chars: 0 }
  // raised at once by `dropBelow`, before the table is: a lookup meanwhile sees no id below it
  private floor = 0
  private loading: Promise<void> | null = null
  private loaded = false
  // entries of records from before the room opened still in the table
  private before = 0
  private queue: Pending[] = []
  private flushing: Promise<void> | null = null
  private failed: unknown = null
  // the table's oldest entries, read ahead (up to `aheadTo`) for the trims, and those forgotten since
  private ahead: IdEntry[] = []
  private aheadTo = 0
  private aheadSize = 8
  private readonly gone = new Set<number>()
  private reads: Array<{ id: string, resolve: (index: number | undefined) => void, reject: (err: unknown) => void }> = []

  /** `tail` reads the ids of the records in [from, to); the records from `core.length` up are written here as appended. */
  constructor (core: Hypercore, tail: (from: number, to: number) => Promise<IdEntry[]>) {
    this.db = rocksOf(core).session()
    this.prefix = prefixOf(core.key!.toString('hex'))
    this.tail = tail
    this.openedAt = core.length
  }

  /**
   * True once every id the table holds was written since the room opened: the room holds those in memory too
   * (docs/durability.md), so an id it does not hold is in no entry, and needs no lookup.
   */
  get complete (): boolean {
    return this.loaded && this.before === 0
  }

  get count (): number {
    return this.table.count
  }

  get chars (): number {
    return this.table.chars
  }

  /** Null once the table reaches the records that were there when the room opened. */
  ready (): Promise<void> | null {
    if (this.loaded) return null
    if (this.loading === null) this.loading = this.load()
    return this.loading
  }

  /** The index of the id's record, or null; the table is ready first. */
  async get (id: string): Promise<number | null> {
    await this.ready()
    const index = await new Promise<number | undefined>((resolve, reject) => {
      this.reads.push({ id, resolve, reject })
      // the lookups of a turn of the event loop share one read: a read costs about as much for 1 key as for 100
      if (this.reads.length === 1) setImmediate(() => { this.read() })
    })
    return index === undefined || index < this.floor ? null : index
  }

  /** Indexes the ids of the records appended up to `to` (every append, with ids or none, reaches the table in order). */
  write (entries: IdEntry[], to: number): Promise<void> {
    return this.push({ write: entries, to })
  }

  /** Forgets the ids of the records below `index`. */
  dropBelow (index: number): Promise<void> {
    this.floor = Math.max(this.floor, index)
    return this.push({ dropBelow: index })
  }

  async settled (): Promise<void> {
    while (this.flushing !== null) await this.flushing
  }

  async close (): Promise<void> {
    await this.loading?.catch(() => {})
    await this.settled()
    await this.db.close()
  }

  private async load (): Promise<void> {
    const saved = await this.db.get(this.prefix + 'm')
    if (saved !== null) this.table = JSON.parse(saved.toString())
    this.floor = Math.max(this.floor, this.table.floor)
    // only the newest DEDUP_WINDOW records can hold ids the table keeps
    const from = Math.max(this.table.length, this.table.floor, this.openedAt - DEDUP_WINDOW)
    if (from < this.openedAt) await this.apply({ write: await this.tail(from, this.openedAt), to: this.openedAt })
    this.before = this.table.count
    this.loaded = true
  }

  private read (): void {
    const reads = this.reads
    this.reads = []
    this.lookup(reads.map(r => r.id)).then(found => {
      for (const r of reads) r.resolve(found.get(r.id))
    }, err => {
      for (const r of reads) r.reject(err)
    })
  }

  private push (op: Op): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ op, resolve, reject })
      if (this.flushing === null) this.flushing = this.flush()
    })
  }

  private async flush (): Promise<void> {
    while (this.queue.length > 0) {
      const pending = this.queue.splice(0, this.queue.length)
      try {
        if (this.failed !== null) throw this.failed
        await this.ready()
        // the writes queued together are one batch
        for (let i = 0; i < pending.length;) {
          const op = pending[i].op
          let j = i + 1
          if ('write' in op) {
            const entries = [...op.write]
            let to = op.to
            for (; j < pending.length && 'write' in pending[j].op; j++) {
              const next = pending[j].op as { write: IdEntry[], to: number }
              entries.push(...next.write)
              to = next.to
            }
            await this.apply({ write: entries, to })
          } else {
            await this.apply(op)
          }
          for (; i < j; i++) pending[i].resolve()
        }
      } catch (err) {
        // a table past a write that failed would skip its records: nothing more is written; a reopen reads the tail
        this.failed ??= err
        for (const p of pending) p.reject(err)
      }
    }
    this.flushing = null
  }

  private async apply (op: Op): Promise<void> {
    const t = { ...this.table }
    const batch = this.db.write({ autoDestroy: true })
    const key = { i: (id: string) => this.prefix + 'i/' + id, n: (index: number) => this.prefix + 'n/' + pad(index) }
    // the id of each index this batch adds or removes (null: removed)
    const indices = new Map<number, string | null>()
    let forgotten = 0
    const forget = (index: number, id: string, current: number): void => {
      batch.tryDelete(key.n(index))
      // an id stored again since keeps its newer entry
      if (current === index) batch.tryDelete(key.i(id))
      indices.set(index, null)
      if (index < this.aheadTo) this.gone.add(index)
      if (index < this.openedAt) forgotten++
      t.count--
      t.chars -= id.length
    }
    if ('dropBelow' in op) {
      t.floor = Math.max(t.floor, op.dropBelow)
      const to = Math.min(op.dropBelow, t.length)
      for await (const { index, id } of this.indexed(t.low, to)) forget(index, id, index)
      t.low = Math.max(t.low, to)
      this.ahead = []
      this.aheadTo = 0
      this.gone.clear()
    } else {
      const entries = op.write.filter(e => e.index >= Math.max(t.length, t.floor))
      const before = await this.lookup([...new Set(entries.map(e => e.id))])
      // the newest index of each id this batch names
      const latest = new Map<string, number>()
      for (const { id, index } of entries) {
        const old = latest.get(id) ?? before.get(id)
        if (old !== undefined) forget(old, id, old)
        batch.tryPut(key.i(id), String(index))
        batch.tryPut(key.n(index), id)
        indices.set(index, id)
        latest.set(id, index)
        t.count++
        t.chars += id.length
      }
      const oldLength = t.length
      t.length = Math.max(t.length, op.to)
      // forget the oldest ids while past the bounds: first those stored before, then this batch's own
      const over = (): boolean => t.count > 1 && (t.count > DEDUP_WINDOW || t.chars > DEDUP_ID_CHARS)
      if (over()) {
        // skipped: what this batch removed (the read ahead may still see it)
        const removed = (index: number): boolean => indices.get(index) === null
        for (let e = await this.oldest(t.low, oldLength, removed); e !== null && over(); e = await this.oldest(t.low, oldLength, removed)) {
          this.ahead.shift()
          forget(e.index, e.id, e.index)
          this.gone.delete(e.index)
          t.low = e.index + 1
        }
        for (const e of entries) {
          if (!over()) break
          if (latest.get(e.id) !== e.index) continue
          forget(e.index, e.id, e.index)
          latest.delete(e.id)
          t.low = e.index + 1
        }
      }
    }
    batch.tryPut(this.prefix + 'm', JSON.stringify(t))
    await batch.flush()
    this.table = t
    if (this.loaded) this.before = Math.max(0, this.before - forgotten)
  }

  /** The current index of each of `ids` that has one. */
  private async lookup (ids: string[]): Promise<Map<string, number>> {
    const found = new Map<string, number>()
    if (ids.length === 0) return found
    const batch = this.db.read({ autoDestroy: true })
    const values = ids.map(id => batch.get(this.prefix + 'i/' + id))
    batch.tryFlush()
    const read = await Promise.all(values)
    read.forEach((v: Buffer | null, k) => { if (v !== null) found.set(ids[k], Number(v.toString())) })
    return found
  }

  /** The oldest entry in [from, to), read ahead up to READ_AHEAD at a time: trims take from the front of the table. */
  private async oldest (from: number, to: number, removed: (index: number) => boolean): Promise<IdEntry | null> {
    while (true) {
      while (this.ahead.length > 0 && (this.ahead[0].index < from || this.gone.has(this.ahead[0].index) || removed(this.ahead[0].index))) {
        this.gone.delete(this.ahead[0].index)
        this.ahead.shift()
      }
      if (this.ahead.length > 0) return this.ahead[0].index < to ? this.ahead[0] : null
      const start = Math.max(from, this.aheadTo)
      if (start >= to) return null
      // a few at first (a wake trims one or two), more as the room keeps trimming
      const size = this.aheadSize
      this.aheadSize = Math.min(READ_AHEAD, size * 2)
      for await (const e of this.indexed(start, to, size)) this.ahead.push(e)
      this.aheadTo = this.ahead.length < size ? to : this.ahead[this.ahead.length - 1].index + 1
      this.gone.clear()
      if (this.ahead.length === 0) return null
    }
  }

  /** The ids indexed for the records in [from, to), oldest first. */
  private async * indexed (from: number, to: number, limit = Infinity): AsyncGenerator<IdEntry> {
    if (from >= to) return
    const range = { gte: this.prefix + 'n/' + pad(from), lt: this.prefix + 'n/' + pad(to) }
    for await (const { key, value } of this.db.iterator(range, { limit, capacity: Math.min(limit, 256) })) {
      const k = key.toString()
      yield { index: Number(k.slice(k.lastIndexOf('/') + 1)), id: value.toString() }
    }
  }
}

/** Removes the ids of the core `coreKey` (hex), as its room is removed. */
export async function dropIds (store: Corestore, coreKey: string): Promise<void> {
  const db = store.storage.rocks.session()
  try {
    const prefix = prefixOf(coreKey)
    await db.deleteRange(prefix, prefix + END)
  } finally {
    await db.close()
  }
}

function prefixOf (coreKey: string): string {
  return `${PREFIX}${coreKey}/`
}

/** The store's RocksDB, which the core's blocks are written to: the ids are written after them, in the same log. */
function rocksOf (core: Hypercore): any {
  return (core as any).state.storage.store.rocks
}

function pad (index: number): string {
  return String(index).padStart(15, '0')
}
