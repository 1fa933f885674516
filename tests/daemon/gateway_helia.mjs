// The independent client of the gateway test (tests/daemon/test_gateway.py): Helia's trustless
// gateway block broker (npm @helia/trustless-gateway-client, as Helia uses it) fetches every block
// of a UnixFS file from the fednode gateway by ?format=raw, each checked against its CID here with
// multiformats' sha2-256, and reassembles the file with @ipld/dag-pb and ipfs-unixfs.
//   node gateway_helia.mjs GATEWAY_PORT CID OUT_FILE   prints {ok, blocks, bytes} or {ok: false, error}
import fs from 'node:fs'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { defaultLogger } from '@libp2p/logger'
import { multiaddr } from '@multiformats/multiaddr'
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'uint8arrays/equals'

const [port, root, out] = process.argv.slice(2)
const gateway = multiaddr(`/ip4/127.0.0.1/tcp/${port}/http`)
const routing = { async * findProviders () { yield { multiaddrs: [gateway], router: 'fednode-test' } } }
const broker = trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })({ routing, logger: defaultLogger() })

const validateFn = (cid) => async (bytes) => {
  const digest = await sha256.digest(bytes)
  if (!equals(digest.bytes, cid.multihash.bytes)) throw new Error(`block ${cid} does not match its hash`)
}
let blocks = 0
async function * file (cid) {
  const bytes = await broker.retrieve(cid, { validateFn: validateFn(cid), signal: AbortSignal.timeout(20000) })
  blocks++
  if (cid.code === 0x55) { yield bytes; return }
  const node = dagPb.decode(bytes)
  const data = UnixFS.unmarshal(node.Data)
  if (data.data != null && data.data.length > 0) yield data.data
  for (const link of node.Links) yield * file(link.Hash)
}
try {
  const chunks = []
  for await (const chunk of file(CID.parse(root))) chunks.push(chunk)
  const body = Buffer.concat(chunks)
  fs.writeFileSync(out, body)
  console.log(JSON.stringify({ ok: true, blocks, bytes: body.length }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), errors: (err.errors ?? []).map(String) }))
}
