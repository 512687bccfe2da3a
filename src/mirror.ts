import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import { RootPeerError } from './errors.js'

/** How often the waits for mirrors look at the cores' peers (Hypercore has no event for a peer's stored length). */
const POLL_INTERVAL = 10

/** Distinct cluster members that have stored `core` from block 0 up to `length` (their announced contiguous length). */
export function mirroredBy (core: Hypercore, length: number, isMember: (key: string) => boolean): number {
  const seen = new Set<string>()
  for (const peer of core.peers) {
    const key = peer.remotePublicKey.toString('hex')
    if (isMember(key) && peer.remoteContiguousLength >= length) seen.add(key)
  }
  return seen.size
}

interface Wait {
  core: Hypercore
  length: number
  wanted: number
  deadline: number
  timeout: number
  resolve: () => void
  reject: (err: RootPeerError) => void
}

/**
 * The primary's side of MIN_MIRRORS: a write waits until `wanted` members have announced that they
 * stored its block (a peer announces a block only after storing it), or fails with NOT_REPLICATED.
 */
export class MirrorWaits {
  private readonly waits = new Set<Wait>()
  private timer: NodeJS.Timeout | null = null
  private readonly isMember: (key: string) => boolean

  constructor (isMember: (key: string) => boolean) {
    this.isMember = isMember
  }

  /** Resolves once `wanted` members hold `core` up to `length`; rejects with NOT_REPLICATED after `timeout` ms. */
  wait (core: Hypercore, length: number, wanted: number, timeout: number): Promise<void> {
    if (wanted <= 0 || mirroredBy(core, length, this.isMember) >= wanted) return Promise.resolve()
    return new Promise((resolve, reject) => {
      this.waits.add({ core, length, wanted, deadline: Date.now() + timeout, timeout, resolve, reject })
      if (this.timer === null) this.timer = setInterval(() => this.check(), POLL_INTERVAL)
    })
  }

  /** Fails every wait (on shutdown). */
  close (): void {
    for (const w of this.waits) w.reject(RootPeerError.SHUTTING_DOWN())
    this.waits.clear()
    this.stop()
  }

  private check (): void {
    const now = Date.now()
    for (const w of this.waits) {
      const n = mirroredBy(w.core, w.length, this.isMember)
      if (n >= w.wanted) {
        this.waits.delete(w)
        w.resolve()
      } else if (now >= w.deadline) {
        this.waits.delete(w)
        w.reject(RootPeerError.NOT_REPLICATED(n, w.wanted, w.timeout))
      }
    }
    if (this.waits.size === 0) this.stop()
  }

  private stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }
}

interface Followed {
  core: Hypercore
  primary: string
  /** ms since the epoch when this mirror last fell behind the length it knows of; null while caught up */
  behindSince: number | null
}

/**
 * The mirror's side: one session per room another member is primary for, downloading its core from
 * block 0 and following it live. `onProgress` is called as blocks arrive.
 */
export class Mirrors {
  private readonly store: Corestore
  private readonly followed = new Map<string, Followed>()
  private readonly onProgress: (roomName: string, core: Hypercore) => void
  private closed = false

  constructor (store: Corestore, onProgress: (roomName: string, core: Hypercore) => void) {
    this.store = store
    this.onProgress = onProgress
  }

  get size (): number {
    return this.followed.size
  }

  /** Starts following room `name`'s core `key` (hex), held by `primary`; a room followed already is left as it is. */
  async follow (name: string, key: string, primary: string): Promise<void> {
    if (this.closed || this.followed.has(name)) return
    const core = this.store.get({ key: Buffer.from(key, 'hex') })
    const followed: Followed = { core, primary, behindSince: null }
    this.followed.set(name, followed)
    await core.ready()
    if (this.closed) return
    const progress = (): void => {
      const behind = core.contiguousLength < core.length
      if (!behind) followed.behindSince = null
      else if (followed.behindSince === null) followed.behindSince = Date.now()
      this.onProgress(name, core)
    }
    core.on('download', progress)
    core.on('append', progress)
    core.download({ start: 0, end: -1 })
    progress()
  }

  /** Stops following a room (its primary changed). */
  async unfollow (name: string): Promise<void> {
    const followed = this.followed.get(name)
    if (followed === undefined) return
    this.followed.delete(name)
    await followed.core.close()
  }

  /** The followed core of a room, or null. */
  core (name: string): Hypercore | null {
    return this.followed.get(name)?.core ?? null
  }

  /**
   * Per primary: blocks it has announced that this member has not stored yet, all its rooms together, and
   * the seconds since the oldest of its rooms fell behind (0 when caught up).
   */
  lag (now = Date.now()): Map<string, { blocks: number, seconds: number }> {
    const lag = new Map<string, { blocks: number, seconds: number }>()
    for (const { core, primary, behindSince } of this.followed.values()) {
      const entry = lag.get(primary) ?? { blocks: 0, seconds: 0 }
      const blocks = core.opened ? Math.max(0, core.length - core.contiguousLength) : 0
      entry.blocks += blocks
      if (blocks > 0 && behindSince !== null) entry.seconds = Math.max(entry.seconds, (now - behindSince) / 1000)
      lag.set(primary, entry)
    }
    return lag
  }

  /**
   * The primary's view, per member: blocks of `cores` (this root peer's own, open now) that the member has
   * not announced as stored; members that replicate none of them are absent.
   */
  static behind (cores: Iterable<Hypercore>, isMember: (key: string) => boolean): Map<string, number> {
    const behind = new Map<string, number>()
    for (const core of cores) {
      for (const peer of core.peers) {
        const key = peer.remotePublicKey.toString('hex')
        if (isMember(key)) behind.set(key, (behind.get(key) ?? 0) + Math.max(0, core.length - peer.remoteContiguousLength))
      }
    }
    return behind
  }

  async close (): Promise<void> {
    this.closed = true
    const cores = [...this.followed.values()].map(f => f.core)
    this.followed.clear()
    await Promise.allSettled(cores.map(core => core.close()))
  }
}
