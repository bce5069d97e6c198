"""Refuse bad answers when the template is run with plain `cookiecutter` (`xmm new modality` checks them first)."""

import keyword
import re
import sys

# tojson: an answer holding a quote or a backslash stays one string literal (it must never become hook code)
NAME = {{ cookiecutter.modality | tojson }}
PLACEHOLDER = {{ cookiecutter.placeholder | tojson }}
BRIDGE = {{ cookiecutter.default_bridge | tojson }}
EXTENSIONS = {{ cookiecutter.file_extensions | tojson }}


def main() -> int:
    try:
        # the same checks as `xmm new modality`, including collisions with installed modalities
        from xmm.cli.new import validate_answers
    except ImportError:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", NAME) or keyword.iskeyword(NAME):
            print(f"error: modality name {NAME!r} must be a lowercase Python identifier", file=sys.stderr)
            return 1
        return 0
    from xmm.errors import XmmError

    try:
        validate_answers(NAME, placeholder=PLACEHOLDER, extensions=EXTENSIONS, bridge=BRIDGE)
    except XmmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
