import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { RootPeerError, type ErrorCode } from 'root-peer-client/protocol'
import {
  DEFAULT_LIMITS, MAX_ID, MAX_NESTING, decodeFrame, encodeAck, encodeRecord, frameContext, isHexTopic, isSignedEntry, pageEntry,
  parseRecord, validateRoomName, type Limits, type MessageFrame, type StoredRecord
} from '../src/protocol/protocol.js'

// Fast tests of the codec on its own: no network, no storage.

const LIMITS: Limits = { ...DEFAULT_LIMITS }
const KEY = 'ab'.repeat(32)
const SIG = 'cd'.repeat(64)

function bytes (frame: string | object | Buffer): Buffer {
  if (Buffer.isBuffer(frame)) return frame
  return Buffer.from(typeof frame === 'string' ? frame : JSON.stringify(frame))
}

function decode (frame: string | object | Buffer, limits = LIMITS): ReturnType<typeof decodeFrame> {
  return decodeFrame(bytes(frame), limits)
}

/** A message frame's text with `messageText` spliced in as the raw JSON of `message`. */
function messageText (messageText: string, extra = ''): string {
  return `{"type":"message","roomName":"r"${extra},"message":${messageText}}`
}

function decodeMessage (text: string, limits = LIMITS): MessageFrame {
  const frame = decode(text, limits)
  assert.equal(frame.type, 'message')
  return frame as MessageFrame
}

function refuses (frame: string | object | Buffer, code: ErrorCode, message?: RegExp, limits = LIMITS): RootPeerError {
  let caught: unknown
  assert.throws(() => decode(frame, limits), err => {
    caught = err
    return true
  })
  assert.ok(caught instanceof RootPeerError, `a RootPeerError, not ${String(caught)}`)
  assert.equal(caught.code, code, `${code} for ${bytes(frame).toString('utf8').slice(0, 80)}: got ${caught.code} (${caught.message})`)
  if (message !== undefined) assert.match(caught.message, message)
  return caught
}

function nested (depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth)
}

test('register-room: decodes to the typed frame; writerPublicKey and signature lowercased; roomId is an alias', () => {
  assert.deepEqual(decode({ type: 'register-room', roomName: 'lobby' }), { type: 'register-room', roomName: 'lobby' })
  assert.deepEqual(decode({ type: 'register-room', roomId: 'lobby', requestId: 7 }), { type: 'register-room', roomName: 'lobby', requestId: 7 })
  assert.deepEqual(
    decode({ type: 'register-room', roomName: 'lobby', requestId: 'q1', writerPublicKey: KEY.toUpperCase(), signature: SIG.toUpperCase(), extra: 1 }),
    { type: 'register-room', roomName: 'lobby', requestId: 'q1', writerPublicKey: KEY, signature: SIG }
  )
  // roomName wins over roomId when both are there
  assert.equal(decode({ type: 'register-room', roomName: 'a', roomId: 'b' }).roomName, 'a')
  for (const bad of [KEY.slice(1), KEY + 'a', 'g'.repeat(64), 42, null, '']) {
    refuses({ type: 'register-room', roomName: 'lobby', writerPublicKey: bad }, 'BAD_FRAME', /writerPublicKey/)
  }
  for (const bad of [SIG.slice(1), SIG + 'a', 'z'.repeat(128), 1, null]) {
    refuses({ type: 'register-room', roomName: 'lobby', signature: bad }, 'BAD_FRAME', /signature/)
  }
})

