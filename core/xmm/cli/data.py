"""``xmm data check SOURCE`` and ``xmm data convert SOURCE OUT.jsonl``: datasets in the formats people have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

_FORMATS = "auto, xmm, llava, sharegpt, openai or hf"


def _open(source: str, fmt: str, media_root: Path | None, columns: list[str], split: str, allow_outside: bool,
          max_record_bytes: int | None) -> Any:
    from xmm.data import DataSource, open_dataset
    from xmm.errors import ConfigError
    from xmm.registry import get_registry

    mapping: dict[str, str] = {}
    for item in columns:
        canonical, sep, actual = item.partition("=")
        if not sep or not canonical or not actual:
            raise ConfigError(f"--column takes CANONICAL=YOUR_COLUMN (e.g. images=image_paths), got {item!r}",
                              field="--column")
        mapping[canonical] = actual
    fields: dict[str, Any] = {"path": source, "format": fmt, "split": split, "allow_outside_paths": allow_outside,
                              "columns": mapping}
    if media_root is not None:
        fields["media_root"] = str(media_root)
    if max_record_bytes is not None:
        fields["limits"] = {"max_record_bytes": max_record_bytes}
    specs = get_registry().modalities
    return open_dataset(DataSource.coerce(fields, source="command line"), specs)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Datasets in LLaVA, ShareGPT / LLaMA-Factory, OpenAI, Hugging Face and xmm formats.",
                           no_args_is_help=True)

    fmt_opt = typer.Option("auto", "--format", "-f", help=f"Record format: {_FORMATS}.")
    root_opt = typer.Option(None, "--media-root", help="Folder media paths resolve in (default: the dataset's).")
    col_opt = typer.Option([], "--column", help="Column mapping CANONICAL=YOURS, repeatable (images=image_paths).")
    split_opt = typer.Option("train", "--split", help="Split of a DatasetDict folder.")
    outside_opt = typer.Option(False, "--allow-outside-paths",
                               help="Accept media paths outside the media root (../, absolute, ~, file://).")
    size_opt = typer.Option(None, "--max-record-bytes", min=1, help="Largest record (line, element) in bytes.")

    @data_app.command("check")
    def check(
        source: str = typer.Argument(..., help="A .jsonl/.json file, a datasets folder, .parquet/.arrow/.tar files."),
        fmt: str = fmt_opt,
        media_root: Path | None = root_opt,
        column: list[str] = col_opt,
        split: str = split_opt,
        allow_outside_paths: bool = outside_opt,
        max_record_bytes: int | None = size_opt,
        llm: str | None = typer.Option(None, "--llm", help="LLM whose tokenizer measures lengths (default SmolLM2)."),
        no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip token lengths."),
        no_decode: bool = typer.Option(False, "--no-decode", help="Check media paths only, do not decode media."),
        show: int = typer.Option(50, "--show", min=0, help="Bad samples to list (--json lists all)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Read every record as training would and report counts, modalities, token lengths and every bad sample
        with its reason. Exit status 1 when any record is bad."""
        from xmm.data.check import check_dataset, placeholder_tokenizer
        from xmm.errors import XmmError

        ds = _open(source, fmt, media_root, column, split, allow_outside_paths, max_record_bytes)
        tokenizer = None
        if not no_tokens:
            try:
                tokenizer = placeholder_tokenizer(llm, ds.specs)
            except (XmmError, OSError) as e:
                typer.secho(f"note: no token lengths ({e}); pass --llm DIR or --no-tokens", err=True,
                            fg=typer.colors.YELLOW)
        report = check_dataset(ds, tokenizer=tokenizer, decode=not no_decode)
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        else:
            typer.echo(report.summary(show_bad=show))
        if report.bad:
            raise typer.Exit(1)

    @data_app.command("convert")
    def convert(
        source: str = typer.Argument(..., help="The dataset to convert (as for `xmm data check`)."),
        out: Path = typer.Argument(..., help="The native xmm JSONL manifest to write.", dir_okay=False),
        fmt: str = fmt_opt,
        media_root: Path | None = root_opt,
        column: list[str] = col_opt,
        split: str = split_opt,
        allow_outside_paths: bool = outside_opt,
        max_record_bytes: int | None = size_opt,
        copy_media: bool = typer.Option(False, "--copy-media",
                                        help="Copy (hard-link) media from outside OUT's folder into OUT.media/."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Write every usable record as a native xmm manifest (bad ones are reported and left out)."""
        from xmm.data.convert import convert_dataset

        ds = _open(source, fmt, media_root, column, split, allow_outside_paths, max_record_bytes)
        report = convert_dataset(ds, out, copy_media=copy_media)
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
            return
        typer.echo(f"wrote {report.written:,} examples to {out}"
                   + (f" ({report.media_files:,} media files in {out.name}.media/)" if report.media_files else ""))
        if report.outside:
            typer.echo(f"{report.outside:,} media paths lie outside {out.resolve().parent}: train with "
                       f"`media_root: {report.outside_root}` (or convert with --copy-media)")
        if report.bad:
            typer.echo(f"skipped {len(report.bad):,} bad records:", err=True)
            for b in report.bad[:20]:
                typer.echo(f"  {b.kind}: {b.message}", err=True)
            if len(report.bad) > 20:
                typer.echo(f"  ... and {len(report.bad) - 20:,} more (--json lists all)", err=True)

    app.add_typer(data_app, name="data")
