import { statfsSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'

// RocksDB treats a disk with less free space than its write buffer as full, so the root peer does too
export const FULL_MARGIN = 1024 * 1024

export function fullBelow (writeBuffer: number): number {
  return writeBuffer + FULL_MARGIN
}

export async function freeBytes (dir: string): Promise<number | null> {
  try {
    const s = await fs.statfs(dir)
    return s.bavail * s.bsize
  } catch {
    return null
  }
}

/** Whether the data dir has `room` bytes free and takes a write (of a probe file, removed again). */
export async function writable (dir: string, room: number): Promise<boolean> {
  const free = await freeBytes(dir)
  if (free !== null && free < room) return false
  const probe = `${dir}/.write-probe`
  try {
    await fs.writeFile(probe, 'probe')
    await fs.rm(probe, { force: true })
    return true
  } catch {
    return false
  }
}

// what MAX_ROOMS `auto` counts a room at on disk: `npm run bench` measured 275 bytes a room with 1 in 100 active
// (docs/scaling.md), so a quarter of the free space leaves room to spare for the rooms' messages
export const ROOM_DISK_BYTES = 1024
const AUTO_ROOMS = { min: 10_000, max: 100_000_000 }

/** MAX_ROOMS `auto`: as many empty rooms as a quarter of the free space of the data dir's disk holds. */
export function autoMaxRooms (dir: string): number {
  // the data dir may not exist yet: the disk it will be on
  for (let at = path.resolve(dir); ; at = path.dirname(at)) {
    try {
      const s = statfsSync(at)
      return Math.min(AUTO_ROOMS.max, Math.max(AUTO_ROOMS.min, Math.floor(s.bavail * s.bsize / 4 / ROOM_DISK_BYTES)))
    } catch {
      if (path.dirname(at) === at) return AUTO_ROOMS.min
    }
  }
}