test('sync-request: lastIndex defaults to 0, limit to defaultPageMessages, and is lowered to maxPageMessages', () => {
  const limits = { ...LIMITS, defaultPageMessages: 7, maxPageMessages: 20 }
  assert.deepEqual(decode({ type: 'sync-request', roomName: 'r' }, limits), { type: 'sync-request', roomName: 'r', lastIndex: 0, limit: 7 })
  assert.deepEqual(decode({ type: 'sync-request', roomName: 'r', lastIndex: 12, limit: 3, requestId: 'x', signature: SIG.toUpperCase() }, limits),
    { type: 'sync-request', roomName: 'r', lastIndex: 12, limit: 3, requestId: 'x', signature: SIG })
  assert.equal((decode({ type: 'sync-request', roomName: 'r', limit: 1 }, limits) as any).limit, 1)
  assert.equal((decode({ type: 'sync-request', roomName: 'r', limit: 20 }, limits) as any).limit, 20)
  assert.equal((decode({ type: 'sync-request', roomName: 'r', limit: 21 }, limits) as any).limit, 20)
  assert.equal((decode({ type: 'sync-request', roomName: 'r', limit: Number.MAX_SAFE_INTEGER }, limits) as any).limit, 20)
  assert.equal((decode({ type: 'sync-request', roomName: 'r', lastIndex: Number.MAX_SAFE_INTEGER }, limits) as any).lastIndex, Number.MAX_SAFE_INTEGER)
  // 1e2 is the integer 100
  assert.equal((decode('{"type":"sync-request","roomName":"r","lastIndex":1e2}') as any).lastIndex, 100)
})

test('sync-request: a negative or non-integer index, and a limit of 0, are BAD_FRAME', () => {
  for (const bad of [-1, 1.5, '3', null, true, [], {}, Number.MAX_SAFE_INTEGER + 1]) {
    refuses({ type: 'sync-request', roomName: 'r', lastIndex: bad }, 'BAD_FRAME', /lastIndex/)
    refuses({ type: 'sync-request', roomName: 'r', limit: bad }, 'BAD_FRAME', /limit/)
  }
  refuses({ type: 'sync-request', roomName: 'r', limit: 0 }, 'BAD_FRAME', /limit: must be at least 1/)
  // -0 is the integer 0 (JSON.parse reads it as -0, which compares equal to 0 and is written 0)
  assert.ok((decode('{"type":"sync-request","roomName":"r","lastIndex":-0}') as any).lastIndex === 0)
  refuses('{"type":"sync-request","roomName":"r","lastIndex":1e999}', 'BAD_FRAME', /lastIndex/)
})

test('message: decodes with messageJson, size and id; a string is sized by its UTF-8 bytes, anything else by its JSON', () => {
  const frame = decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: 'héllo', id: 'm1', signature: SIG.toUpperCase() }))
  assert.deepEqual(frame, { type: 'message', roomName: 'r', message: 'héllo', messageJson: '"héllo"', size: 6, id: 'm1', signature: SIG })
  const obj = decodeMessage(messageText('{ "a" : [1, 2, {"b": "é"}] }'))
  assert.deepEqual(obj.message, { a: [1, 2, { b: 'é' }] })
  assert.equal(obj.messageJson, '{"a":[1,2,{"b":"é"}]}', 'stored as JSON.stringify writes it: no whitespace')
  assert.equal(obj.size, Buffer.byteLength(obj.messageJson))
  assert.equal(obj.id, undefined)
  assert.ok(!('id' in obj) && !('signature' in obj), 'absent optional fields are not set to undefined')
  // false and 0 are messages; only null and a missing one are not
  assert.equal(decodeMessage(messageText('false')).messageJson, 'false')
  assert.equal(decodeMessage(messageText('0')).messageJson, '0')
  // a repeated key keeps its last value, as JSON.parse does
  assert.equal(decodeMessage(messageText('{"k":1,"k":2}')).messageJson, '{"k":2}')
  assert.equal(decodeMessage(`{"type":"message","roomName":"r","message":"a","message":"b"}`).message, 'b')
})

