import crypto from 'hypercore-crypto'

// Signed rooms: the design and the exact bytes signed are in docs/protocol.md#signed-rooms.

export interface KeyPair { publicKey: Buffer, secretKey: Buffer }

const MESSAGE_CONTEXT = 'root-peer/message/v1'
// v1 signed (challenge, roomName) only: a fake root peer could relay a member's signature to the real one
const ACCESS_CONTEXT = 'root-peer/access/v2'
export const ACCESS_VERSION = 2
const KEY = /^[0-9a-f]{64}$/i
const SIGNATURE = /^[0-9a-f]{128}$/i

export function roomKeyPair (roomKey: Uint8Array | string): KeyPair {
  return crypto.keyPair(crypto.hash(Buffer.from(roomKey)))
}

export function signedRoomName (writerPublicKey: Buffer): string {
  return crypto.discoveryKey(writerPublicKey).toString('hex')
}

export function keyMatchesName (writerPublicKey: string, roomName: string): boolean {
  return KEY.test(writerPublicKey) && signedRoomName(Buffer.from(writerPublicKey, 'hex')) === roomName
}

/** Each part length-prefixed (u32 big-endian) and UTF-8 encoded, so every language signs the same bytes. */
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

/** Proof of membership for register-room and sync-request, bound to one root peer and one connection. */
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

export function newChallenge (): string {
  return crypto.randomBytes(32).toString('hex')
}

function verify (data: Buffer, signature: unknown, writerPublicKey: string): boolean {
  if (typeof signature !== 'string' || !SIGNATURE.test(signature) || !KEY.test(writerPublicKey)) return false
  return crypto.verify(data, Buffer.from(signature, 'hex'), Buffer.from(writerPublicKey, 'hex'))
}
