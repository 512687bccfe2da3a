import crypto from 'hypercore-crypto'

/**
 * The `k` members that hold a room, by rendezvous hashing: the highest BLAKE2b-256(roomName ‖ member key) first
 * (ties, which need equal hashes, by key). The first is the room's primary when it is created; each member's weight
 * depends on the room and that member only, so a member joining or leaving moves only the rooms it enters or leaves.
 */
export function rendezvousHolders (roomName: string, members: readonly string[], k: number): string[] {
  const name = Buffer.from(roomName)
  const weighted = members.map(member => ({ member, weight: crypto.hash([name, Buffer.from(member, 'hex')]) }))
  weighted.sort((a, b) => Buffer.compare(b.weight, a.weight) || (a.member < b.member ? -1 : a.member > b.member ? 1 : 0))
  return weighted.slice(0, Math.max(0, k)).map(w => w.member)
}

/** A new room's owner, by rendezvous hashing: the highest BLAKE2b-256(roomName ‖ member key). */
export function rendezvousOwner (roomName: string, members: readonly string[]): string {
  return rendezvousHolders(roomName, members, 1)[0] ?? ''
}