test('message: strings, emoji, decimals and safe integers survive exactly', () => {
  const cases: Array<[string, unknown, string]> = [
    // [message text on the wire, the value it must decode to, messageJson]
    ['"\\ud800"', '\ud800', '"\\ud800"'],
    ['"\\udfff x \\ud83d"', '\udfff x \ud83d', '"\\udfff x \\ud83d"'],
    ['"😀 \\ud83d\\ude00"', '😀 😀', '"😀 😀"'],
    ['"\\u00e9"', 'é', '"é"'],
    ['"a\\"b\\\\c\\n"', 'a"b\\c\n', '"a\\"b\\\\c\\n"'],
    ['{"x":1.5}', { x: 1.5 }, '{"x":1.5}'],
    ['9007199254740991', 9007199254740991, '9007199254740991'],
    ['-9007199254740991', -9007199254740991, '-9007199254740991'],
    ['1.5e3', 1500, '1500'],
    ['1.5E+3', 1500, '1500'],
    ['15000e-1', 1500, '1500'],
    ['0.1', 0.1, '0.1'],
    ['0.0', 0, '0'],
    ['-1.25e-3', -0.00125, '-0.00125'],
    ['100000000000000000000', 1e20, '100000000000000000000'],
    ['1e21', 1e21, '1e+21'],
    ['1.7976931348623157e308', Number.MAX_VALUE, '1.7976931348623157e+308'],
    ['5e-324', Number.MIN_VALUE, '5e-324'],
    ['0.30000000000000004', 0.1 + 0.2, '0.30000000000000004'],
    ['["😀",{"k":[true,null,-7]}]', ['😀', { k: [true, null, -7] }], '["😀",{"k":[true,null,-7]}]']
  ]
  for (const [text, value, json] of cases) {
    const frame = decodeMessage(messageText(text))
    assert.deepEqual(frame.message, value, text)
    assert.equal(frame.messageJson, json, text)
    assert.deepEqual(JSON.parse(frame.messageJson), value, text)
  }
  // the lone surrogate is kept as the very same string, not replaced by U+FFFD
  const lone = decodeMessage(messageText('"\\ud800"'))
  assert.equal(lone.message, '\ud800')
  assert.equal((lone.message as string).length, 1)
})

test('BAD_FRAME: numbers in a message that would not be stored as the same decimal number', () => {
  const cases: Array<[string, RegExp]> = [
    ['1e999', /number 1e999 cannot be stored exactly \(it would be null\)/],
    ['-1e999', /it would be null/],
    ['12345678901234567890', /12345678901234567890 cannot be stored exactly \(it would be 12345678901234567000\)/],
    ['9007199254740993', /it would be 9007199254740992/],
    ['-0', /number -0 cannot be stored exactly \(it would be 0\)/],
    ['-0.0', /it would be 0/],
    ['-0e5', /it would be 0/],
    ['1e-400', /it would be 0/],
    ['0.12345678901234567890123', /cannot be stored exactly/],
    ['{"a":[1,{"b":1e999}]}', /1e999/],
    ['[1.5, 2, 12345678901234567890]', /12345678901234567890/]
  ]
  for (const [text, message] of cases) refuses(messageText(text), 'BAD_FRAME', message)
  // the member read last counts, as in JSON.parse, also when its key is spelled with an escape
  refuses('{"type":"message","roomName":"r","message":"fine","message":1e999}', 'BAD_FRAME', /1e999/)
  refuses('{"type":"message","roomName":"r","\\u006dessage":[1e999]}', 'BAD_FRAME', /1e999/)
  assert.equal(decodeMessage('{"type":"message","roomName":"r","message":1e999,"message":"fine"}').message, 'fine')
  // numbers outside the message, or inside strings, or in a nested `message` key that is a string, are not its numbers
  assert.equal(decodeMessage(messageText('{"message":"1e999","n":"-0"}', ',"x":1e999,"y":-0')).messageJson, '{"message":"1e999","n":"-0"}')
  assert.equal(decodeMessage(messageText('"12345678901234567890"')).message, '12345678901234567890')
  // a string message is never checked for numbers: it is stored as sent
  assert.equal(decodeMessage(`{"type":"message","roomName":"r","x":[1e999],"message":"s"}`).message, 's')
})

