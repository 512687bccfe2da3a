import crypto from 'hypercore-crypto'

/**
 * Rendezvous (highest random weight) hashing: the member whose BLAKE2b-256 of (room name, member key)
 * is highest owns the room. Every member computes the same owner from the same member list, and a
 * member joining or leaving moves only the rooms it wins or held.
 */
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
