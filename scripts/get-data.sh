#!/usr/bin/env bash
# Install the real Fashion-MNIST offline from Debian's package dataset-fashion-mnist
# (/usr/share/datasets/fashion-mnist). Where that is impossible, resexport falls back to the
# keras.datasets download at first use, so this script never fails the set-up.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  echo "fashion-mnist: found in $dir"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
     { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    echo "fashion-mnist: installed Debian package dataset-fashion-mnist into $dir"
    exit 0
  fi
fi
echo "fashion-mnist: Debian package not installable here; resexport will use the keras.datasets download"
exit 0
