import assert from 'node:assert/strict'
import { READ_AHEAD_PAGES } from '../src/connection/read-ahead.js'
import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import { test } from 'node:test'
import Corestore from 'corestore'
import type Hypercore from 'hypercore'
import fc from 'fast-check'
import { DEFAULT_LIMITS, decodeFrame, encodeRecord, pageEntry, type MessageFrame } from '../src/protocol/protocol.js'
import { DEDUP_ID_CHARS, DEDUP_WINDOW, Room } from '../src/storage/room.js'
import type { RoomState } from '../src/storage/state-file.js'
import { RawPeer, bootstrapEnv, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

const MiB = 1024 * 1024

/** VmRSS or VmHWM (peak RSS) of a process, in bytes. */
async function memOf (pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)![1]) * 1024
}

/** The `messages` array of a raw sync-response, as the text of its entries joined by commas. */
function pageText (raw: string): string {
  const start = raw.indexOf('"messages":[') + '"messages":['.length
  return raw.slice(start, raw.lastIndexOf('],"totalMessages":'))
}

/** Every raw frame text the peer receives, beside the parsed frames RawPeer keeps. */
function rawFrames (peer: RawPeer): string[] {
  const raws: string[] = []
  peer.conn!.on('data', (data: Buffer) => raws.push(data.toString('utf8')))
  return raws
}

// ---------- item 2: a sync page reads about maxPageBytes, whatever its limit ----------

test('sync pages: concurrent limit-1000 syncs of 60 kB messages grow a child daemon by about the pages, not limit × message', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const d = daemon(t, [], {
    STORAGE_DIR: storage,
    DHT_BOOTSTRAP: bootstrapEnv(net),
    DHT_HOST: '127.0.0.1',
    STATS_INTERVAL: '0',
    RATE_BYTES: '100MiB'
  })
  const key = await d.ready()
  const pid = d.child.pid!

  const writer = new RawPeer(net)
  teardown(t, () => writer.close())
  await writer.connectTo(key)
  await writer.nextOfType('root-peer-announcement')
  const COUNT = 200
  const SIZE = 60_000
  for (let i = 0; i < COUNT; i++) {
    writer.send({ type: 'message', roomName: 'big', id: `m${i}`, message: crypto.randomBytes(SIZE * 3 / 4).toString('base64') })
  }
  for (let i = 0; i < COUNT; i++) await writer.next(f => f.type === 'message-ack' && f.id === `m${i}`, 60_000)

  const CONNECTIONS = 8
  const SYNCS = 10
  const readers: RawPeer[] = []
  for (let c = 0; c < CONNECTIONS; c++) {
    const reader = new RawPeer(net)
    teardown(t, () => reader.close())
    await reader.connectTo(key)
    await reader.nextOfType('root-peer-announcement')
    readers.push(reader)
  }
  const before = await memOf(pid, 'VmRSS')
  // reset the peak RSS (VmHWM) to the current RSS, so the peak measured is the syncs'
  await fs.writeFile(`/proc/${pid}/clear_refs`, '5')
  const sizes: number[] = []
  const counts: number[] = []
  await Promise.all(readers.map(async (r, c) => {
    const raws = rawFrames(r)
    // all at once: each connection's syncs are answered one after another, the connections concurrently
    for (let s = 0; s < SYNCS; s++) r.send({ type: 'sync-request', roomName: 'big', lastIndex: c + s, limit: 1000, requestId: s })
    for (let s = 0; s < SYNCS; s++) {
      const page = await r.next(f => f.requestId === s, 60_000)
      assert.equal(page.type, 'sync-response')
      assert.equal(page.totalMessages, COUNT)
      assert.ok(page.messages.length >= 1)
      assert.equal(page.nextIndex, c + s + page.messages.length)
      counts.push(page.messages.length)
    }
    for (const raw of raws.filter(r => r.startsWith('{"type":"sync-response"'))) {
      const text = pageText(raw)
      const entries = JSON.parse('[' + text + ']')
      const bytes = Buffer.byteLength(text)
      sizes.push(bytes)
      if (entries.length > 1) assert.ok(bytes <= DEFAULT_LIMITS.maxPageBytes, `a page of ${entries.length} entries is ${bytes} bytes`)
    }
  }))
  const peak = await memOf(pid, 'VmHWM')
  const after = await memOf(pid, 'VmRSS')
  const growth = peak - before
  // a request in flight holds its blocks, their entries, the frame's text, its bytes and their encrypted copy (5 pages),
  // and the previous one's may not be collected yet: 10 pages a connection, and room for the heap to grow
  // (reading every block up to the limit, as before, grew it by 125 MiB here)
  // and each connection's last page may start a read-ahead of the next (its blocks and entries: 2 pages; at most
  // READ_AHEAD_PAGES in all, docs/performance.md#read-ahead)
  const bound = CONNECTIONS * 10 * DEFAULT_LIMITS.maxPageBytes + Math.min(CONNECTIONS, READ_AHEAD_PAGES) * 2 * DEFAULT_LIMITS.maxPageBytes + 24 * MiB
  console.log(`sync pages: RSS ${(before / MiB).toFixed(1)} MiB before, peak ${(peak / MiB).toFixed(1)} MiB (+${(growth / MiB).toFixed(1)} MiB, bound ${(bound / MiB).toFixed(0)} MiB), ${(after / MiB).toFixed(1)} MiB after; ` +
    `${sizes.length} pages of ${Math.min(...counts)}-${Math.max(...counts)} messages, ${Math.min(...sizes)}-${Math.max(...sizes)} bytes (maxPageBytes ${DEFAULT_LIMITS.maxPageBytes})`)
  assert.equal(sizes.length, CONNECTIONS * SYNCS)
  assert.ok(growth < bound, `RSS grew ${(growth / MiB).toFixed(1)} MiB`)
})

