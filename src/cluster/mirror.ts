import type Corestore from 'corestore'
import Hypercore from 'hypercore'
import { discoveryKey } from 'hypercore-crypto'
import { RootPeerError } from 'root-peer-client/protocol'
import safetyCatch from 'safety-catch'

/** Hypercore has no event for a second peer reaching a length another reached: waits poll this often. */
const POLL_INTERVAL = 10
/** ms: a room behind what a member holds that stored nothing for this long gets a new session (doubling, to 1 min) */
const STALL = 2000
const MAX_STALL = 60_000

export function mirroredBy (core: Hypercore, length: number, isMember: (key: string) => boolean): number {
  const seen = new Set<string>()
  for (const peer of core.peers) {
    const key = peer.remotePublicKey.toString('hex')
    if (isMember(key) && peer.remoteContiguousLength >= length) seen.add(key)
  }
  return seen.size
}

interface Wait {
  length: number
  wanted: number
  deadline: number
  timeout: number
  resolve: () => void
  reject: (err: RootPeerError) => void
}

/** The primary's side of MIN_MIRRORS: a write waits until enough members have stored its block. */
export class MirrorWaits {
  private readonly byCore = new Map<Hypercore, { waits: Set<Wait>, onChange: () => void }>()
  private timer: NodeJS.Timeout | null = null
  private readonly isMember: (key: string) => boolean

  constructor (isMember: (key: string) => boolean) {
    this.isMember = isMember
  }

  /** Resolves once `wanted` members hold `core` up to `length`; NOT_REPLICATED after `timeout` ms. */
  wait (core: Hypercore, length: number, wanted: number, timeout: number): Promise<void> {
    if (wanted <= 0 || mirroredBy(core, length, this.isMember) >= wanted) return Promise.resolve()
    return new Promise((resolve, reject) => {
      let entry = this.byCore.get(core)
      if (entry === undefined) {
        const onChange = (): void => this.checkCore(core, Date.now())
        entry = { waits: new Set(), onChange }
        core.on('remote-contiguous-length', onChange)
        this.byCore.set(core, entry)
      }
      entry.waits.add({ length, wanted, deadline: Date.now() + timeout, timeout, resolve, reject })
      if (this.timer === null) this.timer = setInterval(() => this.check(), POLL_INTERVAL)
    })
  }

  close (): void {
    for (const [core, { waits, onChange }] of this.byCore) {
      core.off('remote-contiguous-length', onChange)
      for (const w of waits) w.reject(RootPeerError.SHUTTING_DOWN())
    }
    this.byCore.clear()
    this.stop()
  }

  private check (): void {
    const now = Date.now()
    for (const core of [...this.byCore.keys()]) this.checkCore(core, now)
  }

  private checkCore (core: Hypercore, now: number): void {
    const entry = this.byCore.get(core)
    if (entry === undefined) return
    for (const w of entry.waits) {
      const n = mirroredBy(core, w.length, this.isMember)
      if (n >= w.wanted) {
        entry.waits.delete(w)
        w.resolve()
      } else if (now >= w.deadline) {
        entry.waits.delete(w)
        w.reject(RootPeerError.NOT_REPLICATED(n, w.wanted, w.timeout))
      }
    }
    if (entry.waits.size > 0) return
    core.off('remote-contiguous-length', entry.onChange)
    this.byCore.delete(core)
    if (this.byCore.size === 0) this.stop()
  }

  private stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }
}

interface Followed {
  name: string
  key: Buffer
  primary: string
  held: number
  /** the longest copy known: the most blocks a member said it holds (`rooms`), or the session's length */
  known: number
  /** downloading while the room is followed actively; null while it sleeps */
  session: Hypercore | null
  /** while the core is open (whoever opened it): tells of appends while the room sleeps */
  weak: Hypercore | null
  lastActive: number
  /** since when `held` < `known` */
  behindSince: number | null
  /** when `held` last grew, or the session was (re)opened */
  progressAt: number
  /** sessions reopened since `held` last grew */
  restarts: number
}