test('BAD_FRAME: not JSON, not an object, no type, invalid UTF-8, nesting over MAX_NESTING', () => {
  for (const text of ['', 'not json', '{"type":"message"', '[]', '[{"type":"message"}]', '"message"', '42', 'null', 'true']) {
    refuses(text, 'BAD_FRAME', /not a JSON object/)
  }
  for (const text of ['{}', '{"type":1}', '{"type":null}', '{"type":["message"]}', '{"roomName":"r","message":"m"}']) {
    refuses(text, 'BAD_FRAME', /type: required string/)
  }
  const valid = Buffer.from(messageText('"xx"'))
  for (const bad of [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80]]) {
    // the bad bytes inside the message string, where decoding would have put U+FFFD
    const at = valid.indexOf('xx')
    const frame = Buffer.concat([valid.subarray(0, at), Buffer.from(bad), valid.subarray(at + 2)])
    refuses(frame, 'BAD_FRAME', /not valid UTF-8/)
  }
  // the frame object is one level: a message nested MAX_NESTING - 1 deep is the deepest accepted
  assert.equal(decodeMessage(messageText(nested(MAX_NESTING - 1))).messageJson, nested(MAX_NESTING - 1))
  refuses(messageText(nested(MAX_NESTING)), 'BAD_FRAME', new RegExp(`nested deeper than ${MAX_NESTING} levels`))
  refuses(messageText('{"a":'.repeat(MAX_NESTING) + '1' + '}'.repeat(MAX_NESTING)), 'BAD_FRAME', /nested deeper/)
  refuses(nested(100_000), 'BAD_FRAME', /nested deeper/)
  // brackets inside strings are not nesting, escaped quotes included
  const bracky = '"\\"' + '['.repeat(100) + '{'.repeat(100) + '"'
  assert.equal(decodeMessage(messageText(bracky)).message, '"' + '['.repeat(100) + '{'.repeat(100))
  // many brackets side by side are not deep
  assert.equal(decodeMessage(messageText('[' + Array(200).fill('[]').join(',') + ']')).size, 200 * 3 + 1)
})

test('BAD_FRAME: a bad id or requestId, a null or missing message', () => {
  for (const id of ['', 'x'.repeat(MAX_ID + 1), 5, null, ['a'], { id: 'a' }]) {
    refuses({ type: 'message', roomName: 'r', message: 'm', id }, 'BAD_FRAME', /id: must be a string/)
  }
  assert.equal(decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: 'm', id: 'x'.repeat(MAX_ID) })).id, 'x'.repeat(MAX_ID))
  for (const type of ['register-room', 'sync-request']) {
    for (const requestId of ['', 'x'.repeat(MAX_ID + 1), 1.5, Number.MAX_SAFE_INTEGER + 1, true, null, {}, []]) {
      refuses({ type, roomName: 'r', requestId }, 'BAD_FRAME', /requestId/)
    }
    for (const requestId of ['x', 'x'.repeat(MAX_ID), 0, -3, Number.MAX_SAFE_INTEGER]) {
      assert.equal((decode({ type, roomName: 'r', requestId }) as any).requestId, requestId)
    }
  }
  refuses({ type: 'message', roomName: 'r' }, 'BAD_FRAME', /message: required/)
  refuses({ type: 'message', roomName: 'r', message: null }, 'BAD_FRAME', /message: required/)
})

