// The frames a client sends and the records a root peer stores, as both sides type them (docs/protocol.md).

import type { RootPeerError } from './errors.js'

/** Bumped only for changes an old client would notice. */
export const PROTOCOL_VERSION = 2

/** What a peer can make the daemon allocate or send (docs/configuration.md#limits). */
export interface Limits {
  maxFrameBytes: number
  maxMessageBytes: number
  defaultPageMessages: number
  maxPageMessages: number
  maxPageBytes: number
  messagesPerSecond: number
  bytesPerSecond: number
  syncsPerSecond: number
  registersPerMinute: number
  newRoomsPerMinute: number
  /** rooms one connection may follow at once */
  maxFollows: number
}

export interface RegisterRoomFrame { type: 'register-room', roomName: string, requestId?: RequestId, writerPublicKey?: string, signature?: string }
export interface MessageFrame { type: 'message', roomName: string, message: unknown, id?: string, messageJson: string, size: number, signature?: string }
export interface SyncRequestFrame { type: 'sync-request', roomName: string, lastIndex: number, limit: number, requestId?: RequestId, signature?: string }
export interface FollowFrame { type: 'follow', roomName: string, fromIndex: number, requestId?: RequestId, signature?: string }
export interface UnfollowFrame { type: 'unfollow', roomName: string, requestId?: RequestId }
/** One message of a `message-batch`: `refused` when it broke a rule of its own as it was decoded (its size, a number). */
export interface BatchMessage { id: string, message: unknown, messageJson: string, size: number, signature?: string, refused?: RootPeerError }
/** Several messages for one room (docs/protocol.md#batches); `size`: the bytes of all its messages. */
export interface MessageBatchFrame { type: 'message-batch', roomName: string, messages: BatchMessage[], size: number, requestId?: RequestId }
export type Frame = RegisterRoomFrame | MessageFrame | MessageBatchFrame | SyncRequestFrame | FollowFrame | UnfollowFrame
export type FrameType = Frame['type']
export type RequestId = string | number

export interface StoredRecord {
  message: unknown
  storedAt: number
  fromPeer: string
  senderPublicKey: string
  id?: string
  signature?: string
}

export type FollowEndReason = 'unfollowed' | 'replaced' | 'removed' | 'unauthorized'
