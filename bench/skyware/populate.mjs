// Fill a @skyware/labeler 0.2.0 SQLite database with N correctly signed labels, fast.
//
// Usage:
//   SKYWARE_SIGNING_KEY=<64 hex> node populate.mjs --db skyware-labels.db --n 100000 \
//       [--did did:plc:...] [--workers 2] [--batch 1000] [--accounts 10000] [--neg-every 0] \
//       [--base-time 2024-01-01T00:00:00.000Z] [--jsonl labels.jsonl] [--mode direct|api]
//
// --mode direct (default): sign in worker threads (libsecp256k1 via the `secp256k1` npm
//   package's bundled prebuild, falling back to @noble/curves) and INSERT rows straight into
//   skyware's `labels` table with multi-row INSERTs inside transactions, using the same
//   @libsql/client skyware uses. Rows are byte-for-byte what LabelerServer#saveLabel would
//   write: sig is the 64-byte compact (r||s, low-S) secp256k1 signature over
//   sha256(DAG-CBOR({src,uri,[cid],val,neg,cts,[exp],ver:1})), stored as a BLOB; neg is 0/1.
//   Nothing is emitted to live subscribers (the server is not involved); clients see the rows
//   through subscribeLabels backfill (cursor) and queryLabels.
// --mode api: construct a LabelerServer (not listening) and call its createLabel() one label
//   at a time, exactly as skyware's own emitEvent path does. Slow; for comparison only.
//
// --jsonl FILE: instead of generating labels, read one JSON object per line:
//   {"uri": "...", "val": "...", "cid"?: "...", "neg"?: bool, "cts"?: "...", "exp"?: "...", "src"?: "..."}
//   (missing cts -> base-time + line index ms; missing src -> --did). --n limits the count.
//
// The generated label set is deterministic given (--n, --did, --accounts, --neg-every, --base-time):
//   i -> uri  at://did:plc:<acct>/app.bsky.feed.post/<rkey>   (acct = i % accounts)
//        val  VALS[i % VALS.length], neg = negEvery>0 && i % negEvery == negEvery-1
//        cts  base-time + i milliseconds
import { createClient } from "@libsql/client";
import { encode as cborEncode } from "@atcute/cbor";
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { cpus } from "node:os";

const VALS = ["spam", "porn", "sexual", "nudity", "gore", "!hide", "!warn", "rude"];
const B32 = "abcdefghijklmnopqrstuvwxyz234567";

function b32(n, width) {
	let s = "";
	for (let k = 0; k < width; k++) {
		s = B32[n % 32] + s;
		n = Math.floor(n / 32);
	}
	return s;
}

function genLabel(i, o) {
	const acct = i % o.accounts;
	const did = "did:plc:bench" + b32(acct, 19); // 24 chars after did:plc:, base32 alphabet
	const rkey = "3l" + b32(i, 11); // TID-shaped, 13 chars
	const neg = o.negEvery > 0 && i % o.negEvery === o.negEvery - 1;
	return {
		src: o.did,
		uri: `at://${did}/app.bsky.feed.post/${rkey}`,
		val: VALS[i % VALS.length],
		neg,
		cts: new Date(o.baseTime + i).toISOString(),
	};
}

function makeSigner(hexKey) {
	const priv = Buffer.from(hexKey, "hex");
	try {
		const require = createRequire(import.meta.url);
		const secp = require("secp256k1");
		// libsecp256k1 (RFC6979, always low-S), ~20k sig/s/core
		const out = { kind: "libsecp256k1", sign: (h) => secp.ecdsaSign(h, priv).signature };
		out.sign(createHash("sha256").update("probe").digest());
		return out;
	} catch {
		// fall back to what skyware itself uses (~2.7k sig/s/core)
		const { secp256k1 } = createRequire(import.meta.url)("@noble/curves/secp256k1");
		return {
			kind: "noble",
			sign: (h) => secp256k1.sign(h, priv, { lowS: true }).toCompactRawBytes(),
		};
	}
}

