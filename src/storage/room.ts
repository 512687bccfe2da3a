import type Hypercore from 'hypercore'
import { MAX_ID, parseRecord, pageEntry } from '../protocol/protocol.js'
import type { RoomState } from './state-file.js'
import { IdSnapshot, type IdEntry } from './id-snapshot.js'
import safetyCatch from 'safety-catch'

export const DEDUP_WINDOW = 10_000
export const DEDUP_ID_CHARS = 256 * 1024
const LOAD_CHUNK = 256
const LOAD_CHUNK_BYTES = 1024 * 1024
const BLIND_CHUNK = 16
const MAX_ANCHORS = 32
// bisection needs about 2 × log2(bytes) seeks
const MAX_SEEKS = 128
const MAX_BATCH = 1024

interface PendingAppend {
  block: Buffer
  // the record's id; null: none; undefined: not known (read from the block if the room's ids are held)
  id: string | null | undefined
  resolve: (index: number) => void
  reject: (err: unknown) => void
}

export interface Page {
  /** the records with their messageIndex, as bytes (protocol.ts pageEntry) */
  entries: Buffer[]
  nextIndex: number
  totalMessages: number
}

/** One room: its Hypercore, a group-commit write queue (docs/performance.md) and its dedup ids (docs/durability.md). */
export class Room {
  readonly name: string
  readonly core: Hypercore
  readonly info: RoomState
  readonly nameJson: string
  private queue: PendingAppend[] = []
  private appendingFrom = 0
  private appending = 0
  private flushing: Promise<void> | null = null
  private last: Promise<unknown> | null = null
  // the ids held in memory: those stored or read back since the room woke, and those of its snapshot once read
  private ids: DedupIds | null = null
  private loadingIds: Promise<void> | null = null
  // the room's snapshot as it woke, while its entries are not read into `ids`
  private disk: IdSnapshot | null = null
  private merging: Promise<void> | null = null
  // every id of the records below it is in `ids` or `disk` (or was forgotten by the bounds): the next snapshot's watermark
  private idsTo = 0
  private idsFork = 0
  // `ids` hold what is not on disk: the room writes a snapshot as it closes
  private idsChanged = false
  private readonly onBatch: (() => void) | null
  // known byte offsets of blocks (index to offset), valid for the core's fork `anchorsFork`
  private readonly anchors = new Map<number, number>()
  private anchorsFork = -1

  constructor (name: string, core: Hypercore, info: RoomState, onBatch: (() => void) | null = null) {
    this.name = name
    this.core = core
    this.info = info
    this.nameJson = JSON.stringify(name)
    this.onBatch = onBatch
  }

  get mirrored (): boolean {
    return this.info.primary !== undefined
  }

  /** For a mirrored room, the blocks stored here without a gap (what can be served). */
  get length (): number {
    return this.mirrored ? Math.min(this.core.length, this.core.contiguousLength) : this.core.length
  }

  get nextIndex (): number {
    // exact even between the core's append completing and this room hearing of it
    return Math.max(this.core.length, this.appendingFrom + this.appending) + this.queue.length
  }

  /** Forgets every id stored so far (the room was signed): a resend of one is stored again. */
  forgetIds (): void {
    if (this.ids === null) return
    this.ids = new DedupIds()
    this.idsChanged = true
  }

  /** Forgets the ids of the messages below `index` (pruned): a resend of one is stored again (docs/configuration.md). */
  forgetIdsBelow (index: number): void {
    if (this.ids === null) return
    for (const [id, at] of this.ids) if (typeof at === 'number' && at < index) this.ids.delete(id)
    this.idsChanged = true
  }

  get idCount (): number {
    return this.ids === null ? 0 : this.ids.size
  }

  get idChars (): number {
    return this.ids === null ? 0 : this.ids.chars
  }

  /** Queues the block; `id` is the record's (null: it has none), or it is read from the block while the room's ids are held. */
  append (block: Buffer, id?: string | null): Promise<number> {
    const appended = new Promise<number>((resolve, reject) => {
      this.queue.push({ block, id, resolve, reject })
      if (this.flushing === null) this.flushing = this.flush()
    })
    this.last = appended
    return appended
  }

  /** Resolves when the appends queued before the call have completed; later ones are not waited for. */
  async barrier (): Promise<void> {
    const last = this.last
    if (last !== null) await last.catch(safetyCatch)
  }

  async settled (): Promise<void> {
    while (this.flushing !== null) await this.flushing
  }

