import crypto from 'hypercore-crypto'

/** A new room's owner, by rendezvous hashing: the highest BLAKE2b-256(roomName ‖ member key). */
export function rendezvousOwner (roomName: string, members: readonly string[]): string {
  let best = ''
  let bestWeight: Buffer | null = null
  const name = Buffer.from(roomName)
  for (const member of members) {
    const weight = crypto.hash([name, Buffer.from(member, 'hex')])
    if (bestWeight === null || Buffer.compare(weight, bestWeight) > 0) {
      best = member
      bestWeight = weight
    }
  }
  return best
}
