import fs from 'node:fs/promises'
import path from 'node:path'
import type Corestore from 'corestore'
import safetyCatch from 'safety-catch'

/**
 * Makes completed appends survive a power loss, not only a process crash. Hypercore's storage
 * (RocksDB) writes its write-ahead log without syncing it; this fsyncs the log. Callers that
 * arrive while a sync runs share the next one, so a busy root peer pays one fsync per batch.
 */
export class WalSync {
  private readonly store: () => Corestore
  private running: Promise<void> | null = null
  private queued: Promise<void> | null = null
  private wal: { number: number, file: fs.FileHandle } | null = null

  /** `store` returns the store in use now (it is replaced when storage is reopened after an error). */
  constructor (store: () => Corestore) {
    this.store = store
  }

  /** Resolves once everything written before the call is on disk. */
  sync (): Promise<void> {
    if (this.running === null) {
      this.running = this.run().finally(() => { this.running = null })
      return this.running
    }
    // a sync already running may have started before our write: wait for the next one
    if (this.queued === null) {
      this.queued = this.running.catch(safetyCatch).then(() => {
        this.queued = null
        return this.sync()
      })
    }
    return this.queued
  }

  async close (): Promise<void> {
    while (this.running !== null || this.queued !== null) await (this.queued ?? this.running)?.catch(safetyCatch)
    if (this.wal !== null) await this.wal.file.close()
    this.wal = null
  }

  private async run (): Promise<void> {
    const rocks = this.store().storage.rocks
    const current = await rocks.currentWalFile()
    if (this.wal !== null && this.wal.number === current.number) {
      await this.wal.file.sync()
      return
    }
    // the log was switched: what went into the previous one is synced before it is let go
    if (this.wal !== null) {
      const previous = this.wal.file
      this.wal = null
      await previous.sync().catch(safetyCatch)
      await previous.close()
    }
    const file = await fs.open(path.join(rocks.path, current.path), 'r')
    this.wal = { number: current.number, file }
    await file.sync()
    // a new log file's directory entry, too
    const dir = await fs.open(rocks.path, 'r')
    try {
      await dir.sync()
    } finally {
      await dir.close()
    }
  }
}
