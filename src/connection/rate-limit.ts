import { TokenBucket } from 'root-peer-client/protocol'

export { TokenBucket }

/** Per-peer rates, 0 = unlimited; a burst is 10 s worth of a per-second rate, 1 min of a per-minute one. */
export interface RateLimits {
  messagesPerSecond: number
  bytesPerSecond: number
  syncsPerSecond: number
  registersPerMinute: number
  newRoomsPerMinute: number
}

export class PeerBudget {
  readonly messages: TokenBucket
  readonly bytes: TokenBucket
  readonly syncs: TokenBucket
  readonly registers: TokenBucket
  readonly newRooms: TokenBucket

  constructor (limits: RateLimits) {
    this.messages = new TokenBucket(limits.messagesPerSecond, limits.messagesPerSecond * 10)
    this.bytes = new TokenBucket(limits.bytesPerSecond, limits.bytesPerSecond * 10)
    this.syncs = new TokenBucket(limits.syncsPerSecond, limits.syncsPerSecond * 10)
    this.registers = new TokenBucket(limits.registersPerMinute / 60, limits.registersPerMinute)
    this.newRooms = new TokenBucket(limits.newRoomsPerMinute / 60, limits.newRoomsPerMinute)
  }
}