export interface MirrorsOptions {
  maxOpen?: number
  idleTimeout?: number
  onProgress: (roomName: string, held: number, byteLength: number) => void
}

/** The mirror's side: follows the cores of the other members' rooms, idle ones asleep (docs/cluster.md). */
export class Mirrors {
  private readonly store: Corestore
  private readonly followed = new Map<string, Followed>()
  private readonly byDiscoveryKey = new Map<string, string>()
  private readonly maxOpen: number
  private readonly idleTimeout: number
  private readonly onProgress: MirrorsOptions['onProgress']
  private readonly watcher: (core: { readonly discoveryKey: Buffer }) => void
  private readonly sweepTimer: NodeJS.Timeout
  private readonly stallTimer: NodeJS.Timeout
  private active = 0
  private closed = false

  constructor (store: Corestore, { maxOpen = 256, idleTimeout = 300_000, onProgress }: MirrorsOptions) {
    this.store = store
    this.maxOpen = maxOpen
    this.idleTimeout = idleTimeout
    this.onProgress = onProgress
    this.watcher = core => this.onCoreOpen(core)
    store.watch(this.watcher)
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(1000, Math.min(idleTimeout / 2, 60_000)))
    this.sweepTimer.unref()
    this.stallTimer = setInterval(() => this.unstall(), STALL / 2)
    this.stallTimer.unref()
  }

  get size (): number {
    return this.followed.size
  }

  get activeCount (): number {
    return this.active
  }

  /** Follows a room (actively at once when `wake`) unless it is; its first `held` blocks are here. */
  follow (name: string, key: string, primary: string, held: number, wake: boolean): void {
    if (this.closed || this.followed.has(name)) return
    const keyBuffer = Buffer.from(key, 'hex')
    const followed: Followed = { name, key: keyBuffer, primary, held, known: held, session: null, weak: null, lastActive: Date.now(), behindSince: null, progressAt: 0, restarts: 0 }
    this.followed.set(name, followed)
    this.byDiscoveryKey.set(discoveryKey(keyBuffer).toString('hex'), name)
    if (wake) this.wake(followed)
  }

  /**
   * A member (the primary or another mirror) holds `length` blocks of the room's core `key`: when that is more than
   * this copy, the room is followed actively, and Hypercore fetches the blocks from whichever member has them.
   */
  hint (name: string, key: string, length: number): void {
    const followed = this.followed.get(name)
    if (followed === undefined || !followed.key.equals(Buffer.from(key, 'hex'))) return
    followed.known = Math.max(followed.known, length)
    if (followed.known <= followed.held) return
    followed.behindSince ??= Date.now()
    this.wake(followed)
  }

  /** Per member: the blocks of the room it has told this one's session it holds (rooms followed actively only). */
  holders (name: string): Map<string, number> {
    const held = new Map<string, number>()
    const session = this.followed.get(name)?.session
    if (session?.opened !== true) return held
    for (const peer of session.peers) held.set(peer.remotePublicKey.toString('hex'), peer.remoteContiguousLength)
    return held
  }

  /** The primary went away: its rooms are followed actively, so a mirror gets what it lacks from another. */
  wakeFrom (primary: string): void {
    for (const followed of this.followed.values()) if (followed.primary === primary) this.wake(followed)
  }

  async unfollow (name: string): Promise<void> {
    const followed = this.followed.get(name)
    if (followed === undefined) return
    this.followed.delete(name)
    this.byDiscoveryKey.delete(discoveryKey(followed.key).toString('hex'))
    await this.sleep(followed)
    await followed.weak?.close()
  }

  /**
   * Per primary: blocks of its rooms that some member (the primary or another mirror) holds and this one has not
   * stored yet, asleep or not, and seconds since the oldest of those rooms fell behind.
   */
  lag (now = Date.now()): Map<string, { blocks: number, seconds: number }> {
    const lag = new Map<string, { blocks: number, seconds: number }>()
    for (const followed of this.followed.values()) {
      const { session, primary, behindSince } = followed
      const entry = lag.get(primary) ?? { blocks: 0, seconds: 0 }
      const open = session?.opened === true
      const longest = Math.max(followed.known, open ? session.length : 0)
      const blocks = Math.max(0, longest - Math.max(followed.held, open ? session.contiguousLength : 0))
      entry.blocks += blocks
      if (blocks > 0 && behindSince !== null) entry.seconds = Math.max(entry.seconds, (now - behindSince) / 1000)
      lag.set(primary, entry)
    }
    return lag
  }

  /** The primary's view, per member: blocks of `cores` the member has not announced as stored. */
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
    clearInterval(this.sweepTimer)
    clearInterval(this.stallTimer)
    this.store.unwatch(this.watcher)
    const all = [...this.followed.values()]
    this.followed.clear()
    await Promise.allSettled(all.flatMap(f => [f.session?.close(), f.weak?.close()]))
  }

  private wake (followed: Followed): void {
    if (this.closed || followed.session !== null || this.followed.get(followed.name) !== followed) return
    const session = this.store.get({ key: followed.key })
    followed.session = session
    followed.lastActive = followed.progressAt = Date.now()
    this.active++
    const progress = (): void => {
      if (followed.session !== session || !session.opened) return
      followed.lastActive = Date.now()
      followed.known = Math.max(followed.known, session.length)
      const behind = session.contiguousLength < followed.known
      if (!behind) followed.behindSince = null
      else if (followed.behindSince === null) followed.behindSince = Date.now()
      if (session.contiguousLength > followed.held) {
        followed.held = session.contiguousLength
        followed.progressAt = Date.now()
        followed.restarts = 0
        this.onProgress(followed.name, followed.held, session.byteLength)
      }
    }
    session.on('download', progress)
    session.on('append', progress)
    session.ready().then(() => {
      if (followed.session !== session) return
      session.download({ start: 0, end: -1 })
      progress()
    }, () => this.sleep(followed))
  }

  private async sleep (followed: Followed): Promise<void> {
    const session = followed.session
    if (session === null) return
    followed.session = null
    if (followed.held >= followed.known) followed.behindSince = null
    this.active--
    await session.close().catch(safetyCatch)
  }

  private sweep (now = Date.now()): void {
    // a room behind what a member holds stays awake, whichever member that is
    const caughtUp = [...this.followed.values()].filter(f => f.session?.opened === true && f.session.contiguousLength >= Math.max(f.session.length, f.known))
    caughtUp.sort((a, b) => a.lastActive - b.lastActive)
    let over = this.active - this.maxOpen
    for (const f of caughtUp) {
      if (over <= 0 && now - f.lastActive < this.idleTimeout) break
      over--
      this.sleep(f).catch(safetyCatch)
    }
  }

  /**
   * A room behind what a member said it holds that is asleep (its wake failed) is woken; one whose session stored
   * nothing for STALL ms (doubling with each retry) gets a new session, which asks every peer again.
   */
  private unstall (now = Date.now()): void {
    for (const f of this.followed.values()) {
      if (f.known <= f.held || this.closed) continue
      if (now - f.progressAt < Math.min(STALL * 2 ** f.restarts, MAX_STALL)) continue
      f.restarts++
      if (f.session === null) {
        this.wake(f)
        continue
      }
      f.progressAt = now
      this.sleep(f).then(() => this.wake(f), safetyCatch)
    }
  }

  private onCoreOpen (core: { readonly discoveryKey: Buffer }): void {
    const name = this.byDiscoveryKey.get(core.discoveryKey.toString('hex'))
    const followed = name === undefined ? undefined : this.followed.get(name)
    if (followed === undefined || followed.weak !== null || this.closed) return
    let weak: Hypercore
    try {
      weak = new Hypercore({ core, weak: true })
    } catch {
      // the core is closing already: it is watched again when it next opens
      return
    }
    followed.weak = weak
    const grown = (): void => {
      if (weak.opened && weak.length > followed.held) this.wake(followed)
    }
    weak.on('append', grown)
    weak.on('close', () => { if (followed.weak === weak) followed.weak = null })
    weak.ready().then(grown, safetyCatch)
  }
}
