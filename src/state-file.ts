import fs from 'node:fs/promises'
import path from 'node:path'

export const STATE_FILE = 'root-peer-state.json'

export interface RoomState {
  name: string
  messageCount: number
  createdAt: number
  lastActivity: number
  /** bytes the room's blocks hold (not in the seed's file; added, reconciled from the core) */
  byteLength: number
}

/** The seed's `root-peer-state.json`, field for field. */
export interface PersistentState {
  rooms: Record<string, RoomState>
  totalMessages: number
  rootPeerCreatedAt: number
  lastSaved: number
}

export interface LoadResult {
  state: PersistentState | null
  /** Why the file on disk could not be used, when it exists but is bad. */
  problem: string | null
  /** Where the bad file was moved for inspection. */
  movedTo: string | null
}

/**
 * Reads and writes the state file. Writes are atomic (temp file, fsync, rename), so a crash
 * leaves either the old file or the new one, never half of one. Saves are serialised.
 */
export class StateFile {
  readonly file: string
  private saving: Promise<void> | null = null
  private again: (() => PersistentState) | null = null

  constructor (dir: string) {
    this.file = path.join(dir, STATE_FILE)
  }

  /** Reads the file; a bad one is moved aside (unless `moveBad` is false, for a look that must change nothing). */
  async load ({ moveBad = true } = {}): Promise<LoadResult> {
    let text: string
    try {
      text = await fs.readFile(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: null, problem: null, movedTo: null }
      throw err
    }
    const problem = text.trim() === '' ? 'empty' : checkShape(text)
    if (problem === null) return { state: sanitise(JSON.parse(text)), problem: null, movedTo: null }
    if (!moveBad) return { state: null, problem, movedTo: null }
    const movedTo = `${this.file}.bad-${Date.now()}`
    await fs.rename(this.file, movedTo)
    return { state: null, problem, movedTo }
  }

  /** Saves the snapshot `take()` returns; a save asked for while one runs is done once, after it. */
  save (take: () => PersistentState): Promise<void> {
    if (this.saving !== null) {
      this.again = take
      return this.saving
    }
    this.saving = this.write(take()).finally(() => {
      this.saving = null
      const next = this.again
      this.again = null
      if (next !== null) this.save(next).catch(() => {})
    })
    return this.saving
  }

  /** Resolves when no save is running or queued. */
  async flushed (): Promise<void> {
    while (this.saving !== null) await this.saving.catch(() => {})
  }

  private async write (state: PersistentState): Promise<void> {
    const tmp = `${this.file}.tmp`
    const handle = await fs.open(tmp, 'w')
    try {
      await handle.writeFile(JSON.stringify(state, null, 2))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(tmp, this.file)
  }
}

function checkShape (text: string): string | null {
  let obj: unknown
  try {
    obj = JSON.parse(text)
  } catch {
    return 'not valid JSON (truncated?)'
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return 'not a JSON object'
  const rooms = (obj as Record<string, unknown>).rooms
  if (typeof rooms !== 'object' || rooms === null || Array.isArray(rooms)) return 'has no "rooms" object'
  return null
}

/** Keeps only well-formed entries; the cores are reconciled against it anyway. */
function sanitise (obj: Record<string, any>): PersistentState {
  const rooms: Record<string, RoomState> = {}
  for (const [key, r] of Object.entries(obj.rooms as Record<string, any>)) {
    if (typeof r !== 'object' || r === null) continue
    Object.defineProperty(rooms, key, {
      value: {
        name: key,
        messageCount: num(r.messageCount),
        createdAt: num(r.createdAt),
        lastActivity: num(r.lastActivity),
        byteLength: num(r.byteLength)
      },
      enumerable: true,
      writable: true,
      configurable: true
    })
  }
  return {
    rooms,
    totalMessages: num(obj.totalMessages),
    rootPeerCreatedAt: num(obj.rootPeerCreatedAt),
    lastSaved: num(obj.lastSaved)
  }
}

function num (v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0
}
