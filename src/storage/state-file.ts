import fs from 'node:fs/promises'
import path from 'node:path'
import safetyCatch from 'safety-catch'

export const STATE_FILE = 'root-peer-state.json'
export const STATE_FILE_PREFIX = 'root-peer-state'
export const PREVIOUS_STATE_FILE = 'root-peer-state.prev.json'
// a state file lists every room up to this many; above, the most recently active ones (docs/scaling.md)
export const STATE_FILE_ROOMS = 1000

export interface RoomState {
  name: string
  messageCount: number
  createdAt: number
  lastActivity: number
  /** not in the original design's file: reconciled from the core */
  byteLength: number
  writerPublicKey?: string
  firstIndex?: number
  prunedBytes?: number
  coreKey?: string
  /** a mirrored room: the member whose core holds it (hex); absent when this root peer is its primary */
  primary?: string
  promotedFrom?: string
  /** a room signed after unsigned messages were stored: the first index of its signed history */
  signedFrom?: number
  generation?: number
  /** the epoch of the control log's last decision for the room this member applied (automatic failover) */
  epoch?: number
}

export interface PersistentState {
  rooms: Record<string, RoomState>
  totalMessages: number
  /** not in the original design's file: how many rooms there are, and whether `rooms` lists them all */
  totalRooms?: number
  roomsListed?: 'all' | 'most-recent'
  rootPeerCreatedAt: number
  lastSaved: number
}

export interface LoadResult {
  state: PersistentState | null
  problem: string | null
  movedTo: string | null
  fromPrevious: boolean
}

/** Reads and writes the state file atomically (temp file, fsync, rename), keeping the previous good copy. */
export class StateFile {
  readonly file: string
  readonly previous: string
  private saving: Promise<void> | null = null
  private again: (() => Promise<PersistentState>) | null = null

  constructor (dir: string) {
    this.file = path.join(dir, STATE_FILE)
    this.previous = path.join(dir, PREVIOUS_STATE_FILE)
  }

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

  save (take: () => Promise<PersistentState>): Promise<void> {
    if (this.saving !== null) {
      this.again = take
      return this.saving
    }
    this.saving = take().then(state => this.write(state)).finally(() => {
      this.saving = null
      const next = this.again
      this.again = null
      if (next !== null) this.save(next).catch(safetyCatch)
    })
    return this.saving
  }

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
    ...(obj.roomsListed === 'most-recent' ? { roomsListed: 'most-recent', totalRooms: num(obj.totalRooms) } : {}),
    rootPeerCreatedAt: num(obj.rootPeerCreatedAt),
    lastSaved: num(obj.lastSaved)
  }
}

function num (v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0
}