test('UNKNOWN_TYPE: any type without a validator, prototype names included', () => {
  for (const type of ['hello', '', 'Message', 'message-ack', 'sync-response', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
    refuses({ type, roomName: 'r', message: 'm' }, 'UNKNOWN_TYPE')
  }
  // the error names the type, cut to 64 characters
  const err = refuses({ type: 'y'.repeat(1000) }, 'UNKNOWN_TYPE')
  assert.ok(err.message.length < 150, err.message)
  // a __proto__ key in the frame is an own key of JSON.parse's object, never a type
  refuses('{"__proto__":{"type":"message"},"roomName":"r","message":"m"}', 'BAD_FRAME', /type/)
})

test('BAD_ROOM_NAME: missing, not a string, empty, too long, bad characters, only dots', () => {
  const bad: unknown[] = [undefined, null, 5, ['r'], '', 'x'.repeat(129), 'a/b', 'a b', 'a\\b', 'é', 'a\u0000', '.', '..', '...', 'a?', 'a%2f', '😀']
  for (const roomName of bad) {
    for (const type of ['register-room', 'message', 'sync-request']) {
      const frame: Record<string, unknown> = { type, message: 'm' }
      if (roomName !== undefined) frame.roomName = roomName
      refuses(frame, 'BAD_ROOM_NAME')
    }
    assert.throws(() => validateRoomName(roomName), (err: RootPeerError) => err.code === 'BAD_ROOM_NAME')
  }
  for (const name of ['x'.repeat(128), '.a', 'a..', '__proto__', 'A-Z.a_z~0:9@+=#-', KEY]) {
    assert.equal(validateRoomName(name), name)
    assert.equal(decode({ type: 'register-room', roomName: name }).roomName, name)
  }
  // a bad roomName is found before a bad message
  refuses({ type: 'message', roomName: 'a b', message: null }, 'BAD_ROOM_NAME')
  assert.equal(isHexTopic(KEY), true)
  assert.equal(isHexTopic(KEY.toUpperCase()), true)
  assert.equal(isHexTopic(KEY.slice(2)), false)
  assert.equal(isHexTopic('g'.repeat(64)), false)
})

test('FRAME_TOO_LARGE is checked before anything is parsed; MESSAGE_TOO_LARGE counts UTF-8 bytes', () => {
  const limits = { ...LIMITS, maxFrameBytes: 1000, maxMessageBytes: 100 }
  // garbage, invalid UTF-8 and deep nesting over the size all get FRAME_TOO_LARGE: nothing of them was looked at
  for (const frame of [Buffer.alloc(1001, 0xff), Buffer.from(nested(600)), Buffer.from('x'.repeat(1001))]) {
    const err = refuses(frame, 'FRAME_TOO_LARGE', new RegExp(`frame of ${frame.byteLength} bytes is over the 1000-byte limit`), limits)
    assert.deepEqual(err.details, { maxFrameBytes: 1000 })
  }
  const padded = (size: number): string => {
    const base = messageText('"m"')
    return base.slice(0, -1) + ' '.repeat(size - base.length) + '}'
  }
  assert.equal(decode(padded(1000), limits).type, 'message', 'exactly maxFrameBytes is accepted')
  refuses(padded(1001), 'FRAME_TOO_LARGE', undefined, limits)

  // a string: its UTF-8 bytes (é is 2), not its JSON (quotes and escapes do not count)
  assert.equal(decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: 'é'.repeat(50) }), limits).size, 100)
  const quoted = decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: '"'.repeat(100) }), limits)
  assert.equal(quoted.size, 100)
  assert.equal(quoted.messageJson.length, 202)
  const err = refuses({ type: 'message', roomName: 'r', message: 'é'.repeat(50) + 'x' }, 'MESSAGE_TOO_LARGE', /101 bytes is over the 100-byte limit/, limits)
  assert.deepEqual(err.details, { maxMessageBytes: 100 })
  // anything else: the bytes of its JSON
  const arr = Array(33).fill(1) // [1,1,...] is 2 × 33 + 1 = 67 bytes
  assert.equal(decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: arr }), limits).size, 67)
  refuses({ type: 'message', roomName: 'r', message: { s: 'x'.repeat(93) } }, 'MESSAGE_TOO_LARGE', /101 bytes/, limits)
  assert.equal(decodeMessage(JSON.stringify({ type: 'message', roomName: 'r', message: { s: 'x'.repeat(92) } }), limits).size, 100)
})

test('encodeRecord: the block is the JSON of the record, the message spliced in as sent', () => {
  const base = { storedAt: 1_700_000_000_123, fromPeer: KEY, senderPublicKey: KEY }
  const frame = decodeMessage(messageText('{"z":[1.5e3,"😀","\\ud800"],"a":null}'))
  const json = encodeRecord({ ...base, message: frame.message }, frame.messageJson)
  assert.deepEqual(JSON.parse(json), { message: { z: [1500, '😀', '\ud800'], a: null }, ...base })
  assert.equal(json, `{"message":${frame.messageJson},"storedAt":1700000000123,"fromPeer":"${KEY}","senderPublicKey":"${KEY}"}`)

  const record: StoredRecord = { ...base, message: 'ciphertext', id: 'id "quoted" \\ é', signature: SIG, fromPeer: 'a"b' }
  const full = encodeRecord(record, JSON.stringify(record.message))
  assert.deepEqual(JSON.parse(full), record)
  assert.deepEqual(Object.keys(JSON.parse(full)), ['message', 'storedAt', 'fromPeer', 'senderPublicKey', 'id', 'signature'])
  assert.deepEqual(parseRecord(Buffer.from(full)), record)
})

