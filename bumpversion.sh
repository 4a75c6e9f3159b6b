#!/usr/bin/env bash
# Bump the project version: ./bumpversion.sh {major|minor|patch}
#
# The version lives in one place, `__version__ = "X.Y.Z"` in
# operator_engine/__init__.py (pyproject.toml reads it from there). The
# operator's Deployment pins its image to the same tag
# (oceanprotocol/operator-engine:X.Y.Z in kubernetes/operator.yml, which
# k8s_install/operator.yml links to): that tag is bumped with it.
# The file is looked up relative to the current directory, or to
# $PROJECT_ROOT when that is set. Prints "old -> new".
set -euo pipefail

usage() {
    echo "usage: $0 {major|minor|patch}" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
part="$1"
case "$part" in
    major|minor|patch) ;;
    *) usage ;;
esac

root="${PROJECT_ROOT:-.}"
file="$root/operator_engine/__init__.py"
if [[ ! -f "$file" ]]; then
    echo "error: $file not found (run from the project root or set PROJECT_ROOT)" >&2
    exit 1
fi

pattern='^__version__ = "([0-9]+)\.([0-9]+)\.([0-9]+)"$'
line="$(grep -E "$pattern" "$file" || true)"
if [[ -z "$line" || "$(printf '%s\n' "$line" | wc -l)" -ne 1 ]]; then
    echo "error: expected exactly one line '__version__ = \"X.Y.Z\"' in $file" >&2
    exit 1
fi
[[ "$line" =~ $pattern ]]
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"
patch="${BASH_REMATCH[3]}"
old="$major.$minor.$patch"

case "$part" in
    major) major=$((major + 1)); minor=0; patch=0 ;;
    minor) minor=$((minor + 1)); patch=0 ;;
    patch) patch=$((patch + 1)) ;;
esac
new="$major.$minor.$patch"

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
sed -E "s/^__version__ = \"$old\"$/__version__ = \"$new\"/" "$file" > "$tmp"
cat "$tmp" > "$file"   # keeps the file's mode and owner

manifest="$root/kubernetes/operator.yml"
if [[ -f "$manifest" ]]; then
    sed -E "s#(oceanprotocol/operator-engine:)${old//./\\.}([^0-9.]|\$)#\1$new\2#g" "$manifest" > "$tmp"
    cat "$tmp" > "$manifest"
fi
echo "$old -> $new"
