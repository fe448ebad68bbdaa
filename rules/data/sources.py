"""Sources: data files → rows. A source's key is the bytes of its files, never their paths.

The source protocol (docs/plugins.md has a runnable example):

    class MySource:
        Config: a pydantic model of the source's params (`data.path` arrives as `path`)
        def __init__(self, **params)
        def files(self) -> list[Path]      every file the rows come from: their bytes are the key
        def check(self) -> None            cheap checks; raise ConfigError naming the problem
        def read(self) -> Iterator[dict]   the rows, streamed (never the whole dataset in memory)
        def location(self, index) -> str  optional: where row `index` is (`file:line`), for errors
        def jsonl_files(self) -> list[Path]  optional: files of JSON lines, which the source node
                                           chunks on raw bytes and parses per changed chunk only

`path` may be a file, a glob (`data/*.parquet`) or a directory (its files with the kind's
suffixes, recursively); files are read in sorted order.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import glob
import json
from pathlib import Path
from typing import Iterator, Optional

from pydantic import BaseModel, Field

from evsys_build.errors import ConfigError
from evsys_build.tree import files_under
from evsys_build.watch import watch_tree

from ..plugins.registry import register_source


class FileSetConfig(BaseModel, extra="forbid"):
    path: str  # a file, a glob or a directory (hidden files and folders skipped); relative to the directory you run from, or absolute


def resolve_files(pattern: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files `pattern` names: itself (a file whose name holds `[` or `*` included), its glob
    matches, or a directory's files with `suffixes`. Hidden files and folders are left out of a
    directory (`.ipynb_checkpoints/` copies would be trained on twice)."""
    path = Path(pattern)
    if path.is_dir():
        watch_tree(path)  # a shard added or removed changes the rows
        return [f for f in files_under(path, skip_hidden=True) if f.name.endswith(suffixes)]
    if path.is_file():
        return [path]
    if any(c in pattern for c in "*?["):
        static = Path(*[part for part in path.parts[: next(i for i, p in enumerate(path.parts) if any(c in p for c in "*?["))]]) if path.parts else Path(".")
        watch_tree(static if str(static) else Path("."))
        return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    return [path]



class FileSource:
    """A source over one file, a glob or a directory of shards (subclasses read one format)."""

    suffixes: tuple[str, ...] = ()
    Config = FileSetConfig

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def files(self) -> list[Path]:
        return resolve_files(self.cfg.path, self.suffixes)

    def check(self) -> None:
        """Fail early, naming the field, when there is nothing to read."""
        files = self.files()
        if not files:
            raise ConfigError(f"data.path: {self.cfg.path!r} matches no {'/'.join(self.suffixes)} file (paths are relative to the directory you run from)")
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"data.path: no such file {str(missing[0])!r} (paths are relative to the directory you run from)")

    def read(self) -> Iterator[dict]:
        self.check()
        for file in self.files():
            yield from self.read_file(file)

    def read_file(self, file: Path) -> Iterator[dict]:
        raise NotImplementedError

    def location(self, index: int) -> str | None:
        """`file: row N` of row `index` (formats with lines override this)."""
        for file in self.files():
            count = sum(1 for _ in self.read_file(file))
            if index < count:
                return f"{file}: row {index + 1}"
            index -= count
        return None


@register_source("jsonl")
class JsonlSource(FileSource):
    """One JSON object per line; blank lines skipped; errors name file:line."""

    suffixes = (".jsonl",)

    def read_file(self, file: Path) -> Iterator[dict]:
        return read_jsonl(file)

    def jsonl_files(self) -> list[Path]:
        return self.files()

    def location(self, index: int) -> str | None:
        """`file:line` of the row at `index` (0-based over all files, blank lines skipped)."""
        for file in self.files():
            found, count = jsonl_location(file, index)
            if found:
                return found
            index -= count
        return None


@register_source("json")
class JsonSource(FileSource):
    """`.json` files holding a list of objects (or an object with the list under `field`), and
    `.jsonl` files, one object per line. A `.json` file is read whole: keep big data in JSONL."""

    suffixes = (".json", ".jsonl")

    class Config(FileSetConfig):
        field: Optional[str] = None  # the key holding the list, for `{"data": [...]}` files

    def read_file(self, file: Path) -> Iterator[dict]:
        if file.suffix == ".jsonl":
            yield from read_jsonl(file)
            return
        try:
            doc = json.loads(file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}:{getattr(exc, 'lineno', 1)}: invalid JSON ({getattr(exc, 'msg', exc)}); fix the file") from None
        if self.cfg.field is not None:
            if not isinstance(doc, dict) or self.cfg.field not in doc:
                raise ConfigError(f"{file}: has no top-level field {self.cfg.field!r} (data.params.field)")
            doc = doc[self.cfg.field]
        if not isinstance(doc, list):
            raise ConfigError(f"{file}: holds a {type(doc).__name__}, not a list of rows (set data.params.field to the key of the list)")
        for i, row in enumerate(doc):
            if not isinstance(row, dict):
                raise ConfigError(f"{file}: item {i}: each row must be a JSON object, got {type(row).__name__}")
            yield row