test('encodeAck: the message-ack frame, duplicate only when true', () => {
  const name = 'room "x" é'
  assert.deepEqual(JSON.parse(encodeAck(JSON.stringify(name), 'id\n"1"', 42, false)), { type: 'message-ack', roomName: name, id: 'id\n"1"', messageIndex: 42 })
  assert.deepEqual(JSON.parse(encodeAck(JSON.stringify(name), 'a', 0, true)), { type: 'message-ack', roomName: name, id: 'a', messageIndex: 0, duplicate: true })
})

test('pageEntry: the stored block with messageIndex added; a block that is not an object is passed on as text', () => {
  const record: StoredRecord = { message: { n: 1 }, storedAt: 5, fromPeer: KEY, senderPublicKey: KEY, id: 'i' }
  const block = Buffer.from(encodeRecord(record, JSON.stringify(record.message)))
  assert.deepEqual(JSON.parse(pageEntry(block, 9).toString()), { ...record, messageIndex: 9 })
  assert.equal(pageEntry(block, 9).toString(), block.toString().slice(0, -1) + ',"messageIndex":9}', 'the block spliced, not re-encoded')
  assert.deepEqual(JSON.parse(pageEntry(Buffer.from('{}'), 3).toString()), { messageIndex: 3 })
  for (const text of ['hello', '[1,2]', '"s"', '42', '', '{"open"', 'é😀']) {
    assert.deepEqual(JSON.parse(pageEntry(Buffer.from(text), 7).toString()), { message: text, messageIndex: 7 }, text)
  }
  assert.equal(parseRecord(Buffer.from('[1]'))?.constructor, Array, 'an array is an object to parseRecord')
  for (const text of ['hello', '42', 'null', '"s"', '']) assert.equal(parseRecord(Buffer.from(text)), null, text)
})

test('isSignedEntry: true exactly for a record stored with a signature, whatever its message and id hold', () => {
  fc.assert(fc.property(fc.jsonValue(), fc.string(), fc.boolean(), fc.nat(), (message, id, signed, index) => {
    // a message or id that imitates a signature field must not pass for one
    const record: StoredRecord = { message, storedAt: 1, fromPeer: KEY, senderPublicKey: KEY, id, ...(signed ? { signature: SIG } : {}) }
    const entry = pageEntry(Buffer.from(encodeRecord(record, JSON.stringify(message))), index)
    assert.equal(isSignedEntry(entry), signed)
  }))
  const forged = { signature: SIG, tail: `","signature":"${SIG}` }
  const entry = pageEntry(Buffer.from(encodeRecord({ message: forged, storedAt: 1, fromPeer: KEY, senderPublicKey: KEY, id: `x","signature":"${SIG}` }, JSON.stringify(forged))), 3)
  assert.equal(isSignedEntry(entry), false)
})

test('frameContext: the type, id and requestId of a refused frame, when they can be read', () => {
  assert.deepEqual(frameContext(bytes({ type: 'message', roomName: 'a b', id: 'm1', requestId: 7, message: null }), LIMITS), { requestType: 'message', id: 'm1', requestId: 7 })
  assert.deepEqual(frameContext(bytes({ type: 'sync-request', requestId: 'q' }), LIMITS), { requestType: 'sync-request', requestId: 'q' })
  // what cannot be echoed safely is left out
  assert.deepEqual(frameContext(bytes({ type: 'x'.repeat(65), id: 'x'.repeat(MAX_ID + 1), requestId: 1.5 }), LIMITS), {})
  assert.deepEqual(frameContext(bytes({ type: 5, id: 5, requestId: '' }), LIMITS), {})
  for (const frame of ['not json', '[1]', 'null', '"s"', nested(MAX_NESTING + 1), '{"type":"message","x":' + nested(MAX_NESTING) + '}']) {
    assert.deepEqual(frameContext(bytes(frame), LIMITS), {}, frame.slice(0, 40))
  }
  const big = bytes({ type: 'message', id: 'm', pad: 'x'.repeat(2000) })
  assert.deepEqual(frameContext(big, { ...LIMITS, maxFrameBytes: 1000 }), {}, 'an oversize frame is not parsed')
  assert.equal(frameContext(big, LIMITS).id, 'm')
})

