import type Corestore from 'corestore'
import type { RoomState } from './state-file.js'

// the keys live in the default column family of the store's RocksDB, which Hypercore leaves unused
const ROOM = 'rooms/r/'
const GENERATION = 'rooms/g/'
const EMPTY = 'rooms/e/'
const AWAKE = 'rooms/a/'
const SIGNER = 'rooms/k/'
const TOTALS = 'rooms/totals'
const END = '\xff'

/** A room as the index stores it: `emptyAt` orders rooms without messages, least recently used first. */
export interface IndexRecord extends RoomState {
  emptyAt?: number
}

export interface Totals {
  rooms: number
  messages: number
  bytes: number
  empty: number
}

/** What a signed room leaves when it is removed: its name stays signed under this key (docs/security.md). */
export interface Signer {
  writerPublicKey: string
  signedFrom?: number
}

export type IndexOp = { put: string, value: string } | { del: string }

interface Pending {
  ops: IndexOp[]
  resolve: () => void
  reject: (err: unknown) => void
}

export const ops = {
  putRoom: (r: IndexRecord): IndexOp => ({ put: ROOM + r.name, value: JSON.stringify(r) }),
  delRoom: (name: string): IndexOp => ({ del: ROOM + name }),
  putGeneration: (name: string, generation: number): IndexOp => ({ put: GENERATION + name, value: String(generation) }),
  delGeneration: (name: string): IndexOp => ({ del: GENERATION + name }),
  putSigner: (name: string, signer: Signer): IndexOp => ({ put: SIGNER + name, value: JSON.stringify(signer) }),
  putEmpty: (name: string, at: number): IndexOp => ({ put: emptyKey(name, at), value: '' }),
  delEmpty: (name: string, at: number): IndexOp => ({ del: emptyKey(name, at) }),
  putAwake: (name: string): IndexOp => ({ put: AWAKE + name, value: '' }),
  delAwake: (name: string): IndexOp => ({ del: AWAKE + name }),
  putTotals: (t: Totals): IndexOp => ({ put: TOTALS, value: JSON.stringify(t) })
}

/**
 * The room index: a record per room, kept in the store's RocksDB and written in group commits, so a room
 * that sleeps costs no memory and a restart reads totals instead of every room (docs/scaling.md).
 */
export class RoomIndex {
  private readonly db: any
  private queue: Pending[] = []
  private flushing: Promise<void> | null = null
  private readonly beforeFlush: () => IndexOp[]

  /** `beforeFlush` adds its ops (records whose counts changed, the totals) to every commit. */
  constructor (store: Corestore, beforeFlush: () => IndexOp[]) {
    this.db = store.storage.rocks.session()
    this.beforeFlush = beforeFlush
  }

  /** The room's record; for a removed room, its last generation and, if it was signed, its key. */
  async get (name: string): Promise<{ record: IndexRecord | null, generation: number | undefined, signer: Signer | undefined }> {
    const batch = this.db.read({ autoDestroy: true })
    const room = batch.get(ROOM + name)
    const generation = batch.get(GENERATION + name)
    const signer = batch.get(SIGNER + name)
    batch.tryFlush()
    const [r, g, k] = await Promise.all([room, generation, signer])
    return { record: r === null ? null : JSON.parse(r.toString()), generation: g === null ? undefined : Number(g.toString()), signer: k === null ? undefined : JSON.parse(k.toString()) }
  }

  async totals (): Promise<Totals | null> {
    const t = await this.db.get(TOTALS)
    return t === null ? null : JSON.parse(t.toString())
  }

  async * rooms (): AsyncGenerator<IndexRecord> {
    for await (const { value } of this.db.iterator({ gte: ROOM, lt: ROOM + END })) yield JSON.parse(value.toString())
  }

  async awake (): Promise<string[]> {
    const names: string[] = []
    for await (const { key } of this.db.iterator({ gte: AWAKE, lt: AWAKE + END }, { values: false })) names.push(key.toString().slice(AWAKE.length))
    return names
  }

  /** Rooms without messages, least recently used first, used before `before`; `at`: since when, as written. */
  async * empty (before = Infinity): AsyncGenerator<{ name: string, at: number }> {
    const lt = before === Infinity ? EMPTY + END : EMPTY + pad(before)
    for await (const { key } of this.db.iterator({ gte: EMPTY, lt }, { values: false })) {
      const k = key.toString()
      const slash = k.indexOf('/', EMPTY.length)
      yield { name: k.slice(slash + 1), at: Number(k.slice(EMPTY.length, slash)) }
    }
  }

  /** Resolves once `list` and everything queued with it is in RocksDB's log, in one atomic batch. */
  commit (list: IndexOp[] = []): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ ops: list, resolve, reject })
      if (this.flushing === null) this.flushing = this.flush()
    })
  }

  async settled (): Promise<void> {
    while (this.flushing !== null) await this.flushing
  }

  async close (): Promise<void> {
    await this.settled()
    await this.db.close()
  }

  private async flush (): Promise<void> {
    // the next batch takes whatever was queued while this one was written
    await Promise.resolve()
    while (this.queue.length > 0) {
      const pending = this.queue
      this.queue = []
      try {
        const batch = this.db.write({ autoDestroy: true })
        for (const p of pending) for (const op of p.ops) apply(batch, op)
        for (const op of this.beforeFlush()) apply(batch, op)
        await batch.flush()
        for (const p of pending) p.resolve()
      } catch (err) {
        for (const p of pending) p.reject(err)
      }
    }
    this.flushing = null
  }
}

function apply (batch: any, op: IndexOp): void {
  // the try- forms: the batch's flush reports a failure, not a promise per key
  if ('put' in op) batch.tryPut(op.put, op.value)
  else batch.tryDelete(op.del)
}

function emptyKey (name: string, at: number): string {
  return `${EMPTY}${pad(at)}/${name}`
}

function pad (at: number): string {
  return String(Math.max(0, Math.floor(at))).padStart(15, '0')
}
