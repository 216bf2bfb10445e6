// Start a @skyware/labeler 0.2.0 LabelerServer as a benchmark peer.
//
// Usage:
//   SKYWARE_SIGNING_KEY=<64 hex chars secp256k1 private key> \
//   node server.mjs [port] [dbPath] [did]
//
// Env fallbacks: PORT (default 14831), SKYWARE_DB (default ./skyware-labels.db),
// SKYWARE_DID (default did:plc:skywarebenchlabeler0000), SKYWARE_HOST (default 127.0.0.1).
// Prints "ready <host>:<port>" on stdout once listening.
//
// Benchmark hook (only with SKYWARE_EMIT_STDIN=1): reads commands on stdin, one per line,
//   emit COUNT RATE [VAL]
// and then calls this process's LabelerServer#createLabel COUNT times, RATE per second, each
// with uri at://did:plc:fanoutbench/app.bsky.feed.post/<wall-clock ns at the createLabel call>
// (the same in-process path skyware's emitEvent handler uses), then prints
//   emitted COUNT <mean createLabel ms> <max createLabel ms>
// The wall clock is Date.now() refined with process.hrtime (calibrated on a Date.now() tick),
// so a client on this machine can subtract it from its own time.time_ns().
import { LabelerServer } from "@skyware/labeler";
import { createInterface } from "node:readline";

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

if (process.env.SKYWARE_EMIT_STDIN === "1") {
	// Calibrate: wait for the millisecond to tick over, then anchor hrtime to that wall-clock ms.
	let ms0 = Date.now();
	while (Date.now() === ms0);
	const wall0 = BigInt(Date.now()) * 1000000n;
	const hr0 = process.hrtime.bigint();
	const nowNs = () => wall0 + (process.hrtime.bigint() - hr0);
	const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
	let queue = Promise.resolve();
	createInterface({ input: process.stdin }).on("line", (line) => {
		const [cmd, countS, rateS, val = "spam"] = line.trim().split(/\s+/);
		if (cmd !== "emit") return;
		const count = Number(countS), rate = Number(rateS);
		queue = queue.then(async () => {
			const t0 = performance.now();
			let total = 0, max = 0;
			for (let k = 0; k < count; k++) {
				await sleep(t0 + (k * 1000) / rate - performance.now());
				const a = performance.now();
				await server.createLabel({ uri: `at://did:plc:fanoutbench/app.bsky.feed.post/${nowNs()}`, val });
				const d = performance.now() - a;
				total += d;
				if (d > max) max = d;
			}
			console.log(`emitted ${count} ${(total / Math.max(1, count)).toFixed(3)} ${max.toFixed(3)}`);
		});
	});
}

const shutdown = () => server.close(() => process.exit(0));
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
