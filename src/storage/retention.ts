import type Hypercore from 'hypercore'
import { parseRecord } from '../protocol/protocol.js'
import type { RoomState } from './state-file.js'

/** Per-room bounds on what is kept; 0 turns a bound off. */
export interface RetentionPolicy {
  messages: number
  bytes: number
  maxAgeMs: number
}

export const NO_RETENTION: Readonly<RetentionPolicy> = Object.freeze({ messages: 0, bytes: 0, maxAgeMs: 0 })

export function retentionOn (policy: RetentionPolicy): boolean {
  return policy.messages > 0 || policy.bytes > 0 || policy.maxAgeMs > 0
}

/** The room's first retained index; pruning clears a prefix, so the blocks from it are all there. */
export async function firstHeld (core: Hypercore, hint: number): Promise<number> {
  const length = core.length
  if (length === 0) return 0
  const at = Math.min(Math.max(0, hint), length - 1)
  if (await core.has(at) && (at === 0 || !(await core.has(at - 1)))) return at
  let lo = 0
  let hi = length
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2)
    if (await core.has(mid)) hi = mid
    else lo = mid + 1
  }
  return lo
}

export async function horizon (core: Hypercore, first: number, policy: RetentionPolicy, now = Date.now()): Promise<number> {
  const length = core.length
  let h = first
  if (policy.messages > 0) h = Math.max(h, length - policy.messages)
  if (policy.bytes > 0 && core.byteLength > policy.bytes) {
    const [index, offset] = (await core.seek(core.byteLength - policy.bytes))!
    h = Math.max(h, offset === 0 ? index : index + 1)
  }
  if (policy.maxAgeMs > 0 && h < length) {
    // records are stored in time order: find the first one young enough
    const cutoff = now - policy.maxAgeMs
    let lo = h
    let hi = length
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2)
      const block = await core.get(mid, { wait: false })
      const storedAt = block === null ? 0 : (parseRecord(block)?.storedAt ?? 0)
      if (typeof storedAt === 'number' && storedAt >= cutoff) hi = mid
      else lo = mid + 1
    }
    h = lo
  }
  return Math.min(h, length)
}

export async function byteOffset (core: Hypercore, index: number): Promise<number> {
  if (index <= 0) return 0
  if (index >= core.length) return core.byteLength
  let lo = 0
  let hi = core.byteLength
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2)
    const [at] = (await core.seek(mid))!
    if (at >= index) hi = mid
    else lo = mid + 1
  }
  return lo
}

/** Clears the blocks in [from, to), keeping their indices; resolves with the bytes freed. */
export async function prune (core: Hypercore, from: number, to: number): Promise<number> {
  if (to <= from) return 0
  const [start, end] = await Promise.all([byteOffset(core, from), byteOffset(core, to)])
  await core.clear(from, to)
  return end - start
}

/** Sets the room's first held index and the bytes pruned below it from its core (a crash may have lost them). */
export async function reconcilePruned (core: Hypercore, info: RoomState): Promise<void> {
  const first = await firstHeld(core, info.firstIndex ?? 0)
  if (first === 0) {
    delete info.firstIndex
    delete info.prunedBytes
  } else if (first !== info.firstIndex || info.prunedBytes === undefined) {
    info.firstIndex = first
    info.prunedBytes = await byteOffset(core, first)
  }
}