  /**
   * Null once `storeOnce(id)` can tell a duplicate from memory: the room's snapshot is read (one read), and its
   * entries too if its filter may hold `id` (a resend); without `id`, every id is read into memory.
   */
  idsReady (id?: string): Promise<void> | null {
    const ids = this.ids
    if (ids === null) {
      if (this.loadingIds === null) this.loadingIds = this.loadIds()
      return this.loadingIds.then(() => this.idsReady(id) ?? undefined)
    }
    if (this.disk === null || (id !== undefined && !this.mayBeOnDisk(ids, id))) return null
    if (this.merging === null) this.merging = this.mergeDisk().finally(() => { this.merging = null })
    return this.merging
  }

  storeOnce (id: string, block: Buffer): Promise<{ index: number, duplicate: boolean }> {
    const ids = this.ids
    if (ids === null || this.mayBeOnDisk(ids, id)) throw new Error('storeOnce before idsReady')
    // check and insert with no await between: two connections resending one id race safely
    const found = ids.get(id)
    if (found !== undefined) return Promise.resolve(found).then(index => ({ index, duplicate: true }))
    const pending = this.append(block, id)
    ids.set(id, pending)
    this.idsChanged = true
    // the room's ids as they are then: read together with its snapshot's meanwhile, or forgotten
    return pending.then(index => {
      if (this.ids?.get(id) === pending) this.ids.set(id, index)
      return { index, duplicate: false }
    }, err => {
      if (this.ids?.get(id) === pending) this.ids.delete(id)
      throw err
    })
  }

  /** Up to `limit` records from `from` in at most `maxBytes` (at least one); stops at a block missing here. */
  async readPage (from: number, limit: number, maxBytes: number): Promise<Page> {
    const totalMessages = this.length
    const end = Math.min(totalMessages, from + limit)
    const entries: Buffer[] = []
    let next = from
    // the page's bytes so far, counting a comma before each entry but the first
    let bytes = -1
    const take = (blocks: Array<Buffer | null>): boolean => {
      for (const block of blocks) {
        if (block === null) return false
        const entry = pageEntry(block, next)
        const size = entry.byteLength + 1
        if (entries.length > 0 && bytes + size > maxBytes) return false
        entries.push(entry)
        bytes += size
        next++
      }
      return true
    }
    if (from < end) {
      const overhead = entryOverhead(end - 1)
      const fit = await this.fitting(from, end, maxBytes, overhead)
      if (fit !== null) {
        const blocks = await this.getRange(from, fit.stop)
        if (take(blocks) && fit.start !== null) this.anchor(fit.stop, fit.start + sumBytes(blocks))
      } else {
        // the tree cannot say (nodes missing here): read in small steps, sized by the largest block seen
        let largest = 0
        for (let at = from; at < end && bytes < maxBytes;) {
          const n = largest === 0 ? 1 : Math.max(1, Math.min(BLIND_CHUNK, end - at, Math.floor((maxBytes - bytes) / largest)))
          const blocks = await this.getRange(at, at + n)
          for (const block of blocks) if (block !== null) largest = Math.max(largest, block.byteLength + overhead)
          if (!take(blocks)) break
          at += n
        }
      }
    }
    return { entries, nextIndex: Math.max(next, from), totalMessages }
  }

  async close (): Promise<void> {
    await this.settled()
    // once the blocks it names are written; a room that cannot write it reads its records back at its next wake
    if (this.idsChanged && !this.core.closed) await this.snapshotIds().catch(safetyCatch)
    await this.core.close()
  }

