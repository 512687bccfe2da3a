import crypto from 'hypercore-crypto'

/**
 * Signed rooms. Every member derives one signing key pair from the room key (which the root peer
 * never sees); the room's name is the discovery key of its public key, so the name commits to the
 * key. Messages carry a signature over (roomName, id, message); reads and registrations carry a
 * signature over (the root peer's public key, the connection's challenge, roomName), so a signature
 * cannot be replayed on another connection, nor relayed by a fake root peer to the real one. What is
 * signed is `signable(parts)`: each part as a 4-byte big-endian length and its UTF-8 bytes, so every
 * language encodes it the same way.
 */

export interface KeyPair { publicKey: Buffer, secretKey: Buffer }

const MESSAGE_CONTEXT = 'root-peer/message/v1'
// v1 signed (challenge, roomName) only: a fake root peer could relay a member's signature to the real one
const ACCESS_CONTEXT = 'root-peer/access/v2'
/** The access signable's version, advertised as the announcement's `access`. */
export const ACCESS_VERSION = 2
const KEY = /^[0-9a-f]{64}$/i
const SIGNATURE = /^[0-9a-f]{128}$/i

/** The room's signing key pair: `keyPair(hash(roomKey))`. */
export function roomKeyPair (roomKey: Uint8Array | string): KeyPair {
  return crypto.keyPair(crypto.hash(Buffer.from(roomKey)))
}

/** A signed room's name: the hex discovery key of its writer public key. */
export function signedRoomName (writerPublicKey: Buffer): string {
  return crypto.discoveryKey(writerPublicKey).toString('hex')
}

/** True when `writerPublicKey` (hex) is a well-formed key whose discovery key is `roomName`. */
export function keyMatchesName (writerPublicKey: string, roomName: string): boolean {
  return KEY.test(writerPublicKey) && signedRoomName(Buffer.from(writerPublicKey, 'hex')) === roomName
}

/** The bytes a signature covers: each part length-prefixed (u32 big-endian) and UTF-8 encoded. */
export function signable (parts: readonly string[]): Buffer {
  const chunks: Buffer[] = []
  for (const part of parts) {
    const bytes = Buffer.from(part, 'utf8')
    const len = Buffer.alloc(4)
    len.writeUInt32BE(bytes.byteLength)
    chunks.push(len, bytes)
  }
  return Buffer.concat(chunks)
}

export function signMessage (secretKey: Buffer, roomName: string, id: string, message: string): string {
  return crypto.sign(signable([MESSAGE_CONTEXT, roomName, id, message]), secretKey).toString('hex')
}

export function verifyMessage (writerPublicKey: string, roomName: string, id: string, message: string, signature: unknown): boolean {
  return verify(signable([MESSAGE_CONTEXT, roomName, id, message]), signature, writerPublicKey)
}

/** Proof of membership for register-room and sync-request, bound to one root peer (its public key, hex) and one connection (its challenge). */
export function signAccess (secretKey: Buffer, rootPublicKey: string, challenge: string, roomName: string): string {
  if (!KEY.test(rootPublicKey)) throw new TypeError('rootPublicKey: must be 64 hex characters')
  return crypto.sign(accessSignable(rootPublicKey, challenge, roomName), secretKey).toString('hex')
}

export function verifyAccess (writerPublicKey: string, rootPublicKey: string, challenge: string, roomName: string, signature: unknown): boolean {
  return KEY.test(rootPublicKey) && verify(accessSignable(rootPublicKey, challenge, roomName), signature, writerPublicKey)
}

function accessSignable (rootPublicKey: string, challenge: string, roomName: string): Buffer {
  return signable([ACCESS_CONTEXT, rootPublicKey.toLowerCase(), challenge, roomName])
}

/** A fresh per-connection challenge, hex. */
export function newChallenge (): string {
  return crypto.randomBytes(32).toString('hex')
}

function verify (data: Buffer, signature: unknown, writerPublicKey: string): boolean {
  if (typeof signature !== 'string' || !SIGNATURE.test(signature) || !KEY.test(writerPublicKey)) return false
  return crypto.verify(data, Buffer.from(signature, 'hex'), Buffer.from(writerPublicKey, 'hex'))
}
