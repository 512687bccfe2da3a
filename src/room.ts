import type Hypercore from 'hypercore'
import { parseRecord, pageEntry } from './protocol.js'
import type { RoomState } from './state-file.js'

/** Ids remembered per room for deduplication (the newest ones). */
export const DEDUP_WINDOW = 10_000
/** Most blocks one append carries. */
const MAX_BATCH = 1024

interface PendingAppend {
  block: Buffer
  resolve: (index: number) => void
  reject: (err: unknown) => void
}

export interface Page {
  /** Each entry is one stored record as JSON text, with `messageIndex` added. */
  entries: string[]
  nextIndex: number
  totalMessages: number
}

/**
 * One room: its Hypercore, a group-commit write queue and the ids it has stored.
 * Appends that arrive while one is in flight go into the next append as one batch.
 */
export class Room {
  readonly name: string
  readonly core: Hypercore
  readonly info: RoomState
  /** the name as a JSON string, for the frames that carry it */
  readonly nameJson: string
  private queue: PendingAppend[] = []
  private flushing: Promise<void> | null = null
  private last: Promise<unknown> | null = null
  private ids: Map<string, number | Promise<number>> | null = null
  private loadingIds: Promise<void> | null = null
  /** called before each core append, for the appendBatches counter */
  private readonly onBatch: (() => void) | null

  constructor (name: string, core: Hypercore, info: RoomState, onBatch: (() => void) | null = null) {
    this.name = name
    this.core = core
    this.info = info
    this.nameJson = JSON.stringify(name)
    this.onBatch = onBatch
  }

  /** A mirrored room (another cluster member is its primary): never appended to here. */
  get mirrored (): boolean {
    return this.info.primary !== undefined
  }

  /** Messages held: for a mirrored room, the blocks stored here without a gap (what can be served). */
  get length (): number {
    return this.mirrored ? Math.min(this.core.length, this.core.contiguousLength) : this.core.length
  }

  /** Appends one block; resolves with its index once the append holding it has completed. */
  append (block: Buffer): Promise<number> {
    const appended = new Promise<number>((resolve, reject) => {
      this.queue.push({ block, resolve, reject })
      if (this.flushing === null) this.flushing = this.flush()
    })
    this.last = appended
    return appended
  }

  /** Resolves when the appends queued before the call have completed; later ones are not waited for. */
  async barrier (): Promise<void> {
    const last = this.last
    if (last !== null) await last.catch(() => {})
  }

  /** Resolves when every append queued before the call has completed (or failed). */
  async settled (): Promise<void> {
    while (this.flushing !== null) await this.flushing
  }

  /** Resolves once the ids of the room's newest blocks are loaded, so duplicates are found across restarts. */
  idsReady (): Promise<void> | null {
    if (this.ids !== null) return null
    if (this.loadingIds === null) this.loadingIds = this.loadIds()
    return this.loadingIds
  }

  /**
   * Appends a block carrying `id` unless that id is stored or being stored already, in which case it resolves
   * with the original index. Check and insert are synchronous, so two connections resending one id race safely.
   * Call after `idsReady()`.
   */
  storeOnce (id: string, block: Buffer): Promise<{ index: number, duplicate: boolean }> {
    const ids = this.ids
    if (ids === null) throw new Error('storeOnce before idsReady')
    const found = ids.get(id)
    if (found !== undefined) return Promise.resolve(found).then(index => ({ index, duplicate: true }))
    const pending = this.append(block)
    ids.set(id, pending)
    if (ids.size > DEDUP_WINDOW) ids.delete(ids.keys().next().value as string)
    return pending.then(index => {
      if (ids.get(id) === pending) ids.set(id, index)
      return { index, duplicate: false }
    }, err => {
      if (ids.get(id) === pending) ids.delete(id)
      throw err
    })
  }

  /** Reads up to `limit` records from `from`, concurrently, stopping early at `maxBytes` (at least one record). */
  async readPage (from: number, limit: number, maxBytes: number): Promise<Page> {
    const totalMessages = this.length
    const end = Math.min(totalMessages, from + limit)
    const gets: Array<Promise<Buffer | null>> = []
    for (let i = from; i < end; i++) gets.push(this.core.get(i, { wait: false }))
    const blocks = await Promise.all(gets)
    const entries: string[] = []
    let bytes = 0
    let next = from
    for (const block of blocks) {
      if (block === null) break
      const entry = pageEntry(block, next)
      if (entries.length > 0 && bytes + entry.length > maxBytes) break
      entries.push(entry)
      bytes += entry.length + 1
      next++
    }
    return { entries, nextIndex: Math.max(next, from), totalMessages }
  }

  async close (): Promise<void> {
    await this.settled()
    await this.core.close()
  }

  private async flush (): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH)
      try {
        if (this.onBatch !== null) this.onBatch()
        const { length } = await this.core.append(batch.map(p => p.block))
        const first = length - batch.length
        for (let i = 0; i < batch.length; i++) batch[i].resolve(first + i)
      } catch (err) {
        for (const p of batch) p.reject(err)
      }
    }
    this.flushing = null
  }

  private async loadIds (): Promise<void> {
    const ids = new Map<string, number | Promise<number>>()
    const end = this.core.length
    const start = Math.max(0, end - DEDUP_WINDOW)
    const CHUNK = 256
    for (let at = start; at < end; at += CHUNK) {
      const gets: Array<Promise<Buffer | null>> = []
      for (let i = at; i < Math.min(end, at + CHUNK); i++) gets.push(this.core.get(i, { wait: false }))
      const blocks = await Promise.all(gets)
      blocks.forEach((block, k) => {
        const record = block === null ? null : parseRecord(block)
        if (record !== null && typeof record.id === 'string') ids.set(record.id, at + k)
      })
    }
    this.ids = ids
  }
}