  private async flush (): Promise<void> {
    // the frames that arrived together are queued before the first append: a burst is one append, not 1 + the rest
    await new Promise(resolve => setImmediate(resolve))
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH)
      try {
        if (this.onBatch !== null) this.onBatch()
        this.appendingFrom = this.core.length
        this.appending = batch.length
        const { length } = await this.core.append(batch.map(p => p.block))
        const first = length - batch.length
        if (this.ids !== null && first === this.idsTo) this.noteIds(batch, first)
        for (let i = 0; i < batch.length; i++) batch[i].resolve(first + i)
      } catch (err) {
        for (const p of batch) p.reject(err)
      } finally {
        this.appending = 0
      }
    }
    this.flushing = null
  }

  /** The room's snapshot (its state and filter), and the records past it: none after a clean close, at most DEDUP_WINDOW. */
  private async loadIds (): Promise<void> {
    const ids = new DedupIds()
    const end = this.core.length
    const fork = this.core.fork
    let from = Math.max(0, end - DEDUP_WINDOW)
    let disk = await IdSnapshot.read(this.core)
    // one of another fork, past the blocks held, or further back than the window (appends without a close) is not used
    if (disk !== null && (disk.fork !== fork || disk.length > end || disk.length < from)) disk = null
    if (disk !== null) from = disk.length
    from = Math.max(from, this.info.firstIndex ?? 0)
    for (let at = from; at < end;) {
      const chunkEnd = Math.min(end, at + LOAD_CHUNK)
      const fit = await this.fitting(at, chunkEnd, LOAD_CHUNK_BYTES, 0)
      const stop = fit?.stop ?? Math.min(chunkEnd, at + BLIND_CHUNK)
      const blocks = await this.getRange(at, stop)
      blocks.forEach((block, k) => {
        const id = block === null ? null : idOf(block)
        if (id === null) return
        ids.delete(id)
        ids.set(id, at + k)
      })
      if (fit !== null && fit.start !== null && !blocks.includes(null)) this.anchor(stop, fit.start + sumBytes(blocks))
      at = stop
    }
    // a room signed while its ids loaded: the ids below its signed history are not its members'; pruned meanwhile: no duplicates
    const floor = this.floor()
    if (floor > 0) for (const [id, index] of ids) if ((index as number) < floor) ids.delete(id)
    this.ids = ids
    this.disk = disk
    this.idsTo = end
    this.idsFork = fork
    // records read back: a snapshot spares the next wake that read
    this.idsChanged = from < end
  }

  /** Reads the snapshot's entries into memory, under the bounds, before the ids stored since the room woke (newer). */
  private async mergeDisk (): Promise<void> {
    const entries = await this.disk!.entries(this.core)
    const floor = this.floor()
    const end = this.core.length
    const ids = new DedupIds()
    for (const [id, index] of entries) {
      if (index < floor || index >= end) continue
      ids.delete(id)
      ids.set(id, index)
    }
    for (const [id, index] of this.ids!) {
      ids.delete(id)
      ids.set(id, index)
    }
    this.ids = ids
    // the next snapshot is written whole; none if nothing is stored meanwhile (a resend read them)
    this.disk = null
  }

  /** The ids of a batch appended right after the records whose ids are held, which `storeOnce` has not noted. */
  private noteIds (batch: PendingAppend[], first: number): void {
    const ids = this.ids!
    batch.forEach((p, i) => {
      const id = p.id === undefined ? idOf(p.block) : null
      if (id === null) return
      ids.delete(id)
      ids.set(id, first + i)
      this.idsChanged = true
    })
    this.idsTo = first + batch.length
  }

  /** A segment of the ids held in memory added to the snapshot read at wake, or the whole snapshot written anew. */
  private async snapshotIds (): Promise<void> {
    // a core truncated since (a mirror's fork): its next wake reads the records
    if (this.core.fork !== this.idsFork) return
    if (this.disk !== null) {
      const entries = this.entries()
      if (this.disk.fits(entries, DEDUP_WINDOW, DEDUP_ID_CHARS)) {
        await this.disk.append(this.core, entries, this.idsTo)
        this.idsChanged = false
        return
      }
      // past the filter's capacity or twice the bounds: the entries read, merged, bounded and written anew
      await this.mergeDisk()
    }
    await IdSnapshot.write(this.core, this.entries(), this.idsTo)
    this.idsChanged = false
  }

  private entries (): IdEntry[] {
    const entries: IdEntry[] = []
    for (const [id, index] of this.ids!) if (typeof index === 'number') entries.push([id, index])
    return entries
  }

  /** Whether the snapshot read at wake may hold the id, not held in memory. */
  private mayBeOnDisk (ids: DedupIds, id: string): boolean {
    return this.disk !== null && !ids.has(id) && this.disk.mayHold(id)
  }

  /** The ids of the records below it are not the room's: pruned, or below its signing. */
  private floor (): number {
    return Math.max(this.info.signedFrom ?? 0, this.info.firstIndex ?? 0)
  }

  /**
   * Blocks [from, to) as stored here (null: not here), read in one batch of the store's: Hypercore's own get reads
   * each block on its own, at about a quarter of the speed (bench: 50,000 against 175,000-190,000 blocks/s).
   */
  private async getRange (from: number, to: number): Promise<Array<Buffer | null>> {
    const rx = this.core.state.storage.read()
    const reads: Array<Promise<Buffer | null>> = []
    for (let i = from; i < to; i++) reads.push(rx.getBlock(i))
    rx.tryFlush()
    const blocks = await Promise.all(reads)
    // one the batch did not see (a mirror downloading it, an append landing meanwhile) is asked for the usual way
    for (let k = 0; k < blocks.length; k++) if (blocks[k] === null) blocks[k] = await this.core.get(from + k, { wait: false })
    return blocks
  }

  private async fitting (from: number, end: number, maxBytes: number, overhead: number): Promise<{ stop: number, start: number | null } | null> {
    const core = this.core
    if (end - from <= 1 || core.byteLength + (end - from) * overhead <= maxBytes) return { stop: end, start: null }
    const start = await this.offsetOf(from)
    if (start === null) return null
    let budget = maxBytes
    // the first seek counts the blocks within maxBytes; if their overhead does not fit, the second makes room
    for (let pass = 0; pass < 2; pass++) {
      const target = start + Math.max(0, budget)
      let index = core.length
      let offset = core.byteLength
      if (target < core.byteLength) {
        const found = await core.seek(target, { wait: false })
        if (found === null) return null
        index = found[0]
        offset = target - found[1]
        this.anchor(index, offset)
      }
      const fits = Math.min(Math.max(0, index - from), end - from)
      if (fits === 0) return { stop: from + 1, start }
      if (offset - start + fits * overhead <= maxBytes || pass === 1) return { stop: from + fits, start }
      budget = maxBytes - fits * overhead
    }
    return { stop: from + 1, start }
  }

  private async offsetOf (index: number): Promise<number | null> {
    const core = this.core
    if (core.fork !== this.anchorsFork) {
      this.anchors.clear()
      this.anchorsFork = core.fork
    }
    if (index <= 0) return 0
    if (index >= core.length) return index === core.length ? core.byteLength : null
    const known = this.anchors.get(index)
    if (known !== undefined) return known
    let lo = 0
    let loBytes = 0
    let hi = core.length
    let hiBytes = core.byteLength
    for (const [i, bytes] of this.anchors) {
      if (i < index && i > lo) [lo, loBytes] = [i, bytes]
      else if (i > index && i < hi) [hi, hiBytes] = [i, bytes]
    }
    let min = loBytes
    let max = hiBytes
    for (let step = 0; step < MAX_SEEKS && min <= max; step++) {
      // interpolate and bisect in turn: a room of uneven blocks still takes O(log bytes) seeks
      const guess = step % 2 === 0 ? loBytes + Math.floor((index - lo) * (hiBytes - loBytes) / (hi - lo)) : Math.floor((min + max) / 2)
      const at = Math.min(Math.max(guess, min), max)
      const found = await core.seek(at, { wait: false })
      if (found === null) return null
      const [i, rel] = found
      const start = at - rel
      if (i === index) {
        this.anchor(index, start)
        return start
      }
      if (i < index) {
        [lo, loBytes] = [i, start]
        min = at + 1
      } else {
        [hi, hiBytes] = [i, start]
        max = start - 1
      }
    }
    return null
  }

  private anchor (index: number, offset: number): void {
    if (this.anchors.size >= MAX_ANCHORS && !this.anchors.has(index)) this.anchors.delete(this.anchors.keys().next().value as number)
    this.anchors.set(index, offset)
  }
}

