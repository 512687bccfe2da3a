import type { StoredRecord } from '../protocol/protocol.js'
import { verifyMessage } from '../protocol/room-auth.js'

export interface SyncedMessage extends StoredRecord { messageIndex: number }

export type RejectReason = 'not-a-record' | 'no-id' | 'not-a-string' | 'unsigned' | 'bad-signature'

export interface RecordRejected { roomName: string, messageIndex: number | null, reason: RejectReason }

/** The records a signed room's writer signed, in order; each other one is passed to `onReject`. */
export function signedRecords (roomName: string, writerPublicKey: string, records: unknown, onReject: (rejected: RecordRejected) => void): SyncedMessage[] {
  const kept: SyncedMessage[] = []
  for (const record of Array.isArray(records) ? records : []) {
    const reason = rejectReason(roomName, writerPublicKey, record)
    if (reason === null) {
      kept.push(record as SyncedMessage)
      continue
    }
    const messageIndex = Number.isSafeInteger(record?.messageIndex) ? record.messageIndex as number : null
    onReject({ roomName, messageIndex, reason })
  }
  return kept
}

function rejectReason (roomName: string, writerPublicKey: string, record: any): RejectReason | null {
  if (typeof record !== 'object' || record === null) return 'not-a-record'
  if (typeof record.id !== 'string') return 'no-id'
  if (typeof record.message !== 'string') return 'not-a-string'
  if (record.signature === undefined) return 'unsigned'
  return verifyMessage(writerPublicKey, roomName, record.id, record.message, record.signature) ? null : 'bad-signature'
}
