import { EventEmitter } from 'node:events'
import path from 'node:path'
import { freeBytes, fullBelow, writable } from './disk.js'
import { RootPeerError } from 'root-peer-client/protocol'

const RETRY_MIN = 1000
const RETRY_MAX = 30_000

/** Whether the data dir takes writes (docs/durability.md). Events: `storage-failed`, `storage-recovered`. */
export class StorageHealth extends EventEmitter {
  failure: RootPeerError | null = null
  reopening: Promise<void> | null = null
  private readonly dir: string
  private readonly writeBuffer: number
  private readonly reopen: () => Promise<void>
  private timer: NodeJS.Timeout | null = null
  private closed = false

  constructor (opts: { dir: string, writeBuffer: number, reopen: () => Promise<void> }) {
    super()
    this.dir = opts.dir
    this.writeBuffer = opts.writeBuffer
    this.reopen = opts.reopen
  }

  reason (): string | null {
    const failure = this.failure
    if (failure === null) return null
    if (failure.code === 'STORAGE_FULL') return `storage full: ${String(failure.details.freeBytes ?? 0)} bytes free in ${this.dir}; writes are refused until there is room`
    const cause = failure.cause instanceof Error ? failure.cause.message : String(failure.cause)
    return `storage error in ${this.dir}: ${cause}; writes are refused until a write succeeds again`
  }

  async recordFailure (err: unknown): Promise<RootPeerError> {
    if (this.failure !== null) return this.failure
    const free = await freeBytes(this.dir)
    if (this.failure !== null) return this.failure
    const failure = free !== null && free < fullBelow(this.writeBuffer) ? RootPeerError.STORAGE_FULL(free, err) : RootPeerError.STORAGE_ERROR(err)
    this.failure = failure
    this.emit('storage-failed', { code: failure.code, freeBytes: free, err })
    this.schedule(RETRY_MIN)
    return failure
  }

  close (): void {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
  }

  private schedule (delay: number): void {
    if (this.closed || this.timer !== null) return
    this.timer = setTimeout(() => {
      this.timer = null
      const again = (): void => this.schedule(Math.min(delay * 2, RETRY_MAX))
      this.recover().then(ok => { if (!ok) again() }, again)
    }, delay)
  }

  private async recover (): Promise<boolean> {
    if (this.closed || this.failure === null) return true
    if (!(await writable(this.dir, fullBelow(this.writeBuffer)))) return false
    // the store reopens in db/ (hypercore-storage's RocksDB): were it closed and not opened again, no room could be read
    if (!(await writable(path.join(this.dir, 'db'), 0))) return false
    const reopening = this.reopen()
    this.reopening = reopening
    try {
      await reopening
    } catch (err) {
      this.emit('storage-recovery-failed', err)
      return false
    } finally {
      this.reopening = null
    }
    if (this.closed) return true
    this.failure = null
    this.emit('storage-recovered')
    return true
  }
}
