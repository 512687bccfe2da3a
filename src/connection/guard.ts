import { RootPeerError } from 'root-peer-client/protocol'
import type { Frame } from '../protocol/protocol.js'
import { PeerBudget, TokenBucket, type RateLimits } from './rate-limit.js'

const MAX_BANS = 10_000
export const MAX_BUDGETS = 16_384
// an address may create this many times the rooms a key may: several users behind one NAT
export const HOST_ROOMS_FACTOR = 10
const REFUSAL_WINDOW = 60_000

export interface GuardOptions extends RateLimits {
  banThreshold: number
  banDuration: number
  onUnban: (peerId: string) => void
}

export interface PeerRecord {
  budget: PeerBudget
  refusals: number
  windowStart: number
  hostRooms: TokenBucket | null
}

/** Abuse control: token buckets by key (so reconnecting does not refill them) and by address, and bans. */
export class Guard {
  private readonly opts: GuardOptions
  private readonly bans = new Map<string, NodeJS.Timeout>()
  private readonly records = new Map<string, PeerRecord>()
  private readonly hosts = new Map<string, TokenBucket>()

  constructor (opts: GuardOptions) {
    this.opts = opts
  }

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

  get remembered (): { keys: number, hosts: number } {
    return { keys: this.records.size, hosts: this.hosts.size }
  }

  /** Throws RATE_LIMITED, charging nothing, when one of the peer's budgets is spent. */
  admit (record: PeerRecord, frame: Frame): void {
    const b = record.budget
    if (frame.type === 'message') {
      const wait = Math.max(b.messages.wait(1), b.bytes.wait(frame.size))
      if (wait > 0) throw RootPeerError.RATE_LIMITED('messages', wait)
      b.messages.consume(1)
      b.bytes.consume(frame.size)
    } else if (frame.type === 'message-batch') {
      // every message of it, all at once before any is stored: a batch is refused whole, never half-charged
      const count = frame.messages.length
      const wait = Math.max(b.messages.wait(count), b.bytes.wait(frame.size))
      if (wait > 0) throw RootPeerError.RATE_LIMITED('messages', wait)
      b.messages.consume(count)
      b.bytes.consume(frame.size)
    } else if (frame.type === 'sync-request' || frame.type === 'follow' || frame.type === 'unfollow') {
      const wait = b.syncs.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED(frame.type === 'sync-request' ? 'sync-requests' : `${frame.type} frames`, wait)
    } else {
      const wait = b.registers.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED('register-room frames', wait)
    }
  }

  /** Charges a follow's catch-up page like a sync-request: 0, or the ms until it can be (charging nothing). */
  chargePage (record: PeerRecord): number {
    return record.budget.syncs.take(1)
  }

  admitNewRoom (record: PeerRecord): void {
    const wait = Math.max(record.budget.newRooms.wait(1), record.hostRooms?.wait(1) ?? 0)
    if (wait > 0) throw RootPeerError.RATE_LIMITED('new rooms', wait)
    record.budget.newRooms.consume(1)
    record.hostRooms?.consume(1)
  }

  /** True when the peer has now earned a ban. */
  noteRefusal (record: PeerRecord, now = Date.now()): boolean {
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
