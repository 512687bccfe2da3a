import fs from 'node:fs/promises'
import path from 'node:path'
import Corestore from 'corestore'
import HypercoreStorage from 'hypercore-storage'
import { RootPeerError } from 'root-peer-client/protocol'
import { STATE_FILE_PREFIX } from './state-file.js'
import safetyCatch from 'safety-catch'

export const DEFAULT_WRITE_BUFFER = 8 * 1024 * 1024

export const DEVICE_FILE = 'CORESTORE'

// fd-lock's words when the device file is locked by another open file description
const LOCKED_MESSAGE = 'could not be locked'

/** Opens the data dir's Corestore, which is also its lock: before anything else in the dir is touched. */
export async function openStore (dir: string, { create = true, writeBufferSize = DEFAULT_WRITE_BUFFER } = {}): Promise<Corestore> {
  const fresh = !await exists(path.join(dir, DEVICE_FILE))
  if (fresh && !create && !await exists(path.join(dir, 'db'))) throw RootPeerError.NO_DATA_DIR(dir)
  // private to this user: the store holds the root peer's secret key and every room
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  // without a device file, hypercore-storage moves every file it does not know into db/: ours are moved back
  const ours = fresh ? (await fs.readdir(dir)).filter(f => f.startsWith(STATE_FILE_PREFIX)) : []
  const store = new Corestore(new HypercoreStorage(dir, { writeBufferSize }))
  try {
    await store.ready()
  } catch (err: any) {
    await store.close().catch(safetyCatch)
    if (typeof err?.message === 'string' && err.message.includes(LOCKED_MESSAGE)) throw RootPeerError.DATA_DIR_LOCKED(dir)
    if (err?.code === 'DEVICE_FILE') throw RootPeerError.DATA_DIR_COPIED(dir, err)
    throw err
  }
  for (const f of ours) await fs.rename(path.join(dir, 'db', f), path.join(dir, f)).catch(safetyCatch)
  return store
}

export interface LooseModes {
  mode: number
  entries: number
  error: string | null
}

/** Makes a data dir private to its user (dirs 0700, files 0600); resolves with what was open, or null. */
export async function makePrivate (dir: string): Promise<LooseModes | null> {
  let mode: number
  try {
    const st = await fs.stat(dir)
    if (!st.isDirectory()) return null
    mode = st.mode & 0o7777
  } catch (err: any) {
    if (err?.code === 'ENOENT' || err?.code === 'ENOTDIR') return null
    throw err
  }
  const inside: Array<{ file: string, want: number }> = []
  for (const entry of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() && !entry.isDirectory()) continue
    const file = path.join(entry.parentPath ?? entry.path, entry.name)
    const st = await fs.lstat(file).catch(() => null)
    if (st !== null && (st.mode & 0o077) !== 0) inside.push({ file, want: entry.isDirectory() ? 0o700 : 0o600 })
  }
  const loose = (mode & 0o077) !== 0 ? [{ file: dir, want: 0o700 }, ...inside] : inside
  if (loose.length === 0) return null
  let error: string | null = null
  for (const { file, want } of loose) {
    try {
      await fs.chmod(file, want)
    } catch (err: any) {
      if (err?.code !== 'ENOENT') error ??= `${err?.code ?? 'error'} on ${file}`
    }
  }
  return { mode, entries: inside.length, error }
}

async function exists (file: string): Promise<boolean> {
  try {
    await fs.access(file)
    return true
  } catch {
    return false
  }
}