test('property: a JSON value as message is stored as its exact JSON, or refused as BAD_FRAME', () => {
  const limits = { ...LIMITS, maxFrameBytes: 16 * 1024 * 1024, maxMessageBytes: 16 * 1024 * 1024 }
  let stored = 0
  fc.assert(fc.property(fc.oneof(fc.jsonValue(), fc.jsonValue({ stringUnit: 'binary' })), value => {
    const text = JSON.stringify({ type: 'message', roomName: 'r', message: value })
    // what the wire carries (JSON.stringify writes -0 as 0)
    const sent = JSON.parse(text).message
    let frame: MessageFrame
    try {
      frame = decodeMessage(text, limits)
    } catch (err) {
      assert.ok(err instanceof RootPeerError && err.code === 'BAD_FRAME', String(err))
      // JSON.stringify writes only numbers that read back the same: null is the one value refused
      assert.equal(sent, null, `${text.slice(0, 200)} refused: ${(err as Error).message}`)
      return
    }
    stored++
    assert.deepEqual(JSON.parse(frame.messageJson), sent)
    assert.equal(JSON.stringify(JSON.parse(frame.messageJson)), frame.messageJson)
    assert.equal(frame.size, typeof sent === 'string' ? Buffer.byteLength(sent) : Buffer.byteLength(frame.messageJson))
  }), { numRuns: 1000 })
  assert.ok(stored > 800, `${stored} of 1000 stored`)
})

test('property: an integer written in decimal is stored iff a double holds it exactly', () => {
  const integer = fc.tuple(fc.boolean(), fc.stringMatching(/^[1-9][0-9]{0,29}$/), fc.nat(40)).map(([negative, digits, zeros]) => (negative ? '-' : '') + digits + '0'.repeat(zeros % 8))
  fc.assert(fc.property(integer, token => {
    const exact = BigInt(Number(token)) === BigInt(token)
    let stored: MessageFrame | null = null
    try {
      stored = decodeMessage(messageText(`[${token}]`))
    } catch (err) {
      assert.ok(err instanceof RootPeerError && err.code === 'BAD_FRAME', String(err))
    }
    assert.equal(stored !== null, exact, `${token}: ${exact ? 'exact, refused' : 'inexact, stored'}`)
    if (stored !== null) assert.equal(BigInt(JSON.parse(stored.messageJson)[0]), BigInt(token))
  }), { numRuns: 2000 })
})

test('property: any bytes decode to a typed frame or a coded decode error, never another exception', () => {
  const codes = new Set(['BAD_FRAME', 'UNKNOWN_TYPE', 'FRAME_TOO_LARGE', 'MESSAGE_TOO_LARGE', 'BAD_ROOM_NAME'])
  const limits = { ...LIMITS, maxFrameBytes: 300, maxMessageBytes: 40 }
  const field = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom('r', 'message', 'sync-request', 'register-room', -0, 1e300, 2 ** 60))
  const almost = fc.record({ type: fc.constantFrom('message', 'sync-request', 'register-room', '__proto__'), roomName: field, message: field, id: field, requestId: field, lastIndex: field, limit: field, writerPublicKey: field, signature: field }, { requiredKeys: ['type'] })
  const frames = fc.oneof(fc.uint8Array({ maxLength: 400 }), fc.json({ maxDepth: 3 }).map(s => Buffer.from(s)), almost.map(f => Buffer.from(JSON.stringify(f))))
  fc.assert(fc.property(frames, data => {
    const buf = Buffer.from(data)
    try {
      const frame = decodeFrame(buf, limits)
      assert.ok(['message', 'sync-request', 'register-room'].includes(frame.type))
      assert.equal(typeof frame.roomName, 'string')
    } catch (err) {
      assert.ok(err instanceof RootPeerError && codes.has(err.code), `not a decode error: ${String(err)}`)
    }
    // frameContext never throws
    frameContext(buf, limits)
  }), { numRuns: 3000 })
})
