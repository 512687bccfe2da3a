import fs from 'node:fs/promises'

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
