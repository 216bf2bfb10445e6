#!/usr/bin/env node
// The atproto reference PDS (SQLite, blobs on disk) and a PLC directory (in memory), started by
// @atproto/dev-env's TestNetworkNoAppView, for tests/refpds.py. No Postgres, no Redis, no appview.
//
//   node tests/refpds/network.js        # REFPDS_PDS_PORT / REFPDS_PLC_PORT: fixed ports (default: free ones)
//
// Prints ONE line on stdout, a JSON object {"refpds": 1, "pds": URL, "plc": URL, ...}, once both
// answer; then runs until stdin closes (the parent went away), SIGTERM or SIGINT, and shuts down
// cleanly (exit 0). The PDS keeps its data in os.tmpdir(): point TMPDIR at a directory of your own.
// Anything else (warnings, errors) goes to stderr; a failure to start exits 1.
'use strict'

const { ADMIN_PASSWORD, TestNetworkNoAppView } = require('@atproto/dev-env')

const port = (name) => {
  const raw = process.env[name]
  if (!raw) return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`${name}=${raw} is not a TCP port`)
  return n
}

let network = null
let stopping = null

function stop(why) {
  if (stopping) return stopping
  stopping = (async () => {
    process.stderr.write(`refpds: stopping (${why})\n`)
    try {
      if (network) await network.close()
    } catch (err) {
      process.stderr.write(`refpds: error while stopping: ${err && err.stack ? err.stack : err}\n`)
      process.exit(1)
    }
    process.exit(0)
  })()
  return stopping
}

async function main() {
  // A key present but undefined would override dev-env's own free port (`{port, ...config}`).
  const plcPort = port('REFPDS_PLC_PORT')
  const pdsPort = port('REFPDS_PDS_PORT')
  network = await TestNetworkNoAppView.create({
    plc: plcPort ? { port: plcPort } : {},
    pds: {
      ...(pdsPort ? { port: pdsPort } : {}),
      blobUploadLimit: 100 * 1024 * 1024, // plyr.fm's audioBlob maxSize (the default is 5 MB)
    },
  })
  const pds = network.pds
  const cfg = pds.ctx.cfg
  const info = {
    refpds: 1,
    pds: pds.url, // http://localhost:PORT: the #atproto_pds endpoint of every DID it creates
    plc: network.plc.url,
    pdsDid: cfg.service.did,
    handleDomains: cfg.identity.serviceHandleDomains, // handles: NAME + one of these (".test")
    inviteRequired: cfg.invites.required,
    adminPassword: ADMIN_PASSWORD, // Basic auth as `admin` for com.atproto.admin.* (takedowns)
    blobUploadLimit: cfg.service.blobUploadLimit,
    version: cfg.service.version || null,
    node: process.version,
  }
  if (stopping) return
  process.stdout.write(JSON.stringify(info) + '\n')
}

process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
process.stdin.on('end', () => stop('stdin closed'))
process.stdin.on('error', () => stop('stdin error'))
process.stdin.resume() // read (and drop) stdin so that 'end' fires when the parent closes it

main().catch((err) => {
  process.stderr.write(`refpds: failed to start: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