/** A room on a real Corestore in a temp dir, its core's reads counted. */
async function roomOnDisk (t: Parameters<typeof tmpDir>[0], name = 'r'): Promise<{ room: Room, store: Corestore, reads: { blocks: number, bytes: number, seeks: number } }> {
  const store = new Corestore(await tmpDir(t))
  teardown(t, () => store.close())
  const core = store.get({ name: `room-${name}` })
  await core.ready()
  const reads = { blocks: 0, bytes: 0, seeks: 0 }
  const seek = core.seek.bind(core)
  // every block read goes through the storage's read batches (a page's batch, and Hypercore's own get)
  const storage = core.state.storage
  const read = storage.read.bind(storage)
  storage.read = () => {
    const rx = read()
    const getBlock = rx.getBlock.bind(rx)
    rx.getBlock = async (index: number) => {
      const block = await getBlock(index)
      reads.blocks++
      if (block !== null) reads.bytes += block.byteLength
      return block
    }
    return rx
  }
  core.seek = async (bytes, opts) => {
    reads.seeks++
    return seek(bytes, opts)
  }
  const info: RoomState = { name, messageCount: 0, createdAt: 0, lastActivity: 0, byteLength: 0 }
  return { room: new Room(name, core, info), store, reads }
}

/** A stored record as the daemon writes it, its message `size` characters (some two-byte ones). */
function record (i: number, size: number, id = `id-${i}`): Buffer {
  const key = 'ab'.repeat(32)
  const message = 'é'.repeat(i % 3) + 'x'.repeat(size)
  return Buffer.from(encodeRecord({ message, storedAt: 1700000000000 + i, fromPeer: key, senderPublicKey: key, id }, JSON.stringify(message)))
}

/** The page the docs describe, read the simple way: every block up to `limit`, cut before maxBytes. */
async function referencePage (core: Hypercore, length: number, from: number, limit: number, maxBytes: number): Promise<Buffer[]> {
  const entries: Buffer[] = []
  let bytes = -1
  for (let i = from; i < Math.min(length, from + limit); i++) {
    const block = await core.get(i, { wait: false })
    if (block === null) break
    const entry = pageEntry(block, i)
    if (entries.length > 0 && bytes + 1 + Buffer.byteLength(entry) > maxBytes) break
    entries.push(entry)
    bytes += 1 + Buffer.byteLength(entry)
  }
  return entries
}

