import fs from 'node:fs/promises'

/** Below this many free bytes in the data dir, a failed write is taken for a full disk. */
export const FULL_BELOW_BYTES = 1024 * 1024

/** Bytes an unprivileged writer can still use on the data dir's file system; null when unknown. */
export async function freeBytes (dir: string): Promise<number | null> {
  try {
    const s = await fs.statfs(dir)
    return s.bavail * s.bsize
  } catch {
    return null
  }
}

/** Whether the data dir can take writes: it exists, is writable, and has room. Writes and removes a probe file. */
export async function writable (dir: string): Promise<boolean> {
  const free = await freeBytes(dir)
  if (free !== null && free < FULL_BELOW_BYTES) return false
  const probe = `${dir}/.write-probe`
  try {
    await fs.writeFile(probe, 'probe')
    await fs.rm(probe, { force: true })
    return true
  } catch {
    return false
  }
}
