import assert from 'node:assert/strict'
import { test } from 'node:test'
import { signAccess, signedRoomName, signMessage } from 'root-peer-client/protocol'
import { dial, signedRoomOwnedBy, startCluster, testnet } from './helpers.js'

test('a follow at a mirror outlives no signing at the primary: an outsider following an unsigned room at B, the room signed and written at its primary A, gets no member record and `follow-ended` `unauthorized`', async t => {
  const net = await testnet(t)
  const members = await startCluster(t, net, {}, 2)
  const [a, b] = members
  const kp = signedRoomOwnedBy(members, a, 'followed room')
  const roomName = signedRoomName(kp.publicKey)
  const writerPublicKey = kp.publicKey.toString('hex')

  // the outsider makes the room (unsigned, its primary A) through B, and follows it at B, the mirror
  const outsider = await dial(t, net, b)
  outsider.send({ type: 'message', roomName, message: 'squat', id: 'squat' })
  assert.equal((await outsider.next(f => f.id === 'squat')).messageIndex, 0)
  outsider.send({ type: 'follow', roomName, fromIndex: 0, requestId: 'f' })
  assert.equal((await outsider.next(f => f.type === 'follow-live' && f.roomName === roomName)).nextIndex, 1)

  // the members sign it at its primary, A, and write there: B learns of the signing only from A
  const member = await dial(t, net, a)
  member.send({ type: 'register-room', roomName, writerPublicKey, signature: signAccess(kp.secretKey, a.key, member.announcement.challenge, roomName), requestId: 'reg' })
  assert.equal((await member.next(f => f.requestId === 'reg')).type, 'room-registered')
  const secrets = ['secret-1', 'secret-2', 'secret-3']
  for (const [i, message] of secrets.entries()) {
    member.send({ type: 'message', roomName, message, id: `m${i}`, signature: signMessage(kp.secretKey, roomName, `m${i}`, message) })
    assert.equal((await member.next(f => f.id === `m${i}`)).type, 'message-ack')
  }
  // a plain sync at B at once: refused, or pages without a member record, whatever B has heard by then
  outsider.send({ type: 'sync-request', roomName, lastIndex: 0, requestId: 'peek' })
  const peek = await outsider.next(f => f.requestId === 'peek')
  assert.equal(peek.type === 'error' ? peek.code : 'sync-response', peek.type === 'error' ? 'UNAUTHORIZED' : peek.type, JSON.stringify(peek))

  const ended = await outsider.next(f => f.type === 'follow-ended' && f.roomName === roomName, 15_000)
  assert.equal(ended.reason, 'unauthorized')

  // B holds the members' records (so they could have leaked), and serves its signed history to a member with the proof
  const reader = await dial(t, net, b)
  let served: string[] = []
  let tries = 0
  for (const deadline = Date.now() + 15_000; served.join() !== secrets.join() && Date.now() < deadline; tries++) {
    const requestId = `sync-${tries}`
    reader.send({ type: 'sync-request', roomName, lastIndex: 0, signature: signAccess(kp.secretKey, b.key, reader.announcement.challenge, roomName), requestId })
    const page = await reader.next(f => f.requestId === requestId)
    served = page.type === 'sync-response' ? page.messages.map((r: any) => r.message) : []
    // B may not have heard of the signing yet (the room's announcement is on its way): asked again
    if (served.join() !== secrets.join()) await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.deepEqual(served, secrets, 'B serves the signed history to a member')

  const leaked = [...outsider.frames, peek].filter(f => f.type === 'follow-messages' || f.type === 'sync-response').flatMap(f => f.messages).filter((r: any) => secrets.includes(r.message))
  assert.deepEqual(leaked, [], 'no member record reached the outsider')
  outsider.send({ type: 'follow', roomName, fromIndex: 0, requestId: 'again' })
  assert.equal((await outsider.next(f => f.requestId === 'again')).code, 'UNAUTHORIZED')
  console.log(`follow at a mirror, the room signed at its primary: 0 of ${secrets.length} member records reached the outsider, its follow ended '${ended.reason as string}'; the outsider's plain sync at B: ${peek.type === 'error' ? peek.code as string : `${peek.messages.length as number} records`}; B served the signed history to a member after ${tries} asks`)
})
