// The independent side of the CAR interop test (tests/workflows/test_carfiles.py), with npm's
// @ipld/car (pinned in package-lock.json, installed by `make test`):
//   node car_interop.mjs read FILE        prints {version, roots, blocks: [[cid, sha256 hex, size]]}
//   node car_interop.mjs rewrite IN OUT   writes IN's blocks, in reverse order, under IN's roots
//                                         with CarWriter (a CAR fednode did not write)
import fs from 'node:fs'
import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { CarReader, CarWriter } from '@ipld/car'

async function read (path) {
  const reader = await CarReader.fromBytes(fs.readFileSync(path))
  const blocks = []
  for await (const { cid, bytes } of reader.blocks()) {
    blocks.push([cid.toString(), createHash('sha256').update(bytes).digest('hex'), bytes.length])
  }
  return { reader, roots: (await reader.getRoots()).map(String), blocks, version: reader.version }
}

async function rewrite (input, output) {
  const { reader } = await read(input)
  const blocks = []
  for await (const block of reader.blocks()) blocks.push(block)
  const { writer, out } = CarWriter.create(await reader.getRoots())
  const done = pipeline(Readable.from(out), fs.createWriteStream(output))
  for (const block of blocks.reverse()) await writer.put(block)
  await writer.close()
  await done
}

const [command, ...args] = process.argv.slice(2)
if (command === 'read') {
  const { roots, blocks, version } = await read(args[0])
  console.log(JSON.stringify({ version, roots, blocks }))
} else if (command === 'rewrite') {
  await rewrite(args[0], args[1])
} else {
  console.error('usage: car_interop.mjs read FILE | rewrite IN OUT')
  process.exit(2)
}