function idOf (block: Buffer): string | null {
  const record = parseRecord(block)
  return record !== null && typeof record.id === 'string' && record.id.length <= MAX_ID ? record.id : null
}

/** Bytes an entry of a sync page adds to its block: `,"messageIndex":N` and the comma between entries. */
function entryOverhead (maxIndex: number): number {
  return 17 + String(maxIndex).length
}

function sumBytes (blocks: Array<Buffer | null>): number {
  let bytes = 0
  for (const block of blocks) bytes += block!.byteLength
  return bytes
}

/** A room's ids, oldest first: adding one forgets the oldest past DEDUP_WINDOW or DEDUP_ID_CHARS. */
export class DedupIds extends Map<string, number | Promise<number>> {
  chars = 0
  // the oldest id next: one iterator kept, since a new one walks past every id forgotten before it
  private oldest: IterableIterator<string> | null = null

  constructor () {
    super()
  }

  override set (id: string, value: number | Promise<number>): this {
    if (this.has(id)) return super.set(id, value)
    super.set(id, value)
    this.chars += id.length
    while (this.size > 1 && (this.size > DEDUP_WINDOW || this.chars > DEDUP_ID_CHARS)) this.forgetOldest()
    return this
  }

  private forgetOldest (): void {
    let next = this.oldest?.next()
    if (next === undefined || next.done === true) {
      this.oldest = this.keys()
      next = this.oldest.next()
    }
    this.delete(next.value as string)
  }

  override delete (id: string): boolean {
    if (!super.delete(id)) return false
    this.chars -= id.length
    return true
  }

  override clear (): void {
    super.clear()
    this.chars = 0
    this.oldest = null
  }
}
