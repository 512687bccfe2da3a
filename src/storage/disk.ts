import fs from 'node:fs/promises'

/**
 * Free bytes the store needs beyond its write buffer. RocksDB itself treats a disk with less free space
 * than its write buffer as full (it will not clear a no-space error before), so the root peer does too.
 */
export const FULL_MARGIN = 1024 * 1024

/** Below this many free bytes, a data dir whose store has a `writeBuffer`-byte memtable is full. */
export function fullBelow (writeBuffer: number): number {
  return writeBuffer + FULL_MARGIN
}

/** Bytes an unprivileged writer can still use on the data dir's file system; null when unknown. */
export async function freeBytes (dir: string): Promise<number | null> {
  try {
    const s = await fs.statfs(dir)
    return s.bavail * s.bsize
  } catch {
    return null
  }
}

/** Whether the data dir can take writes: it exists, is writable, and has `room` bytes free. Writes and removes a probe file. */
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