test('sync pages: a page reads no more than maxBytes of blocks (or its one block), and is the page the docs describe', async t => {
  const { room, reads } = await roomOnDisk(t)
  // sizes from 150 bytes to 60 kB, a few large runs among small ones
  const sizes = Array.from({ length: 600 }, (_, i) => i % 97 < 5 ? 60_000 : i % 7 === 0 ? 5_000 + (i * 7919) % 20_000 : 150 + (i * 104_729) % 900)
  await Promise.all(sizes.map((size, i) => room.append(record(i, size))))
  const rnd = fc.sample(fc.tuple(fc.nat(599), fc.integer({ min: 1, max: 1000 }), fc.constantFrom(1000, 40_000, 100_000, 524_288)), { numRuns: 150, seed: 42 })
  let pages = 0
  let seeks = 0
  let overRead = 0
  for (const [from, limit, maxBytes] of rnd) {
    const want = await referencePage(room.core, room.length, from, limit, maxBytes)
    Object.assign(reads, { blocks: 0, bytes: 0, seeks: 0 })
    const page = await room.readPage(from, limit, maxBytes)
    pages++
    seeks += reads.seeks
    assert.equal(page.totalMessages, 600)
    assert.equal(page.nextIndex, from + page.entries.length)
    assert.deepEqual(page.entries, want.slice(0, page.entries.length), 'the same records, in order')
    assert.ok(page.entries.length >= 1)
    const bytes = Buffer.byteLength(page.entries.join(','))
    assert.ok(page.entries.length === 1 || bytes <= maxBytes, `${bytes} > ${maxBytes}`)
    assert.ok(reads.bytes <= maxBytes || reads.blocks === 1, `read ${reads.blocks} blocks, ${reads.bytes} bytes for a ${maxBytes}-byte page`)
    overRead = Math.max(overRead, reads.bytes - bytes)
    // never much shorter than the simple page: the overhead is estimated, at most a few entries' worth
    if (page.entries.length < want.length) {
      const next = Buffer.byteLength(want[page.entries.length])
      assert.ok(bytes + 1 + next > maxBytes * 0.95, `page of ${page.entries.length} (${bytes} bytes) where ${want.length} fit`)
    }
  }
  // a client paging on through the room: the next page's start is known, so one or two seeks a page
  Object.assign(reads, { blocks: 0, bytes: 0, seeks: 0 })
  let sequential = 0
  for (let at = 0; at < 600; sequential++) at = (await room.readPage(at, 1000, 100_000)).nextIndex
  console.log(`sync pages (Room): ${pages} random pages, ${(seeks / pages).toFixed(1)} seeks a page; ` +
    `paging through 600 blocks: ${sequential} pages, ${(reads.seeks / sequential).toFixed(1)} seeks a page, ${reads.blocks} blocks read; most bytes read beyond a page: ${overRead}`)
  assert.equal(reads.blocks, 600, 'paging through reads each block once')
})

test('sync pages: a block missing from storage ends the page; without the tree\'s offsets, pages are still the same', async t => {
  const { room, reads } = await roomOnDisk(t)
  for (let i = 0; i < 40; i++) await room.append(record(i, 10_000))
  await room.core.clear(12, 13)
  const page = await room.readPage(0, 1000, 524_288)
  assert.equal(page.nextIndex, 12, 'stops before the missing block')
  const after = await room.readPage(13, 1000, 524_288)
  assert.equal(after.nextIndex, 40)

  // a tree that cannot say (nodes not held here): blocks are read in small steps, the page is the same
  const want = await referencePage(room.core, room.length, 14, 1000, 100_000)
  room.core.seek = async () => null
  Object.assign(reads, { blocks: 0, bytes: 0, seeks: 0 })
  const blind = await room.readPage(14, 1000, 100_000)
  assert.deepEqual(blind.entries, want)
  console.log(`sync pages without offsets: ${blind.entries.length} entries, ${reads.blocks} blocks read (${reads.bytes} bytes) for a 100000-byte page`)
  assert.ok(reads.bytes <= 100_000 + 16 * 10_100)
})

// ---------- item 3: a room's ids are bounded in characters as well as in number ----------

