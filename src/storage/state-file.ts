import fs from 'node:fs/promises'
import path from 'node:path'
import safetyCatch from 'safety-catch'

export const STATE_FILE = 'root-peer-state.json'
/** Every file of ours in the data dir begins so (the state file, its temp file, its previous copy, bad ones kept aside). */
export const STATE_FILE_PREFIX = 'root-peer-state'
/** The previous good state file, kept beside the current one. */
export const PREVIOUS_STATE_FILE = 'root-peer-state.prev.json'

export interface RoomState {
  name: string
  messageCount: number
  createdAt: number
  lastActivity: number
  /** bytes the room's blocks hold (not in the seed's file; added, reconciled from the core) */
  byteLength: number
  /** a signed room's writer public key, hex (also in the room index) */
  writerPublicKey?: string
  /** the first index still held; blocks before it were pruned by retention (checked against the core) */
  firstIndex?: number
  /** bytes of the pruned blocks */
  prunedBytes?: number
  /** the room's core key, hex (known once its core was opened; for a mirrored room, from the room index) */
  coreKey?: string
  /** a mirrored room: the public key (hex) of the cluster member whose core holds it; absent when this root peer is its primary */
  primary?: string
  /** the gone member this room was taken over from (`root-peer promote`), by this root peer or by its primary, hex */
  promotedFrom?: string
  /** a room signed after unsigned messages were stored: the first index of its signed history (members are served from here) */
  signedFrom?: number
  /** a room registered again after `root-peer rooms --remove`: its core is a new one, named for this generation */
  generation?: number
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
  /** Why the state file could not be used ('missing', 'empty', ...), when it is missing or bad; null when it was good. */
  problem: string | null
  /** Where a bad file was moved for inspection. */
  movedTo: string | null
  /** True when the state came from the previous good copy. */
  fromPrevious: boolean
}

/**
 * Reads and writes the state file. Writes are atomic (temp file, fsync, rename), so a crash
 * leaves either the old file or the new one, never half of one; the file it replaces is kept
 * as the previous good copy. Saves are serialised.
 */
export class StateFile {
  readonly file: string
  readonly previous: string
  private saving: Promise<void> | null = null
  private again: (() => PersistentState) | null = null

  constructor (dir: string) {
    this.file = path.join(dir, STATE_FILE)
    this.previous = path.join(dir, PREVIOUS_STATE_FILE)
  }

  /**
   * Reads the state file; a bad one is moved aside (unless `moveBad` is false, for a look that must change
   * nothing) and the previous good copy is used when there is one.
   */
  async load ({ moveBad = true } = {}): Promise<LoadResult> {
    const text = await readIfExists(this.file)
    const problem = text === null ? 'missing' : text.trim() === '' ? 'empty' : checkShape(text)
    if (problem === null) return { state: sanitise(JSON.parse(text!)), problem: null, movedTo: null, fromPrevious: false }
    let movedTo: string | null = null
    if (text !== null && moveBad) {
      movedTo = `${this.file}.bad-${Date.now()}`
      await fs.rename(this.file, movedTo)
    }
    const prev = await readIfExists(this.previous)
    const fromPrevious = prev !== null && prev.trim() !== '' && checkShape(prev) === null
    return { state: fromPrevious ? sanitise(JSON.parse(prev)) : null, problem, movedTo, fromPrevious }
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
      if (next !== null) this.save(next).catch(safetyCatch)
    })
    return this.saving
  }

  /** Resolves when no save is running or queued. */
  async flushed (): Promise<void> {
    while (this.saving !== null) await this.saving.catch(safetyCatch)
  }

  private async write (state: PersistentState): Promise<void> {
    const tmp = `${this.file}.tmp`
    // private whatever the umask, also over a temp file an older version left: it lists every room
    const handle = await fs.open(tmp, 'w', 0o600)
    try {
      await handle.chmod(0o600)
      await handle.writeFile(JSON.stringify(state, null, 2))
      await handle.sync()
    } finally {
      await handle.close()
    }
    // the file being replaced becomes the previous good copy (a hard link, then an atomic rename)
    const prevTmp = `${this.previous}.tmp`
    try {
      await fs.rm(prevTmp, { force: true })
      await fs.link(this.file, prevTmp)
      await fs.rename(prevTmp, this.previous)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    await fs.rename(tmp, this.file)
  }
}

async function readIfExists (file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
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
        byteLength: num(r.byteLength),
        ...(typeof r.writerPublicKey === 'string' && /^[0-9a-f]{64}$/.test(r.writerPublicKey) ? { writerPublicKey: r.writerPublicKey } : {}),
        ...(num(r.firstIndex) > 0 ? { firstIndex: num(r.firstIndex), prunedBytes: num(r.prunedBytes) } : {})
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
