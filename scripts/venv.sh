# Sourced by scripts/serve and scripts/test: make (or reuse) the project's virtual environment
# .venv and install Montybase in it, editable, so it runs this checkout's code. Nothing is
# installed outside .venv but Debian's python3-venv, and that only as root.
#   montybase_venv [EXTRA]   sets VENV_PYTHON (EXTRA: "test" adds the test tools)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

montybase_venv() {
  local extra="${1:-}"
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"  # half made, or its Python is gone
    if ! python3 -m venv "$VENV"; then
      rm -rf "$VENV"
      # Debian and Ubuntu ship Python's venv module in a package of its own.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's python3-venv" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
      else
        echo "Python cannot make a virtual environment here; on Debian or Ubuntu: sudo apt-get install python3-venv" >&2
        exit 1
      fi
    fi
  fi
  # Install again only when pyproject.toml changed or an extra is wanted that is not there yet:
  # the install is editable, so code changes need none, and a reused .venv needs no network.
  local stamp="$VENV/montybase-installed" want
  want="$(cksum < "$ROOT/pyproject.toml") ${extra:-none}"
  if ! grep -qxF -e "$want" -e "$(cksum < "$ROOT/pyproject.toml") test" "$stamp" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extra:+[$extra]}"
    echo "$want" > "$stamp"
  fi
  VENV_PYTHON="$VENV/bin/python"
}
