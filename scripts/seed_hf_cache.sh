#!/usr/bin/env bash
# Puts data/models/qwen2-chat-tiny into the local Hugging Face cache as the model
# `hone-examples/qwen2-chat-tiny`, laid out as huggingface_hub lays out a download
# (refs/main -> a commit, snapshots/<commit>/ with links into blobs/), so that
# pipelines/examples/hf_lora.yaml finds it offline. The cache is $HF_HUB_CACHE, else
# $HF_HOME/hub, else ${XDG_CACHE_HOME:-~/.cache}/huggingface/hub (where hone looks).
# The commit is the SHA-1 of the files, so it is the same on every machine.
#
#   scripts/seed_hf_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=data/models/qwen2-chat-tiny
hub="${HF_HUB_CACHE:-${HF_HOME:+$HF_HOME/hub}}"
hub="${hub:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface/hub}"
repo="$hub/models--hone-examples--qwen2-chat-tiny"
commit=$(cd "$src" && sha1sum $(ls) | sha1sum | cut -c1-40)
mkdir -p "$repo/blobs" "$repo/refs" "$repo/snapshots/$commit"
for file in $(ls "$src"); do
    blob=$(sha256sum "$src/$file" | cut -c1-64)
    cp "$src/$file" "$repo/blobs/$blob"
    ln -sfn "../../blobs/$blob" "$repo/snapshots/$commit/$file"
done
printf '%s' "$commit" > "$repo/refs/main"
echo "hone-examples/qwen2-chat-tiny @ $commit in $hub"
