// Start a @skyware/labeler 0.2.0 LabelerServer as a benchmark peer.
//
// Usage:
//   SKYWARE_SIGNING_KEY=<64 hex chars secp256k1 private key> \
//   node server.mjs [port] [dbPath] [did]
//
// Env fallbacks: PORT (default 14831), SKYWARE_DB (default ./skyware-labels.db),
// SKYWARE_DID (default did:plc:skywarebenchlabeler0000), SKYWARE_HOST (default 127.0.0.1).
// Prints "ready <host>:<port>" on stdout once listening.
import { LabelerServer } from "@skyware/labeler";

const port = Number(process.argv[2] ?? process.env.PORT ?? 14831);
const dbPath = process.argv[3] ?? process.env.SKYWARE_DB ?? "skyware-labels.db";
const did = process.argv[4] ?? process.env.SKYWARE_DID ?? "did:plc:skywarebenchlabeler0000";
const host = process.env.SKYWARE_HOST ?? "127.0.0.1";
const signingKey = process.env.SKYWARE_SIGNING_KEY;

if (!signingKey || !/^[0-9a-fA-F]{64}$/.test(signingKey)) {
	console.error("SKYWARE_SIGNING_KEY must be a 64-char hex secp256k1 private key");
	process.exit(2);
}
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
	console.error(`bad port: ${port}`);
	process.exit(2);
}

const server = new LabelerServer({ did, signingKey, dbPath });

// Make sure the schema exists before we claim to be ready.
await server.dbInitLock;

server.start({ port, host }, (err, address) => {
	if (err) {
		console.error(err);
		process.exit(1);
	}
	console.log(`ready ${address}`);
});

const shutdown = () => server.close(() => process.exit(0));
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
