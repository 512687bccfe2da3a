import { RootPeerError } from '../protocol/errors.js'
import type { Frame } from '../protocol/protocol.js'
import { PeerBudget, TokenBucket, type RateLimits } from './rate-limit.js'

/** Bans remembered at most; the oldest is forgotten first. */
const MAX_BANS = 10_000
/** Budgets remembered at most, by public key and by remote address each; the least recently used is forgotten first. */
export const MAX_BUDGETS = 16_384
/** One remote address may create this many times the rooms one key may (several users behind one NAT). */
export const HOST_ROOMS_FACTOR = 10
const REFUSAL_WINDOW = 60_000

export interface GuardOptions extends RateLimits {
  /** refusals within a minute that get a peer banned; 0 = never */
  banThreshold: number
  banDuration: number
  /** called when a ban ends, so the swarm can let the key in again */
  onUnban: (peerId: string) => void
}

/** What the guard keeps per public key, across its connections. */
export interface PeerRecord {
  budget: PeerBudget
  refusals: number
  windowStart: number
  /** the new-room budget of the address the key connected from last; null when the transport does not say */
  hostRooms: TokenBucket | null
}

/**
 * Abuse control: per-key token buckets for every kind of frame, a per-address bucket for new rooms,
 * and bans for keys that keep sending frames that are refused. Budgets are kept by public key (and
 * address) in bounded tables, so reconnecting does not refill them. A ban is by public key; the
 * swarm's firewall asks `isBanned` at the handshake.
 */
export class Guard {
  private readonly opts: GuardOptions
  private readonly bans = new Map<string, NodeJS.Timeout>()
  private readonly records = new Map<string, PeerRecord>()
  private readonly hosts = new Map<string, TokenBucket>()

  constructor (opts: GuardOptions) {
    this.opts = opts
  }

  /** The budgets of `peerId`, as its last connection left them, now charged to `host` as well. */
  record (peerId: string, host: string | null = null): PeerRecord {
    let record = lru(this.records, peerId)
    if (record === undefined) {
      record = { budget: new PeerBudget(this.opts), refusals: 0, windowStart: Date.now(), hostRooms: null }
      remember(this.records, peerId, record)
    }
    if (host !== null) {
      let bucket = lru(this.hosts, host)
      if (bucket === undefined) {
        const perMinute = this.opts.newRoomsPerMinute * HOST_ROOMS_FACTOR
        bucket = new TokenBucket(perMinute / 60, perMinute)
        remember(this.hosts, host, bucket)
      }
      record.hostRooms = bucket
    }
    return record
  }

  /** Keys and addresses whose budgets are remembered now. */
  get remembered (): { keys: number, hosts: number } {
    return { keys: this.records.size, hosts: this.hosts.size }
  }

  /** Charges a decoded frame to the peer's budgets; throws RATE_LIMITED (nothing charged) when one is spent. */
  admit (record: PeerRecord, frame: Frame): void {
    const b = record.budget
    if (frame.type === 'message') {
      const wait = Math.max(b.messages.wait(1), b.bytes.wait(frame.size))
      if (wait > 0) throw RootPeerError.RATE_LIMITED('messages', wait)
      b.messages.consume(1)
      b.bytes.consume(frame.size)
    } else if (frame.type === 'sync-request') {
      const wait = b.syncs.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED('sync-requests', wait)
    } else {
      const wait = b.registers.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED('register-room frames', wait)
    }
  }

  /** Charges the creation of a new room. */
  admitNewRoom (record: PeerRecord): void {
    const wait = Math.max(record.budget.newRooms.wait(1), record.hostRooms?.wait(1) ?? 0)
    if (wait > 0) throw RootPeerError.RATE_LIMITED('new rooms', wait)
    record.budget.newRooms.consume(1)
    record.hostRooms?.consume(1)
  }

  /** Notes a refused frame; true when the peer has now earned a ban. */
  refused (record: PeerRecord, now = Date.now()): boolean {
    if (this.opts.banThreshold === 0) return false
    if (now - record.windowStart > REFUSAL_WINDOW) {
      record.windowStart = now
      record.refusals = 0
    }
    return ++record.refusals >= this.opts.banThreshold
  }

  ban (peerId: string): void {
    if (this.bans.has(peerId)) return
    if (this.bans.size >= MAX_BANS) this.unban(this.bans.keys().next().value as string)
    const timer = setTimeout(() => this.unban(peerId), this.opts.banDuration)
    timer.unref()
    this.bans.set(peerId, timer)
  }

  isBanned (peerId: string): boolean {
    return this.bans.has(peerId)
  }

  get banned (): number {
    return this.bans.size
  }

  get banDuration (): number {
    return this.opts.banDuration
  }

  close (): void {
    for (const timer of this.bans.values()) clearTimeout(timer)
    this.bans.clear()
    this.records.clear()
    this.hosts.clear()
  }

  private unban (peerId: string): void {
    const timer = this.bans.get(peerId)
    if (timer === undefined) return
    clearTimeout(timer)
    this.bans.delete(peerId)
    this.opts.onUnban(peerId)
  }
}

/** The entry for `key`, made the most recently used. */
function lru<V> (map: Map<string, V>, key: string): V | undefined {
  const value = map.get(key)
  if (value !== undefined) {
    map.delete(key)
    map.set(key, value)
  }
  return value
}

function remember<V> (map: Map<string, V>, key: string, value: V): void {
  map.set(key, value)
  if (map.size > MAX_BUDGETS) map.delete(map.keys().next().value as string)
}
