#!/usr/bin/env bash
# Installs what the RocksDB build needs (clang and libclang for bindgen) when it is
# missing. Safe to run repeatedly: it checks first and only calls apt-get when needed.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
# bindgen loads libclang (libclang.so or libclang-NN.so, not libclang-cpp) at build
# time; look for it where clang-sys does.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
  && ! compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null \
  && ! compgen -G '/usr/lib/*/libclang.so*' >/dev/null; then
  missing+=(libclang-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "stele: installing build dependencies: ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "stele: need root (or sudo) to install ${missing[*]}; install them and retry" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends clang libclang-dev >/dev/null