@register_source("csv")
class CsvSource(FileSource):
    """CSV with a header row; every value is a string (as written); errors name file:line."""

    suffixes = (".csv", ".tsv")

    class Config(FileSetConfig):
        delimiter: str = Field(",", min_length=1, max_length=1)  # "\t" for TSV
        encoding: str = "utf-8"  # the files' text encoding

    def read_file(self, file: Path) -> Iterator[dict]:
        with open(file, newline="", encoding=self.cfg.encoding) as f:
            reader = csv.reader(f, delimiter=self.cfg.delimiter)
            try:
                header = next(reader, None)
                if not header:
                    return
                for fields in reader:
                    if not fields:
                        continue
                    if len(fields) != len(header):
                        raise ConfigError(f"{file}:{reader.line_num}: {len(fields)} fields, but the header has {len(header)}; fix the row")
                    yield dict(zip(header, fields))
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ConfigError(f"{file}:{reader.line_num}: unreadable CSV ({exc}); fix the file or set data.params.encoding") from None

    def location(self, index: int) -> str | None:
        for file in self.files():
            with open(file, newline="", encoding=self.cfg.encoding) as f:
                reader = csv.reader(f, delimiter=self.cfg.delimiter)
                next(reader, None)
                for fields in reader:
                    if fields:
                        if index == 0:
                            return f"{file}:{reader.line_num}"
                        index -= 1
        return None


@register_source("parquet")
class ParquetSource(FileSource):
    """Parquet files, read in record batches with pyarrow (never the whole table at once)."""

    suffixes = (".parquet",)
    libraries = ("pyarrow",)  # it decodes the files: its version is in the source's key

    class Config(FileSetConfig):
        columns: Optional[list[str]] = None  # read only these columns
        batch_size: int = Field(8192, ge=1)  # rows per batch held in memory

    def read_file(self, file: Path) -> Iterator[dict]:
        try:
            import pyarrow.parquet as pq  # lazily: only parquet sources need pyarrow
        except ImportError:
            raise ConfigError("data.source_kind: parquet needs pyarrow: pip install 'evsys[data]'") from None
        try:
            reader = pq.ParquetFile(file)
            batches = reader.iter_batches(batch_size=self.cfg.batch_size, columns=self.cfg.columns)
            row = 0
            for batch in batches:
                for values in batch.to_pylist():
                    yield {k: jsonable(v, f"{file}: row {row + 1}: {k}") for k, v in values.items()}
                    row += 1
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise ConfigError(f"{file}: unreadable parquet ({type(exc).__name__}: {exc}); check the file") from None


def jsonable(value, where: str):
    """A column value as JSON data: dates and times as ISO strings, decimals as strings."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list):
        return [jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v, where) for k, v in value.items()}
    if isinstance(value, tuple):  # map columns come as (key, value) pairs
        return [jsonable(v, where) for v in value]
    raise ConfigError(f"{where}: a {type(value).__name__} value has no JSON form; drop the column (data.params.columns) or convert it")


def jsonl_location(path: Path, index: int) -> tuple[str | None, int]:
    """(`file:line` of the row at `index` in this file or None, the file's row count)."""
    seen = -1
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == index:
                    return f"{path}:{lineno}", seen + 1
    return None, seen + 1


_decode_json = json.JSONDecoder().decode  # what json.loads(str) calls


BOM = b"\xef\xbb\xbf"


def _refuse_lone_surrogates(row: dict, where: str) -> None:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: a \\u escape stands for half of a surrogate pair (U+D800 to U+DFFF), which is not text; "
                          "fix the escape (write the character itself, or both halves of the pair) or remove the line") from None


def read_jsonl(path: Path, first_line: int = 1, data: bytes | None = None):
    """Yield the rows of a JSONL file (or of `data`, its lines numbered from `first_line`);
    a bad line is a ConfigError naming file:line."""
    lines = data.split(b"\n") if data is not None else open(path, "rb")
    try:
        for lineno, line in enumerate(lines, first_line):
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM):]  # a UTF-8 BOM opens the file, not its first row
            if not line.strip():
                continue
            try:
                row = _decode_json(line.decode("utf-8"))  # json.loads without its per-call encoding detection
            except (ValueError, UnicodeDecodeError):  # json.loads itself: its encodings (a BOM, UTF-16) and its message
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"{path}:{lineno}: invalid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            if b"\\ud" in line or b"\\uD" in line:  # a \u escape of a surrogate: only a whole pair is text
                _refuse_lone_surrogates(row, f"{path}:{lineno}")
            yield row
    finally:
        if data is None:
            lines.close()
