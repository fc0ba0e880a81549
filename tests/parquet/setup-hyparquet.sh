#!/bin/sh
# Install the independent reference reader (npm hyparquet + hyparquet-compressors)
# into $MOE_BUILDDIR/tests/parquet/node once; prints its directory.
# Exit 77 (skip) when node/npm or the registry is unavailable.
set -u
dir="${MOE_BUILDDIR:-.}/tests/parquet/node"
src="${MOE_SRCDIR:-.}/tests/parquet"
command -v node >/dev/null 2>&1 || exit 77
if [ ! -f "$dir/node_modules/hyparquet/package.json" ] ||
   [ ! -f "$dir/node_modules/hyparquet-compressors/package.json" ]; then
	command -v npm >/dev/null 2>&1 || exit 77
	mkdir -p "$dir" || exit 99
	# a lock directory so that parallel tests install once
	while ! mkdir "$dir/.lock" 2>/dev/null; do
		sleep 1
		[ -f "$dir/node_modules/hyparquet-compressors/package.json" ] && break
	done
	if [ ! -f "$dir/node_modules/hyparquet-compressors/package.json" ]; then
		[ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
		timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
			hyparquet@1 hyparquet-compressors@1 >&2 || { rmdir "$dir/.lock"; exit 77; }
	fi
	rmdir "$dir/.lock" 2>/dev/null
fi
# ES modules resolve packages next to the script: keep a copy there
cp "$src/hyparquet-dump.mjs" "$dir/hyparquet-dump.mjs" || exit 99
echo "$dir"