test('dedup ids: at most DEDUP_WINDOW ids and DEDUP_ID_CHARS characters per room, the oldest forgotten first, recent ones still deduplicated', async t => {
  const { room } = await roomOnDisk(t)
  await room.idsReady()
  const long = (i: number): string => String(i).padStart(128, 'k')
  const N = 3000
  const first = await Promise.all(Array.from({ length: N }, (_, i) => room.storeOnce(long(i), record(i, 100, long(i)))))
  assert.ok(first.every((r, i) => r.index === i && !r.duplicate))
  const held = Math.floor(DEDUP_ID_CHARS / 128)
  assert.equal(room.idCount, held, 'only as many 128-character ids as fit in DEDUP_ID_CHARS')
  assert.ok(room.idChars <= DEDUP_ID_CHARS)
  const longIds = { count: room.idCount, chars: room.idChars }
  // the newest are held: a resend is a duplicate, with its original index
  const again = await room.storeOnce(long(N - 1), record(0, 1, long(N - 1)))
  assert.deepEqual(again, { index: N - 1, duplicate: true })
  assert.deepEqual(await room.storeOnce(long(N - held), record(0, 1, long(N - held))), { index: N - held, duplicate: true })
  // the oldest was forgotten: stored again
  assert.deepEqual(await room.storeOnce(long(0), record(0, 1, long(0))), { index: N, duplicate: false })
  // two resends of one id in the same tick: one append
  const [a, b] = await Promise.all([room.storeOnce('twice', record(1, 1, 'twice')), room.storeOnce('twice', record(1, 1, 'twice'))])
  assert.deepEqual([a.duplicate, b.duplicate, a.index === b.index], [false, true, true])

  // short ids: bounded by count
  const many = await Promise.all(Array.from({ length: DEDUP_WINDOW + 500 }, (_, i) => room.storeOnce(`s${i}`, record(i, 10, `s${i}`))))
  assert.equal(room.idCount, DEDUP_WINDOW)
  assert.ok(room.idChars <= DEDUP_ID_CHARS)
  assert.equal((await room.storeOnce(`s${DEDUP_WINDOW + 499}`, record(0, 1, `s${DEDUP_WINDOW + 499}`))).duplicate, true)
  assert.equal((await room.storeOnce('s0', record(0, 1, 's0'))).duplicate, false)

  // read back from the core (a reopened room) under the same bounds: the newest ids
  const reopened = new Room('r', room.core, room.info)
  await reopened.idsReady()
  assert.equal(reopened.idCount, DEDUP_WINDOW)
  assert.ok(reopened.idChars <= DEDUP_ID_CHARS)
  assert.deepEqual(await reopened.storeOnce(`s${DEDUP_WINDOW + 499}`, record(0, 1, `s${DEDUP_WINDOW + 499}`)), { index: many.at(-1)!.index, duplicate: true })
  assert.deepEqual(await reopened.storeOnce('s0', record(0, 1, 's0')), { index: room.length - 1, duplicate: true }, 's0 as stored again, at its newest index')

  // long ids read back: as many as fit in DEDUP_ID_CHARS, the newest
  const { room: longRoom } = await roomOnDisk(t, 'long')
  await longRoom.idsReady()
  await Promise.all(Array.from({ length: N }, (_, i) => longRoom.storeOnce(long(i), record(i, 100, long(i)))))
  const back = new Room('long', longRoom.core, longRoom.info)
  await back.idsReady()
  assert.equal(back.idCount, held)
  assert.equal((await back.storeOnce(long(N - held), record(0, 1, long(N - held)))).duplicate, true)
  assert.equal((await back.storeOnce(long(N - held - 1), record(0, 1, long(N - held - 1)))).duplicate, false)
  console.log(`dedup ids: ${N} ids of 128 characters stored, ${longIds.count} held (${longIds.chars} characters of ${DEDUP_ID_CHARS}); ` +
    `${DEDUP_WINDOW + 500} short ids: ${reopened.idCount} held (${reopened.idChars} characters); worst case per room ${DEDUP_WINDOW} ids and ${DEDUP_ID_CHARS} characters`)
})

// ---------- item 9: a message is stored as sent, or refused ----------

/** Sends one raw frame and resolves with its ack or error. */
async function sendRaw (peer: RawPeer, id: string, body: string | Buffer): Promise<any> {
  peer.send(Buffer.isBuffer(body) ? body : Buffer.from(body))
  return peer.next(f => f.id === id && (f.type === 'message-ack' || f.type === 'error'))
}

/** The stored `message` of one index as the raw JSON text the root peer sends. */
async function storedText (peer: RawPeer, raws: string[], roomName: string, index: number): Promise<string> {
  const requestId = `text-${index}`
  peer.send({ type: 'sync-request', roomName, lastIndex: index, limit: 1, requestId })
  const page = await peer.next(f => f.requestId === requestId)
  assert.equal(page.messages.length, 1)
  const raw = raws.find(r => r.includes(`"requestId":"${requestId}"`))!
  const head = '"messages":[{"message":'
  return raw.slice(raw.indexOf(head) + head.length, raw.lastIndexOf(',"storedAt":'))
}

const NO_RATES = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0, banThreshold: 0 }

