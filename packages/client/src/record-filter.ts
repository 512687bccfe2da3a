import type { StoredRecord } from './protocol/frame-types.js'
import { verifyMessage } from './protocol/room-auth.js'

export interface SyncedMessage extends StoredRecord { messageIndex: number }

export type RejectReason = 'not-a-record' | 'bad-index' | 'out-of-order' | 'duplicate' | 'no-id' | 'not-a-string' | 'unsigned' | 'bad-signature'

export interface RecordRejected { roomName: string, messageIndex: number | null, reason: RejectReason }

/** How many ids of a signed room's accepted records a stream remembers to drop a replay at another index. */
export const MAX_REMEMBERED_IDS = 4096

/**
 * The records of one stream of a room (a follow, a sync's pages) a root peer sent, as the app may have them: well
 * formed, in increasing index order, each index and (in a signed room) each signed id once, and in a signed room
 * signed by the room's key. Each other record is passed to `onReject`.
 */
export class RecordFilter {
  /** The index after the last record accepted: where the stream resumes, whatever a page's nextIndex claimed. */
  nextIndex: number
  /** The index after the last record that came with a valid index, accepted or not: how far a page got. */
  delivered: number
  private readonly ids = new Set<string>()

  constructor (readonly roomName: string, private readonly writerPublicKey: string | null, fromIndex: number, private readonly onReject: (rejected: RecordRejected) => void) {
    this.nextIndex = fromIndex
    this.delivered = fromIndex
  }

  /** A new stream from `nextIndex` (a follow again after a reconnect): what it sends from there is in order. */
  restart (): void {
    this.delivered = this.nextIndex
  }

  accept (records: readonly unknown[]): SyncedMessage[] {
    const kept: SyncedMessage[] = []
    for (const record of records) {
      const index = indexOf(record)
      const reason = this.rejectReason(record, index)
      if (index !== null && index >= this.delivered) this.delivered = index + 1
      if (reason !== null) {
        this.onReject({ roomName: this.roomName, messageIndex: index, reason })
        continue
      }
      const m = record as SyncedMessage
      this.nextIndex = m.messageIndex + 1
      if (this.writerPublicKey !== null) this.remember(m.id!)
      kept.push(m)
    }
    return kept
  }

  private rejectReason (record: any, index: number | null): RejectReason | null {
    if (typeof record !== 'object' || record === null || Array.isArray(record)) return 'not-a-record'
    if (index === null) return 'bad-index'
    if (index < this.nextIndex) return 'duplicate'
    if (index < this.delivered) return 'out-of-order'
    if (!wellFormed(record)) return 'not-a-record'
    if (this.writerPublicKey === null) return null
    if (typeof record.id !== 'string') return 'no-id'
    if (typeof record.message !== 'string') return 'not-a-string'
    if (record.signature === undefined) return 'unsigned'
    if (!verifyMessage(this.writerPublicKey, this.roomName, record.id, record.message, record.signature)) return 'bad-signature'
    // the signature covers the id, not the index: the same signed record at another index is a replay
    return this.ids.has(record.id) ? 'duplicate' : null
  }

  private remember (id: string): void {
    this.ids.add(id)
    if (this.ids.size > MAX_REMEMBERED_IDS) this.ids.delete(this.ids.values().next().value!)
  }
}

function indexOf (record: any): number | null {
  const index = typeof record === 'object' && record !== null ? record.messageIndex : undefined
  return typeof index === 'number' && Number.isSafeInteger(index) && index >= 0 ? index : null
}

/** The fields an app reads have their documented types (docs/protocol.md#the-stored-record). */
function wellFormed (record: any): boolean {
  if (record.message === undefined) return false
  if (record.storedAt !== undefined && (typeof record.storedAt !== 'number' || !Number.isFinite(record.storedAt))) return false
  for (const field of ['fromPeer', 'senderPublicKey', 'id', 'signature']) {
    if (record[field] !== undefined && typeof record[field] !== 'string') return false
  }
  return true
}
