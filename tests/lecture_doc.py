"""Run the console blocks of a walkthrough document; check their output, or rewrite it.

docs/lecture.md and docs/lecture.ko.md show slidenet commands with what they print. This module
runs them, so the documents cannot drift from the program: tests/test_lecture_doc.py compares,
and after a change to slidenet's output one command rewrites the outputs and the pictures:

    .venv/bin/python tests/lecture_doc.py --update docs/lecture.md docs/lecture.ko.md
    make lecture-docs                                   # the same
    .venv/bin/python tests/lecture_doc.py docs/lecture.md   # check only: a diff per change

The block format, a fenced block whose info string is `console`:

    ```console
    $ slidenet summary 'INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0)'
    slidenet summary: error: layer 1, ...
    [exit status 2]
    ```

- A line starting with `$ ` is a command. It continues on the next line when it ends with a
  backslash, and a here-document (`python - <<'EOF'`) runs to its terminator line, so a
  command can be copied as it stands.
- The lines after it, up to the next `$ ` line or the end of the block, are what it prints:
  stdout and stderr together, in the order written (PYTHONUNBUFFERED=1), trailing spaces and
  trailing blank lines removed. A non-zero exit status adds a last line `[exit status N]`.
- Other fenced blocks (```sh, ```text, ...) are prose and are not run.
- A block opened with ```` ```console rounding ```` prints numbers that depend on floating-point
  rounding: a model trained in the document, a gradient check's errors. Another BLAS (another
  CPU) adds in another order and moves them a little, so there each line must match with its
  numbers within ROUNDING (below) instead of exactly.

How the commands run: by `bash -c`, one after the other, all blocks of a document in one fresh
temporary folder (so a later block can use a model an earlier one trained), with the bin folder
of the running Python (the project's .venv) first on PATH, so `slidenet` and `python` are the
project's. A command gets TIMEOUT_S seconds.

Before comparing, both sides are normalised (`normalise`): timings are masked
(`2315 img/s` -> `<N> img/s`, `1.6s` -> `<T>s`), and the lines in IGNORED_LINES, which a fresh
machine prints once, are dropped. Everything else must match exactly, including the numbers of
a model trained in the document outside a `rounding` block: training is deterministic for a
given seed (the same on any number of threads, with or without numba), though another BLAS
(another CPU) rounds differently and moves the last digits, which `rounding` blocks allow for.

Pictures: every link `](img/lecture/NAME)` in a document names a file NAME that its commands
write in the folder. `--update` copies each into docs/img/lecture/; the check requires that the
commands drew it again, in the same pixel size.
"""
import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_S = 300
PICTURE_DIR = "img/lecture"