test('messages: numbers a double would change, and frames that are not UTF-8, are refused with BAD_FRAME; nothing is stored', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, NO_RATES)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const refused: Array<[string, string | Buffer, RegExp]> = [
    ['inf', '{"type":"message","roomName":"r","id":"inf","message":1e999}', /^message: number 1e999 cannot be stored exactly/],
    ['obj', '{"type":"message","roomName":"r","id":"obj","message":{"a":-1e999,"n":12345678901234567890}}', /^message: number -1e999 cannot be stored exactly/],
    ['big', '{"type":"message","roomName":"r","id":"big","message":{"n":12345678901234567890}}', /^message: number 12345678901234567890 cannot be stored exactly \(it would be 12345678901234567000\)/],
    ['2^53+1', '{"type":"message","roomName":"r","id":"2^53+1","message":[9007199254740993]}', /9007199254740993 cannot be stored exactly/],
    ['digits', '{"type":"message","roomName":"r","id":"digits","message":{"x":0.1000000000000000055511151231257827}}', /cannot be stored exactly/],
    ['tiny', '{"type":"message","roomName":"r","id":"tiny","message":1e-400}', /1e-400 cannot be stored exactly \(it would be 0\)/],
    ['-0', '{"type":"message","roomName":"r","id":"-0","message":{"z":-0}}', /number -0 cannot be stored exactly \(it would be 0\)/],
    ['utf8', Buffer.concat([Buffer.from('{"type":"message","roomName":"r","id":"utf8","message":"ab'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]), /^not valid UTF-8$/],
    ['surrogate', Buffer.concat([Buffer.from('{"type":"message","roomName":"r","id":"surrogate","message":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')]), /^not valid UTF-8$/]
  ]
  for (const [id, body, reason] of refused) {
    const answer = await sendRaw(peer, id, body)
    assert.equal(answer.type, 'error', id)
    assert.equal(answer.code, 'BAD_FRAME', id)
    assert.match(answer.message, reason, id)
    console.log(`refused ${id}: ${answer.code}: ${answer.message}`)
  }
  const { messages, pages } = await peer.syncAll('r')
  assert.equal(messages.length, 0)
  assert.equal(pages[0].totalMessages, 0, 'nothing stored')
})

test('messages: what a double keeps, lone surrogates and emoji are stored and read back byte for byte', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, NO_RATES)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const raws = rawFrames(peer)
  const kept: Array<[string, string]> = [
    ['{"x":1.5}', '{"x":1.5}'],
    ['{"n":9007199254740991}', '{"n":9007199254740991}'],
    ['"\\ud800"', '"\\ud800"'],
    ['"a\\udc00b\\ud83d"', '"a\\udc00b\\ud83d"'],
    ['"😀 é ✓"', '"😀 é ✓"'],
    ['"\\ud83d\\ude00"', '"😀"'],
    ['1.5e3', '1500'],
    ['[0, -1, 0.1, 5e-324, 1.7976931348623157e308, 1E21]', '[0,-1,0.1,5e-324,1.7976931348623157e+308,1e+21]'],
    ['{"s":"1e999","n":-12.5}', '{"s":"1e999","n":-12.5}']
  ]
  for (const [i, [sent, stored]] of kept.entries()) {
    const ack = await sendRaw(peer, `k${i}`, `{"type":"message","roomName":"kept","id":"k${i}","message":${sent}}`)
    assert.equal(ack.type, 'message-ack', `${sent}: ${JSON.stringify(ack)}`)
    assert.equal(ack.messageIndex, i)
  }
  for (const [i, [sent, stored]] of kept.entries()) {
    const text = await storedText(peer, raws, 'kept', i)
    assert.equal(text, stored, sent)
    assert.deepEqual(JSON.parse(text), JSON.parse(sent))
  }
  console.log(`kept byte for byte: ${kept.map(([, stored]) => stored).join(' ')}`)
})

/** What the daemon stores for a message frame, as decodeFrame and the stored record make it: the record's `message` text, or the refusal. */
function storedMessage (sentText: string): { code: string, message: string } | { json: string } {
  let frame: MessageFrame
  try {
    frame = decodeFrame(Buffer.from(`{"type":"message","roomName":"p","id":"x","message":${sentText}}`), DEFAULT_LIMITS) as MessageFrame
  } catch (err: any) {
    return { code: err.code, message: err.message }
  }
  const block = Buffer.from(encodeRecord({ message: frame.message, storedAt: 1, fromPeer: 'f', senderPublicKey: 'f', id: 'x' }, frame.messageJson))
  return { json: JSON.stringify(JSON.parse(pageEntry(block, 0).toString()).message) === frame.messageJson ? frame.messageJson : 'mismatch' }
}

