import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import { DEFAULTS, SETTINGS } from '../src/config.js'
import { Metrics } from '../src/monitor/metrics.js'
import { ROOT, rootPeer, testnet } from './helpers.js'

/** README.md and every docs/*.md, by path relative to the repository's root. */
const pages: Promise<Map<string, string>> = (async () => {
  const files = ['README.md', ...(await fs.readdir(path.join(ROOT, 'docs'))).filter(f => f.endsWith('.md')).sort().map(f => `docs/${f}`)]
  return new Map(await Promise.all(files.map(async f => [f, await fs.readFile(path.join(ROOT, f), 'utf8')] as const)))
})()
/** The docs: README.md and every docs/*.md, one after the other. */
const docs = pages.then(p => [...p.values()].join('\n'))
const source = (file: string): Promise<string> => fs.readFile(path.join(ROOT, 'src', file), 'utf8')

test('every setting has a row in a settings table of the docs with its env name and flag, and each row\'s default is the value the code defaults to', async () => {
  const rows = settingsRows(await docs)
  for (const s of SETTINGS) {
    const mine = rows.filter(r => r[0] === `\`${s.env}\``)
    assert.ok(mine.length > 0, `${s.env} has no row in a settings table of the docs`)
    for (const [, flag, cell] of mine) {
      assert.equal(flag, `\`${s.flag}\``, `${s.env}'s row names ${s.flag}`)
      // the value in the cell's first code span, read as the daemon reads the setting; no code span: no value
      const value = /`([^`]*)`/.exec(cell)
      if (value === null) assert.equal(s.default, '', `${s.env}: the docs give no default value (${JSON.stringify(cell)}), the code's is ${s.default}`)
      else assert.deepEqual(s.parse(value[1], s.env), DEFAULTS[s.key], `${s.env}: the docs' default ${value[1]} is not the code's ${s.default}`)
    }
  }
  // and no row documents a setting the daemon does not have (NODE_ENV is Node's, read by the logger)
  const known = new Set(SETTINGS.map(s => `\`${s.env}\``))
  for (const [env] of rows) assert.ok(known.has(env) || env === '`NODE_ENV`' || env === '—', `${env} is documented but is no setting`)
})

test('every error code the daemon or the client can give is in the docs', async () => {
  const text = await docs
  const codes = [...(await fs.readFile(path.join(ROOT, 'packages/client/src/protocol/errors.ts'), 'utf8')).matchAll(/^\s*\| '([A-Z_]+)'/gm)].map(m => m[1])
  assert.ok(codes.length >= 10)
  for (const code of codes) assert.ok(text.includes(`\`${code}\``), `error code ${code} is not in the docs`)
})

test('every metric the monitor exports is in the docs: the root peer\'s, and those the stats modules register once it is ready', async t => {
  const text = await docs
  const metrics = new Metrics()
  metrics.attach(await rootPeer(t, await testnet(t)))
  // prom-client's default metrics are documented as `process_*`, `nodejs_*`
  const names = (await metrics.registry.getMetricsAsJSON()).map(m => m.name).filter(n => !/^(process|nodejs)_/.test(n))
  assert.ok(names.filter(n => n.startsWith('root_peer_')).length >= 15)
  for (const prefix of ['hyperswarm_', 'dht_', 'udx_', 'hypercore_']) assert.ok(names.filter(n => n.startsWith(prefix)).length >= 4, `${prefix}* metrics`)
  for (const name of names) assert.ok(firstCells(text).some(c => c.includes(`\`${name}\``) || c.includes(`\`${name}{`)), `metric ${name} has no row in the docs`)
})

test('every event ChatRootPeer emits is in the docs\' events table', async () => {
  const text = await docs
  const events = new Set([...(await source('root-peer.ts')).matchAll(/this\.emit\('([a-z-]+)'/g)].map(m => m[1]))
  assert.ok(events.size >= 10)
  for (const event of events) assert.ok(firstCells(text).some(c => c.includes(`\`${event}\``)), `event ${event} has no row in the docs`)
})

test('every relative link in the README and docs/ to a .md file or an anchor resolves', async () => {
  const all = await pages
  assert.ok(all.size >= 5, 'docs/ holds the reference pages')
  const headings = new Map([...all].map(([file, text]) => [file, anchors(text)]))
  let checked = 0
  for (const [file, text] of all) {
    for (const [, target] of prose(text).matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // https:, mailto:, ...
      const hash = target.indexOf('#')
      const linked = hash === -1 ? target : target.slice(0, hash)
      const anchor = hash === -1 ? '' : target.slice(hash + 1)
      if (linked !== '' && !linked.endsWith('.md')) continue
      const into = linked === '' ? file : path.posix.normalize(path.posix.join(path.posix.dirname(file), linked))
      const there = headings.get(into) ?? (await exists(into) ? anchors(await fs.readFile(path.join(ROOT, into), 'utf8')) : undefined)
      assert.ok(there !== undefined, `${file}: link ${target}: no file ${into}`)
      if (anchor !== '') assert.ok(there.includes(anchor), `${file}: link ${target}: no heading #${anchor} in ${into}`)
      checked++
    }
  }
  assert.ok(checked >= 20, `only ${checked} links checked`)
})

/** The first three cells (env, flag, default) of every body row of a table whose header starts `| env | flag | default |`. */
function settingsRows (text: string): string[][] {
  const rows: string[][] = []
  let header: string[] = []
  let previous = ''
  for (const line of text.split('\n')) {
    const cells = line.split('|').slice(1, -1).map(c => c.trim())
    if (line.startsWith('|') && !previous.startsWith('|')) header = cells
    else if (line.startsWith('|') && !/^\|[-| ]+\|$/.test(line) && header.slice(0, 3).join() === 'env,flag,default') rows.push(cells.slice(0, 3))
    previous = line
  }
  return rows
}

/** The first cell of every table row. */
function firstCells (text: string): string[] {
  return text.split('\n').filter(l => l.startsWith('| ')).map(l => l.split(' | ')[0])
}

/** The text outside fenced code blocks and inline code spans, where a link is a link. */
function prose (text: string): string {
  return text.replace(/^```[^\n]*\n[\s\S]*?^```[^\n]*$/gm, '').replace(/`[^`\n]*`/g, '')
}

/** The anchors of a page's headings, by GitHub's rule: lowercase, punctuation but '-' and '_' dropped, spaces to '-', '-1', '-2' ... for repeats. */
function anchors (text: string): string[] {
  const seen = new Map<string, number>()
  const out: string[] = []
  let fenced = false
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced
    const m = fenced ? null : /^#{1,6} (.*)$/.exec(line)
    if (m === null) continue
    const slug = m[1].trim().toLowerCase().replace(/[^\p{L}\p{N}\p{M}_\- ]/gu, '').replace(/ /g, '-')
    const n = seen.get(slug) ?? 0
    seen.set(slug, n + 1)
    out.push(n === 0 ? slug : `${slug}-${n}`)
  }
  return out
}

async function exists (file: string): Promise<boolean> {
  return fs.access(path.join(ROOT, file)).then(() => true, () => false)
}
