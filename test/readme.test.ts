import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import { SETTINGS } from '../src/config.js'
import { Metrics } from '../src/metrics.js'
import { ROOT } from './helpers.js'

const readme = fs.readFile(path.join(ROOT, 'README.md'), 'utf8')
const source = (file: string): Promise<string> => fs.readFile(path.join(ROOT, 'src', file), 'utf8')

test('every setting is in the README with its env name, its flag and its default', async () => {
  const text = await readme
  for (const s of SETTINGS) {
    const row = text.split('\n').find(l => l.startsWith(`| \`${s.env}\` |`))
    assert.ok(row !== undefined, `${s.env} has no row in a README settings table`)
    assert.ok(row.includes(`\`${s.flag}\``), `${s.env}'s row names ${s.flag}`)
  }
})

test('every error code the daemon or the client can give is in the README', async () => {
  const text = await readme
  const codes = [...(await source('errors.ts')).matchAll(/^\s*\| '([A-Z_]+)'/gm)].map(m => m[1])
  assert.ok(codes.length >= 10)
  for (const code of codes) assert.ok(text.includes(`\`${code}\``), `error code ${code} is not in the README`)
})

test('every metric the monitor exports is in the README', async () => {
  const text = await readme
  const names = (await new Metrics().registry.getMetricsAsJSON()).map(m => m.name).filter(n => n.startsWith('root_peer_'))
  assert.ok(names.length >= 15)
  for (const name of names) assert.ok(firstCells(text).some(c => c.includes(`\`${name}\``) || c.includes(`\`${name}{`)), `metric ${name} has no row in the README`)
})

test('every event ChatRootPeer emits is in the README\'s events table', async () => {
  const text = await readme
  const events = new Set([...(await source('root-peer.ts')).matchAll(/this\.emit\('([a-z-]+)'/g)].map(m => m[1]))
  assert.ok(events.size >= 10)
  for (const event of events) assert.ok(firstCells(text).some(c => c.includes(`\`${event}\``)), `event ${event} has no row in the README`)
})

/** The first cell of every table row. */
function firstCells (text: string): string[] {
  return text.split('\n').filter(l => l.startsWith('| ')).map(l => l.split(' | ')[0])
}