// Same shape skyware signs: excludeNullish({...label, ver: 1, neg: !!neg}), DAG-CBOR (sorted keys).
function toSignable(l) {
	const o = { src: l.src, uri: l.uri, val: l.val, neg: !!l.neg, cts: l.cts, ver: 1 };
	if (l.cid) o.cid = l.cid;
	if (l.exp) o.exp = l.exp;
	return o;
}

// ---------------------------------------------------------------- worker
if (!isMainThread) {
	const o = workerData;
	const signer = makeSigner(o.key);
	parentPort.on("message", (task) => {
		if (task === null) return process.exit(0);
		const labels = task.labels ?? [];
		if (!task.labels) for (let i = task.lo; i < task.hi; i++) labels.push(genLabel(i, o));
		const sigs = new Uint8Array(64 * labels.length); // not pooled: safe to transfer
		for (let k = 0; k < labels.length; k++) {
			const l = labels[k];
			if (!l.src) l.src = o.did;
			const h = createHash("sha256").update(cborEncode(toSignable(l))).digest();
			sigs.set(signer.sign(h), 64 * k);
		}
		parentPort.postMessage({ no: task.no, labels, sigs }, [sigs.buffer]);
	});
	parentPort.postMessage({ hello: signer.kind });
} else {
	await main();
}

// ---------------------------------------------------------------- main
function parseArgs(argv) {
	const a = {};
	for (let k = 0; k < argv.length; k++) {
		if (!argv[k].startsWith("--")) throw new Error("unexpected arg " + argv[k]);
		const [name, inline] = argv[k].slice(2).split("=", 2);
		a[name] = inline ?? argv[++k];
	}
	return a;
}

