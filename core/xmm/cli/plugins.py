"""``xmm plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
        """List installed xmm plugins with what each registers: modalities, bridges, encoders, decoders, objectives,
        recipes and demo tasks."""
        from xmm.registry import get_registry

        reg = get_registry()
        rows = [p.as_dict() for p in reg.plugins]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        cols = ("name", "version", "modalities", "bridges", "encoders", "decoders", "objectives", "recipes", "demo_tasks")
        table = [[r[c] if isinstance(r[c], str) else ", ".join(r[c]) or "-" for c in cols] for r in rows]
        widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
        typer.echo("  ".join(c.upper().replace("_", " ").ljust(w) for c, w in zip(cols, widths)).rstrip())
        for t, r in zip(table, rows):
            line = "  ".join(v.ljust(w) for v, w in zip(t, widths))
            if r.get("error"):
                line = f"{t[0].ljust(widths[0])}  {t[1].ljust(widths[1])}  FAILED: {r['error']}"
            typer.echo(line.rstrip())
