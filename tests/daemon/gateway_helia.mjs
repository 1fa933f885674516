// The independent client of the gateway test (tests/daemon/test_gateway.py): a Helia 7 node (npm
// `helia`, no libp2p networking) whose only block broker is Helia's trustless gateway broker
// (@helia/trustless-gateway-client) and whose only router names the fednode gateway as an HTTP
// provider; `unixfs.cat` reads a file through it (every block fetched with ?format=raw and checked
// against its CID by Helia).
//   node gateway_helia.mjs GATEWAY_PORT CID OUT_FILE   prints {ok, bytes} or {ok: false, error}
// Node 20 lacks Promise.withResolvers, which Helia's dependencies call: polyfilled, then imported.
Promise.withResolvers ??= () => {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}
const fs = await import('node:fs')
const { createHeliaLight } = await import('helia')
const { unixfs } = await import('@helia/unixfs')
const { trustlessGatewayBlockBroker } = await import('@helia/trustless-gateway-client')
const { multiaddr } = await import('@multiformats/multiaddr')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { CID } = await import('multiformats/cid')

const [port, root, out] = process.argv.slice(2)
const gateway = multiaddr(`/ip4/127.0.0.1/tcp/${port}/http`)
// a provider record as a delegated router would return it (the peer id is only a label here)
const id = peerIdFromString('12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA')
const router = { name: 'fednode-test', async * findProviders () { yield { id, multiaddrs: [gateway], routing: 'fednode-test' } } }
const helia = createHeliaLight({
  blockBrokers: [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })],
  routers: [router]
})
await helia.start()
try {
  const chunks = []
  for await (const chunk of unixfs(helia).cat(CID.parse(root), { signal: AbortSignal.timeout(60000) })) chunks.push(chunk)
  const body = Buffer.concat(chunks)
  fs.writeFileSync(out, body)
  console.log(JSON.stringify({ ok: true, bytes: body.length }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err) }))
} finally {
  await helia.stop()
  process.exit(0)
}