async function main() {
	const a = parseArgs(process.argv.slice(2));
	const key = process.env.SKYWARE_SIGNING_KEY;
	if (!key || !/^[0-9a-fA-F]{64}$/.test(key)) {
		console.error("SKYWARE_SIGNING_KEY must be a 64-char hex secp256k1 private key");
		process.exit(2);
	}
	const o = {
		key,
		did: a.did ?? process.env.SKYWARE_DID ?? "did:plc:skywarebenchlabeler0000",
		accounts: Number(a.accounts ?? 10000),
		negEvery: Number(a["neg-every"] ?? 0),
		baseTime: Date.parse(a["base-time"] ?? "2024-01-01T00:00:00.000Z"),
	};
	const dbPath = a.db ?? process.env.SKYWARE_DB ?? "skyware-labels.db";
	const mode = a.mode ?? "direct";
	const batch = Number(a.batch ?? 1000);
	const nWorkers = Number(a.workers ?? Math.max(1, cpus().length));

	let jsonl = null;
	if (a.jsonl) {
		jsonl = readFileSync(a.jsonl, "utf8").split("\n").filter((s) => s.trim()).map((s, i) => {
			const l = JSON.parse(s);
			return { ...l, neg: !!l.neg, cts: l.cts ?? new Date(o.baseTime + i).toISOString() };
		});
	}
	const n = Number(a.n ?? (jsonl ? jsonl.length : 1000));
	if (jsonl) jsonl = jsonl.slice(0, n);
	const t0 = performance.now();

	if (mode === "api") {
		const { LabelerServer } = await import("@skyware/labeler");
		const server = new LabelerServer({ did: o.did, signingKey: key, dbPath });
		await server.dbInitLock;
		for (let i = 0; i < n; i++) {
			const l = jsonl ? jsonl[i] : genLabel(i, o);
			await server.createLabel({ uri: l.uri, cid: l.cid, val: l.val, neg: l.neg || undefined, cts: l.cts, exp: l.exp, src: l.src });
		}
		const dt = (performance.now() - t0) / 1000;
		console.log(`populated ${n} labels via createLabel() in ${dt.toFixed(2)}s (${(n / dt).toFixed(0)}/s)`);
		server.db.close();
		process.exit(0);
	}

	// Open the DB exactly as skyware does, and create the table if the server never ran.
	const db = createClient({ url: "file:" + dbPath });
	await db.execute("PRAGMA journal_mode = WAL");
	await db.execute(`
		CREATE TABLE IF NOT EXISTS labels (
			id INTEGER PRIMARY KEY AUTOINCREMENT,
			src TEXT NOT NULL,
			uri TEXT NOT NULL,
			cid TEXT,
			val TEXT NOT NULL,
			neg BOOLEAN DEFAULT FALSE,
			cts DATETIME NOT NULL,
			exp DATETIME,
			sig BLOB
		);`);
	await db.execute("PRAGMA synchronous = OFF").catch(() => {});

	const nBatches = Math.ceil(n / batch);
	const workers = [];
	const kinds = [];
	let nextBatch = 0;
	let nextToInsert = 0;
	const pending = new Map();
	let inserted = 0;
	let insertChain = Promise.resolve();
	let resolveDone, rejectDone;
	const done = new Promise((res, rej) => { resolveDone = res; rejectDone = rej; });

	const ROWS_PER_STMT = 500; // 8 params/row -> 4000 params, well under SQLite's 32766
	const stmtCache = new Map();
	const insertSql = (rows) => {
		if (!stmtCache.has(rows)) {
			stmtCache.set(rows, "INSERT INTO labels (src, uri, cid, val, neg, cts, exp, sig) VALUES "
				+ Array(rows).fill("(?, ?, ?, ?, ?, ?, ?, ?)").join(", "));
		}
		return stmtCache.get(rows);
	};

	async function insertBatch(msg) {
		const { labels, sigs } = msg;
		const stmts = [];
		for (let s = 0; s < labels.length; s += ROWS_PER_STMT) {
			const chunk = labels.slice(s, s + ROWS_PER_STMT);
			const args = [];
			chunk.forEach((l, k) => {
				const off = 64 * (s + k);
				args.push(l.src, l.uri, l.cid || null, l.val, l.neg ? 1 : 0, l.cts, l.exp || null,
					new Uint8Array(sigs.buffer, sigs.byteOffset + off, 64).slice());
			});
			stmts.push({ sql: insertSql(chunk.length), args });
		}
		await db.batch(stmts, "write"); // one transaction per batch
		inserted += labels.length;
	}

	function dispatch(w) {
		if (nextBatch >= nBatches) return w.postMessage(null);
		const no = nextBatch++;
		const lo = no * batch, hi = Math.min(n, lo + batch);
		w.postMessage(jsonl ? { no, labels: jsonl.slice(lo, hi) } : { no, lo, hi });
	}

	let lastReport = performance.now();
	function onResult(msg) {
		pending.set(msg.no, msg);
		// insert strictly in batch order so ids follow the generator order
		while (pending.has(nextToInsert)) {
			const m = pending.get(nextToInsert);
			pending.delete(nextToInsert);
			nextToInsert++;
			const last = nextToInsert === nBatches;
			insertChain = insertChain.then(() => insertBatch(m)).then(() => {
				const now = performance.now();
				if (now - lastReport > 5000) {
					lastReport = now;
					const dt = (now - t0) / 1000;
					console.error(`  ${inserted}/${n} (${(inserted / dt).toFixed(0)}/s)`);
				}
				if (last) resolveDone();
			}, rejectDone);
		}
	}

	if (n === 0) resolveDone();
	for (let k = 0; k < nWorkers; k++) {
		const w = new Worker(new URL(import.meta.url), { workerData: { ...o, key } });
		w.on("message", (msg) => {
			if (msg.hello) { kinds.push(msg.hello); return dispatch(w), dispatch(w); } // 2 in flight
			onResult(msg);
			dispatch(w);
		});
		w.on("error", rejectDone);
		workers.push(w);
	}
	await done;
	await insertChain;
	for (const w of workers) w.terminate();
	const dt = (performance.now() - t0) / 1000;
	const { rows } = await db.execute("SELECT COUNT(*) AS c, MAX(id) AS m FROM labels");
	console.log(`populated ${n} labels in ${dt.toFixed(2)}s (${(n / dt).toFixed(0)}/s) `
		+ `signer=${kinds[0]} workers=${nWorkers} db=${dbPath} total_rows=${rows[0].c} max_id=${rows[0].m}`);
	db.close();
}
