import type Hypercore from 'hypercore'
import { MAX_ID, parseRecord, pageEntry } from '../protocol/protocol.js'
import type { RoomState } from './state-file.js'
import { DEDUP_ID_CHARS, DEDUP_WINDOW, IdIndex, type IdEntry } from './id-index.js'
import safetyCatch from 'safety-catch'

export { DEDUP_ID_CHARS, DEDUP_WINDOW }
const LOAD_CHUNK = 256
const LOAD_CHUNK_BYTES = 1024 * 1024
const BLIND_CHUNK = 16
const MAX_ANCHORS = 32
// bisection needs about 2 × log2(bytes) seeks
const MAX_SEEKS = 128
const MAX_BATCH = 1024

interface PendingAppend {
  block: Buffer
  // the record's id; null: none; undefined: not known (the block is read for it)
  id?: string | null
  resolve: (index: number) => void
  reject: (err: unknown) => void
}

interface InLine {
  // the id to store once
  dedup?: string
  // the record's id, for the id index (see PendingAppend)
  index: string | null | undefined
  prepare: () => Buffer
  looked: Promise<number | null> | null
  resolve: (r: { index: number, duplicate: boolean }) => void
  reject: (err: unknown) => void
}

export interface Page {
  entries: string[]
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
  // the ids stored since the room opened, held until the id index has them at least: a lookup begun before
  // an id's entry is written still finds it here, unless past the bounds, where the index forgets it too
  private ids = new DedupIds()
  private readonly index: IdIndex
  // blocks waiting for their id's lookup, and those behind them, in the order they came
  private waiting: InLine[] = []
  private pumping: Promise<void> | null = null
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
    // read when first needed; the records from here on are written to it as they are appended
    this.index = new IdIndex(core, (from, to) => this.readIds(from, to))
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
    this.ids = new DedupIds()
    this.ids.floor = this.nextIndex
    this.index.dropBelow(this.nextIndex).catch(safetyCatch)
  }

  /** Forgets the ids of the messages below `index` (pruned): a resend of one is stored again (docs/configuration.md). */
  forgetIdsBelow (index: number): void {
    for (const [id, at] of this.ids) if (typeof at === 'number' && at < index) this.ids.delete(id)
    this.index.dropBelow(index).catch(safetyCatch)
  }

  /** The ids the room keeps (in its id index, once written). */
  get idCount (): number {
    return this.index.count
  }

  get idChars (): number {
    return this.index.chars
  }

  /** Queues the block, after what is already in line; `id` is the record's (null: it has none), or the block is read for it. */
  append (block: Buffer, id?: string | null): Promise<number> {
    return this.line({ index: id, prepare: () => block }).then(r => r.index)
  }

  /**
   * Stores a block, in line with every other, unless `id` is kept (then resolves with its index, as a duplicate).
   * Its id is looked up in the id index at once; `prepare` makes the block when its turn comes, with no await before
   * its append, and may refuse it by throwing.
   */
  store (id: string | undefined, prepare: () => Buffer): Promise<{ index: number, duplicate: boolean }> {
    return this.line({ dedup: id, index: id ?? null, prepare })
  }

  /** As `store`, resolving once the id index is written too. */
  async storeOnce (id: string, block: Buffer): Promise<{ index: number, duplicate: boolean }> {
    const result = await this.store(id, () => block)
    await this.index.settled()
    return result
  }

  /** Resolves when the appends queued before the call have completed; later ones are not waited for. */
  async barrier (): Promise<void> {
    const last = this.last
    if (last !== null) await last.catch(safetyCatch)
  }

  /** Resolves once every append queued, and its ids, are written. */
  async settled (): Promise<void> {
    while (this.pumping !== null) await this.pumping
    while (this.flushing !== null) await this.flushing
    await this.index.settled()
  }

  /** Null once the id index reaches the records there were at open (it reads the few past what it had written). */
  idsReady (): Promise<void> | null {
    return this.index.ready()
  }

  /** The index of the record stored with `id` that the room still keeps, from the id index (one read); null if none. */
  async lookupId (id: string): Promise<number | null> {
    const index = await this.index.get(id)
    return index !== null && this.keeps(index) ? index : null
  }

  private line (entry: Omit<InLine, 'looked' | 'resolve' | 'reject'>): Promise<{ index: number, duplicate: boolean }> {
    const stored = new Promise<{ index: number, duplicate: boolean }>((resolve, reject) => {
      const e: InLine = { ...entry, looked: this.mayBeIndexed(entry.dedup) ? this.lookupId(entry.dedup!) : null, resolve, reject }
      // the lookups run at once, side by side; the blocks are queued in the order they came
      e.looked?.catch(safetyCatch)
      if (this.waiting.length === 0 && e.looked === null) return this.take(e, null)
      this.waiting.push(e)
      if (this.pumping === null) this.pumping = this.pump()
    })
    this.last = stored
    return stored
  }

  private async pump (): Promise<void> {
    while (this.waiting.length > 0) {
      const e = this.waiting[0]
      let known: number | null = null
      try {
        known = await e.looked
      } catch (err) {
        this.waiting.shift()
        e.reject(err)
        continue
      }
      this.waiting.shift()
      this.take(e, known)
    }
    this.pumping = null
  }

  /** Its turn: a duplicate is answered, else the block is made and queued; no await in here. */
  private take (e: InLine, known: number | null): void {
    const ids = this.ids
    const id = e.dedup
    if (id !== undefined) {
      // check and insert with no await between: two connections resending one id race safely
      const found = ids.get(id)
      if (found !== undefined) return void Promise.resolve(found).then(index => e.resolve({ index, duplicate: true }), e.reject)
      if (known !== null && this.keeps(known)) return e.resolve({ index: known, duplicate: true })
    }
    let block: Buffer
    try {
      block = e.prepare()
    } catch (err) {
      return e.reject(err)
    }
    const pending = this.enqueue(block, e.index)
    if (id !== undefined) {
      ids.set(id, pending)
      pending.then(index => { if (ids.get(id) === pending) ids.set(id, index) }, () => { if (ids.get(id) === pending) ids.delete(id) })
    }
    pending.then(index => e.resolve({ index, duplicate: false }), e.reject)
  }

  private enqueue (block: Buffer, id: string | null | undefined): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ block, id, resolve, reject })
      if (this.flushing === null) this.flushing = this.flush()
    })
  }

  /** Up to `limit` records from `from` in at most `maxBytes` (at least one); stops at a block missing here. */
  async readPage (from: number, limit: number, maxBytes: number): Promise<Page> {
    const totalMessages = this.length
    const end = Math.min(totalMessages, from + limit)
    const entries: string[] = []
    let next = from
    // the page's bytes so far, counting a comma before each entry but the first
    let bytes = -1
    const take = (blocks: Array<Buffer | null>): boolean => {
      for (const block of blocks) {
        if (block === null) return false
        const entry = pageEntry(block, next)
        const size = Buffer.byteLength(entry) + 1
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
    await this.index.close()
    await this.core.close()
  }

  private async flush (): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH)
      try {
        if (this.onBatch !== null) this.onBatch()
        this.appendingFrom = this.core.length
        this.appending = batch.length
        const { length } = await this.core.append(batch.map(p => p.block))
        const first = length - batch.length
        // written after the blocks, in the same log: an entry that survives a crash names a block that did. Not
        // waited for: until it is written the ids are held here, and a crash before leaves them to the next open's tail
        const entries: IdEntry[] = []
        batch.forEach((p, i) => {
          const id = p.id === undefined ? idOf(p.block) : p.id
          if (id !== null) entries.push({ id, index: first + i })
        })
        this.index.write(entries, length).catch(safetyCatch)
        for (let i = 0; i < batch.length; i++) batch[i].resolve(first + i)
      } catch (err) {
        for (const p of batch) p.reject(err)
      } finally {
        this.appending = 0
      }
    }
    this.flushing = null
  }

  /** Whether the id may be in the id index and not held here: an id held here, or in a room whose index holds only what is held here, is not looked up. */
  private mayBeIndexed (id: string | undefined): boolean {
    return id !== undefined && !this.ids.has(id) && !this.index.complete
  }

  /** Whether the record at `index` is still one whose id the room keeps: not pruned, not below its signing. */
  private keeps (index: number): boolean {
    const floor = Math.max(this.info.signedFrom ?? 0, this.info.firstIndex ?? 0, this.ids.floor)
    return index >= floor && index < this.core.length
  }

  /** The ids of the records in [from, to), read in chunks of at most LOAD_CHUNK blocks and LOAD_CHUNK_BYTES. */
  private async readIds (from: number, to: number): Promise<IdEntry[]> {
    const entries: IdEntry[] = []
    for (let at = from; at < to;) {
      const chunkEnd = Math.min(to, at + LOAD_CHUNK)
      const fit = await this.fitting(at, chunkEnd, LOAD_CHUNK_BYTES, 0)
      const stop = fit?.stop ?? Math.min(chunkEnd, at + BLIND_CHUNK)
      const blocks = await this.getRange(at, stop)
      blocks.forEach((block, k) => {
        const id = block === null ? null : idOf(block)
        if (id !== null) entries.push({ id, index: at + k })
      })
      if (fit !== null && fit.start !== null && !blocks.includes(null)) this.anchor(stop, fit.start + sumBytes(blocks))
      at = stop
    }
    return entries
  }

  private getRange (from: number, to: number): Promise<Array<Buffer | null>> {
    const gets: Array<Promise<Buffer | null>> = []
    for (let i = from; i < to; i++) gets.push(this.core.get(i, { wait: false }))
    return Promise.all(gets)
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
  // the ids of the records below it are forgotten, in the id index too
  floor = 0
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