/** Random number texts in JSON's grammar, many beyond what a double holds. */
const numberText = fc.tuple(fc.boolean(), fc.stringMatching(/^(0|[1-9][0-9]{0,24})$/), fc.option(fc.stringMatching(/^[0-9]{1,24}$/)), fc.option(fc.integer({ min: -400, max: 400 })))
  .map(([neg, int, frac, exp]) => (neg ? '-' : '') + int + (frac === null ? '' : '.' + frac) + (exp === null ? '' : 'e' + exp))

test('messages: for random JSON values and number texts, decodeFrame refuses with BAD_FRAME or the stored text parses to the same value and re-stringifies the same', async t => {
  let refusedCount = 0
  let storedCount = 0
  const check = (sentText: string): void => {
    const out = storedMessage(sentText)
    if ('code' in out) {
      assert.equal(out.code, 'BAD_FRAME', `${sentText}: ${out.message}`)
      refusedCount++
      return
    }
    storedCount++
    const sent = JSON.parse(sentText)
    assert.deepEqual(JSON.parse(out.json), sent, sentText)
    assert.equal(JSON.stringify(JSON.parse(out.json)), out.json)
    assert.equal(out.json, JSON.stringify(sent))
  }
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 4 }), value => check(JSON.stringify(value))), { numRuns: 2000, seed: 7 })
  fc.assert(fc.property(numberText, text => {
    check(text)
    const out = storedMessage(text)
    const n = Number(text)
    // refused exactly when the decimal sent is not the decimal a double stores
    const exact = Number.isFinite(n) && !Object.is(n, -0) && BigIntDecimal(text) === BigIntDecimal(JSON.stringify(n))
    assert.equal('json' in out, exact, `${text} -> ${JSON.stringify(out)}`)
  }), { numRuns: 3000, seed: 11 })
  // of repeated `message` members the last is stored (as JSON.parse keeps it), also under an escaped key
  assert.ok('json' in storedMessage('1e999,"message":"x"'))
  assert.equal((storedMessage('"x","mess\\u0061ge":1e999') as any).code, 'BAD_FRAME')
  // a message string with every kind of character, lone surrogates included
  fc.assert(fc.property(fc.string({ unit: fc.nat(0xffff).map(c => String.fromCharCode(c)), maxLength: 40 }), s => {
    const out = storedMessage(JSON.stringify(s))
    assert.ok('json' in out)
    assert.equal(JSON.parse(out.json), s)
  }), { numRuns: 1000, seed: 13 })
  console.log(`property: ${storedCount} stored exactly, ${refusedCount} refused with BAD_FRAME`)
  assert.ok(refusedCount > 100 && storedCount > 2000)
})

/** A decimal number text as an exact rational n/10^k, normalised: the oracle the property compares with. */
function BigIntDecimal (text: string): string {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)!
  let digits = BigInt(m[2] + (m[3] ?? ''))
  let scale = (m[3] ?? '').length - Number(m[4] ?? 0)
  if (digits === 0n) return '0'
  while (digits % 10n === 0n) {
    digits /= 10n
    scale--
  }
  return `${m[1]}${digits}/${scale}`
}

test('messages: random JSON values over a real connection are acked and read back as the same value, or refused with BAD_FRAME', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, NO_RATES)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const raws = rawFrames(peer)
  const values = fc.sample(fc.oneof(fc.jsonValue({ maxDepth: 3 }), numberText), { numRuns: 60, seed: 5 })
  const stored: Array<{ index: number, sent: string }> = []
  let refusedCount = 0
  for (const [i, value] of values.entries()) {
    // a number text is sent as it is; any other value as its JSON
    const text = typeof value === 'string' && /^-?\d/.test(value) && i % 2 === 1 ? value : JSON.stringify(value)
    const answer = await sendRaw(peer, `v${i}`, `{"type":"message","roomName":"prop","id":"v${i}","message":${text}}`)
    if (answer.type === 'error') {
      assert.equal(answer.code, 'BAD_FRAME', `${text}: ${answer.message}`)
      refusedCount++
    } else {
      assert.equal(answer.messageIndex, stored.length)
      stored.push({ index: answer.messageIndex, sent: text })
    }
  }
  for (const { index, sent } of stored) {
    const text = await storedText(peer, raws, 'prop', index)
    assert.deepEqual(JSON.parse(text), JSON.parse(sent), sent)
    assert.equal(JSON.stringify(JSON.parse(text)), text)
  }
  console.log(`over the wire: ${stored.length} stored and read back, ${refusedCount} refused with BAD_FRAME`)
  assert.ok(stored.length > 20)
})
