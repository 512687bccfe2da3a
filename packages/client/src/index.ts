// root-peer/client: the chat app's side alone; it imports nothing of the daemon, no Node built-in (Bare)
export { RootPeerClient, type Announcement, type FrameRejected, type MessageAck, type RecordRejected, type RejectReason, type RootPeerClientOptions, type SyncedMessage, type SyncPage } from './client.js'
export { RootPeerError, type ErrorCode } from './protocol/errors.js'
export { DEFAULT_DISCOVERY_TOPIC, type BootstrapNode } from './protocol/discovery.js'
export type { Limits, StoredRecord } from './protocol/frame-types.js'
export { roomKeyPair, signable, signAccess, signedRoomName, signMessage, verifyAccess, verifyMessage, type KeyPair } from './protocol/room-auth.js'
