#!/usr/bin/env bash
# Idempotently install @skyware/labeler 0.2.0 (+ helpers) into bench/skyware/node_modules.
#
# Needs only node (>=18) + npm and the npm registry. Both native modules involved ship
# their binaries *inside npm packages*, so normally nothing is compiled and nothing is
# downloaded from GitHub/nodejs.org:
#   - @libsql/client -> libsql -> @libsql/linux-x64-gnu (prebuilt .node as an npm optional dep)
#   - secp256k1 (used only by populate.mjs) -> bundled prebuilds/linux-x64/*.node
# If a native module fails to load anyway (other arch/libc), we fall back to building from
# source with node-gyp against the *local* node headers (npm_config_nodedir), installing
# build-essential/python3 from apt if needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm  >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

check() {
	node --input-type=module -e '
		import { createRequire } from "node:module";
		const require = createRequire(process.cwd() + "/x.js");
		const { createClient } = await import("@libsql/client");
		const db = createClient({ url: ":memory:" });
		await db.execute("select 1");
		const { readFileSync } = await import("node:fs");
		const pkg = JSON.parse(readFileSync("node_modules/@skyware/labeler/package.json", "utf8"));
		if (pkg.version !== "0.2.0") throw new Error("wrong skyware version " + pkg.version);
		require("secp256k1");
		console.log("skyware-labeler " + pkg.version + " OK");
	' 2>&1
}

if [ -d node_modules ] && check; then
	exit 0
fi

# Local node headers for any node-gyp build, so it never fetches them from nodejs.org.
NODE_PREFIX="$(dirname "$(dirname "$(node -p process.execPath)")")"
for d in "$NODE_PREFIX" /usr /usr/local; do
	if [ -f "$d/include/node/node.h" ]; then export npm_config_nodedir="$d"; break; fi
done

export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
if [ -f package-lock.json ]; then
	npm ci --no-audit --no-fund
else
	npm install --no-audit --no-fund
fi

if ! check; then
	echo "native modules did not load; building from source with node-gyp (nodedir=${npm_config_nodedir:-unset})" >&2
	if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential python3
	fi
	if [ -z "${npm_config_nodedir:-}" ]; then
		# Debian's libnode-dev provides /usr/include/node for the distro node
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnode-dev || true
		[ -f /usr/include/node/node.h ] && export npm_config_nodedir=/usr
	fi
	# libsql is Rust (napi-rs): no source build here; its binary must come from the
	# @libsql/<platform> npm package. secp256k1 is C and builds with node-gyp + local headers.
	npm_config_build_from_source=true npm rebuild secp256k1
	check
fi
