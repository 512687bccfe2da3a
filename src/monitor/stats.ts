import type { RoomState } from '../storage/state-file.js'

/** Plain counters, bumped on the hot paths and read by the stats display and the metrics. */
export interface Counters {
  framesReceived: Record<string, number>
  framesSent: Record<string, number>
  errors: Record<string, number>
  messagesStored: number
  /** core appends; each carries every message that arrived while the one before was in flight */
  appendBatches: number
  duplicates: number
  peersConnected: number
  peersDisconnected: number
  stateSaves: number
  stateSaveFailures: number
  /** peers disconnected for too many refused frames */
  bans: number
  /** peers disconnected for leaving our writes unread past the stall timeout */
  stalledPeers: number
  /** times writes started failing (disk full, read-only, I/O error) */
  storageFailures: number
  /** messages this member forwarded to their room's primary and acked */
  forwardedWrites: number
  /** peers disconnected without a valid frame: FIRST_FRAME_TIMEOUT, or a newcomer's place at MAX_PEERS */
  idleDisconnects: number
  /** connections dropped by the inbound budget, by reason: frame-too-large, frame-timeout, buffer-full */
  droppedPeers: Record<string, number>
  /** empty rooms removed, by reason: expired (EMPTY_ROOM_TTL) or evicted (MAX_ROOMS) */
  roomsRemoved: Record<string, number>
  /** catch-up pages read ahead: used by the request they were read for, or dropped unused */
  pagesReadAhead: number
  pagesReadAheadUnused: number
}

export function createCounters (): Counters {
  return {
    framesReceived: Object.create(null),
    framesSent: Object.create(null),
    errors: Object.create(null),
    messagesStored: 0,
    appendBatches: 0,
    duplicates: 0,
    peersConnected: 0,
    peersDisconnected: 0,
    stateSaves: 0,
    stateSaveFailures: 0,
    bans: 0,
    stalledPeers: 0,
    storageFailures: 0,
    forwardedWrites: 0,
    idleDisconnects: 0,
    droppedPeers: Object.create(null),
    roomsRemoved: Object.create(null),
    pagesReadAhead: 0,
    pagesReadAheadUnused: 0
  }
}

export function bump (counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1
}

export interface StatsSnapshot {
  publicKey: string
  totalRooms: number
  totalMessages: number
  activePeers: number
  uptimeSeconds: number
  /** The busiest rooms (most messages first), at most `BUSIEST_ROOMS`. */
  busiestRooms: RoomState[]
  counters: Counters
}

export const BUSIEST_ROOMS = 10

/** The rooms the monitor may name: a signed room's name is its members' business (totals still count it). */
export function * namedRooms (rooms: Iterable<RoomState>): Generator<RoomState> {
  for (const r of rooms) if (r.writerPublicKey === undefined) yield r
}

/** The `n` rooms that hold the most message bytes (pruned ones not counted), most first. */
export function largest (rooms: Iterable<RoomState>, n: number): Array<{ name: string, bytes: number }> {
  const top: Array<{ name: string, bytes: number }> = []
  for (const info of rooms) {
    const bytes = info.byteLength - (info.prunedBytes ?? 0)
    if (top.length === n && bytes <= top[n - 1].bytes) continue
    top.push({ name: info.name, bytes })
    top.sort((a, b) => b.bytes - a.bytes)
    if (top.length > n) top.pop()
  }
  return top
}

export function busiest (rooms: Iterable<RoomState>, n = BUSIEST_ROOMS): RoomState[] {
  const top: RoomState[] = []
  for (const r of rooms) {
    if (top.length < n) {
      top.push(r)
      top.sort((a, b) => b.messageCount - a.messageCount)
    } else if (r.messageCount > top[n - 1].messageCount) {
      top[n - 1] = r
      top.sort((a, b) => b.messageCount - a.messageCount)
    }
  }
  return top.map(r => ({ ...r }))
}

/** The stats display, as text. */
export function formatStats (s: StatsSnapshot): string {
  const line = '================================'
  const hours = s.uptimeSeconds / 3600
  const uptime = hours >= 1 ? `${hours.toFixed(1)} hours` : `${(s.uptimeSeconds / 60).toFixed(1)} minutes`
  const out = [
    line,
    '📊 Root Peer Statistics',
    line,
    `📁 Total Rooms: ${s.totalRooms}`,
    `📨 Total Messages: ${s.totalMessages}`,
    `👥 Active Peers: ${s.activePeers}`,
    `🕐 Server Uptime: ${uptime}`,
    line
  ]
  if (s.busiestRooms.length > 0) {
    out.push('', s.totalRooms > s.busiestRooms.length ? `📫 Busiest ${s.busiestRooms.length} of ${s.totalRooms} rooms:` : '📫 Room Details:')
    for (const r of s.busiestRooms) out.push(`  🏠 Room ${r.name.length > 16 ? r.name.slice(0, 16) + '...' : r.name} - ${r.messageCount} messages`)
    out.push(line)
  }
  return out.join('\n')
}
