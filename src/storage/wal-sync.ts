import fs from 'node:fs/promises'
import path from 'node:path'
import type Corestore from 'corestore'
import safetyCatch from 'safety-catch'

/** Fsyncs RocksDB's write-ahead log, which Hypercore writes unsynced (SYNC_WRITES, docs/durability.md). */
export class WalSync {
  private readonly store: () => Corestore
  private running: Promise<void> | null = null
  private queued: Promise<void> | null = null
  private wal: { number: number, file: fs.FileHandle } | null = null

  constructor (store: () => Corestore) {
    this.store = store
  }

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