_FENCE_OPEN = re.compile(r"^```console(\s+rounding)?\s*$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
# How far a number in a `rounding` block may move on another CPU. Decimals (losses,
# accuracies, probabilities): 0.03 absolute or 3% of the larger (a class of 100 test images
# with 3 of them changing their answer). Numbers in e-notation (a
# gradient check's errors, far below its tolerance): within a factor of 10. Whole numbers (images
# in a confusion cell, KiB of a report): 3 either way; written with a comma (parameter counts,
# image counts), exactly.
ROUNDING = {"decimal": (0.03, 0.03), "exponent": 10.0, "whole": 3}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_PICTURE = re.compile(r"\]\((" + re.escape(PICTURE_DIR) + r"/[^)\s]+)\)")
_MASKS = (
    (re.compile(r"\d[\d,]*(?:\.\d+)? img/s"), "<N> img/s"),   # throughput
    (re.compile(r"\b\d+(?:\.\d+)?s\b"), "<T>s"),               # durations: 1.6s
)
# Printed once on a fresh machine, never again.
IGNORED_LINES = (re.compile(r"^Matplotlib is building the font cache"),)


class FormatError(ValueError):
    """A document's console block cannot be parsed."""


@dataclass
class Command:
    """One `$ ` command of a document and the output written under it."""
    text: str                 # what bash runs (continuation lines and here-documents included)
    expected: list            # output lines as written in the document
    section: str              # the `## ` heading it sits under
    line: int                 # 1-based line number of its `$ ` line
    out_start: int = 0        # 0-based range of its output lines in the document
    out_end: int = 0
    then_command: bool = False  # another command follows in the same block
    rounding: bool = False    # in a ```console rounding block: numbers compared within ROUNDING


@dataclass
class Document:
    path: Path
    lines: list
    commands: list = field(default_factory=list)
    blocks: int = 0

    @property
    def pictures(self):
        """The picture names linked under img/lecture/, in order, without repeats."""
        names = []
        for match in _PICTURE.finditer("\n".join(self.lines)):
            name = match.group(1)[len(PICTURE_DIR) + 1:]
            if name not in names:
                names.append(name)
        return names

    def sections(self):
        """[(heading, [command text, ...]), ...] for each `## ` section, in order."""
        found = {}
        for command in self.commands:
            found.setdefault(command.section, []).append(command.text)
        headings = [line[3:].strip() for line in self.lines if line.startswith("## ")]
        return [(h, found.get(h, [])) for h in headings]


def parse(path):
    """Read a document and return its Document (commands with their expected output)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    doc = Document(path, lines)
    section, i, in_block, rounding = "", 0, False, False
    while i < len(lines):
        line = lines[i]
        if not in_block:
            if line.startswith("## "):
                section = line[3:].strip()
            opened = _FENCE_OPEN.match(line)
            if opened:
                in_block, rounding = True, bool(opened.group(1))
                doc.blocks += 1
            i += 1
            continue
        if line.startswith("```"):
            in_block = False
            i += 1
            continue
        if not line.startswith("$ "):
            if line.strip():
                raise FormatError(f"{path}:{i + 1}: output before any `$ ` command in the block")
            i += 1
            continue
        start = i
        text = [line[2:]]
        i += 1
        while text[-1].endswith("\\"):
            if i >= len(lines):
                raise FormatError(f"{path}:{start + 1}: the command's last line ends in a backslash")
            text.append(lines[i])
            i += 1
        for match in _HEREDOC.finditer("\n".join(text)):
            word = match.group(2)
            while True:
                if i >= len(lines) or lines[i].startswith("```"):
                    raise FormatError(f"{path}:{start + 1}: here-document without its "
                                      f"terminator line {word!r}")
                text.append(lines[i])
                i += 1
                if lines[i - 1].strip() == word:
                    break
        out_start = i
        while i < len(lines) and not lines[i].startswith("$ ") and not lines[i].startswith("```"):
            i += 1
        if i >= len(lines):
            raise FormatError(f"{path}:{start + 1}: the console block is never closed")
        expected = _trim([x.rstrip() for x in lines[out_start:i]])
        doc.commands.append(Command("\n".join(text), expected, section, start + 1, out_start, i,
                                    lines[i].startswith("$ "), rounding))
    if in_block:
        raise FormatError(f"{path}: the last console block is never closed")
    return doc


def _trim(lines):
    lines = list(lines)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def normalise(lines):
    """Output lines as compared: timings masked, IGNORED_LINES dropped."""
    kept = []
    for line in lines:
        if any(p.search(line) for p in IGNORED_LINES):
            continue
        for pattern, mask in _MASKS:
            line = pattern.sub(mask, line)
        kept.append(line)
    return kept


def environment():
    """The process environment with this Python's bin folder first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    if not (Path(bin_dir) / "slidenet").exists():
        raise FileNotFoundError(f"no slidenet command next to {sys.executable}; run this with the "
                                "project's .venv/bin/python (make setup creates it)")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(text, folder, env=None, timeout=TIMEOUT_S):
    """Run one command in `folder`; returns its output lines, `[exit status N]` appended."""
    try:
        proc = subprocess.run(["bash", "-c", text], cwd=folder, env=env or environment(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode("utf-8", "replace").split("\n")
        return _trim([x.rstrip() for x in out]) + [f"[timed out after {timeout} s]"]
    out = _trim([x.rstrip() for x in proc.stdout.decode("utf-8", "replace").split("\n")])
    if proc.returncode != 0:
        out.append(f"[exit status {proc.returncode}]")
    return out


def run_all(texts, folder, log=None):
    """Run command texts in order in `folder`; returns the list of their output lines."""
    env = environment()
    outputs = []
    for text in texts:
        began = time.perf_counter()
        outputs.append(run(text, folder, env))
        if log:
            log(f"{time.perf_counter() - began:6.1f} s  $ {text.splitlines()[0]}")
    return outputs


def _close(a, b):
    """Whether two numbers as printed differ by no more than ROUNDING allows."""
    if "," in a or "," in b:
        return a == b
    x, y = float(a), float(b)
    if "e" in a or "e" in b:
        small, large = sorted((abs(x), abs(y)))
        return x * y >= 0 and (large == 0 or small * ROUNDING["exponent"] >= large)
    if "." in a or "." in b:
        absolute, relative = ROUNDING["decimal"]
        return abs(x - y) <= max(absolute, relative * max(abs(x), abs(y))) * (1 + 1e-9)
    return abs(x - y) <= ROUNDING["whole"]


def within_rounding(want, got):
    """Whether two normalised outputs are the same text with numbers within ROUNDING (and
    columns as wide as their numbers: 99 and 100 pad differently)."""
    if len(want) != len(got):
        return False
    for a, b in zip(want, got):
        if " ".join(_NUMBER.sub("#", a).split()) != " ".join(_NUMBER.sub("#", b).split()):
            return False
        if not all(_close(x, y) for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b))):
            return False
    return True


def differences(doc, outputs):
    """A unified diff for each command whose normalised output differs (within ROUNDING in a
    `rounding` block); [] when all match."""
    found = []
    for command, actual in zip(doc.commands, outputs):
        want, got = normalise(command.expected), normalise(actual)
        if want != got and not (command.rounding and within_rounding(want, got)):
            diff = "\n".join(difflib.unified_diff(want, got, "document", "slidenet", lineterm=""))
            found.append(f"{doc.path}:{command.line}: $ {command.text.splitlines()[0]}\n{diff}")
    return found


def picture_problems(doc, folder):
    """Pictures linked by the document that its commands did not draw, or drew in another size."""
    from PIL import Image

    problems = []
    stored_dir = doc.path.parent / PICTURE_DIR
    for name in doc.pictures:
        drawn, stored = Path(folder) / name, stored_dir / name
        if not drawn.is_file():
            problems.append(f"{doc.path}: {PICTURE_DIR}/{name} is linked, but no command wrote {name}")
        elif not stored.is_file():
            problems.append(f"{doc.path}: {stored} is missing; run with --update")
        else:
            with Image.open(drawn) as a, Image.open(stored) as b:
                if a.size != b.size:
                    problems.append(f"{doc.path}: {name} is drawn {a.size[0]}x{a.size[1]} now, "
                                    f"stored {b.size[0]}x{b.size[1]}; run with --update")
    return problems


def rewrite(doc, outputs):
    """The document's text with every command's output replaced by `outputs`."""
    lines = list(doc.lines)
    for command, actual in reversed(list(zip(doc.commands, outputs))):
        lines[command.out_start:command.out_end] = actual + ([""] if command.then_command else [])
    return "\n".join(lines)


def write_atomically(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("docs", nargs="+", metavar="DOC", help="markdown files with console blocks")
    parser.add_argument("--update", action="store_true",
                        help="rewrite each command's output and copy the linked pictures")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR/run0, DIR/run1, ... and keep them (DIR must not exist)")
    args = parser.parse_args(argv)
    docs = [parse(p) for p in args.docs]
    log = lambda line: print(line, file=sys.stderr, flush=True)   # noqa: E731
    runs = {}   # documents with the same commands share one run
    failed = False
    if args.keep:
        Path(args.keep).mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="lecture-doc-") as scratch:
        root = args.keep or scratch
        for doc in docs:
            texts = tuple(c.text for c in doc.commands)
            if texts not in runs:
                folder = Path(root) / f"run{len(runs)}"
                folder.mkdir()
                log(f"running the {len(texts)} commands of {doc.path} in {folder}")
                runs[texts] = (folder, run_all(texts, folder, log))
            folder, outputs = runs[texts]
            changed = differences(doc, outputs)
            if args.update:
                write_atomically(doc.path, rewrite(doc, outputs))
                target = doc.path.parent / PICTURE_DIR
                target.mkdir(parents=True, exist_ok=True)
                missing = [n for n in doc.pictures if not (folder / n).is_file()]
                for name in doc.pictures:
                    if name not in missing:
                        shutil.copyfile(folder / name, target / name)
                print(f"{doc.path}: {len(doc.commands)} commands, {len(changed)} outputs changed; "
                      f"{len(doc.pictures) - len(missing)} pictures copied to {target}")
                for name in missing:
                    print(f"{doc.path}: no command wrote {name}, which the document links")
                    failed = True
            else:
                problems = changed + picture_problems(doc, folder)
                for problem in problems:
                    print(problem + "\n")
                print(f"{doc.path}: {len(doc.commands)} commands, {len(problems)} problems")
                failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
