"""Checks every command that README.md and docs/*.md show, against this checkout.

    python tools/check_docs.py          # each `python SCRIPT ...`: the script exists and its argparse parser accepts
                                        # the options as written (nothing runs past parsing); each `make TARGET`: the
                                        # target exists; each `pip install -r FILE`, `bash FILE`: the file exists;
                                        # each relative link: its file exists
    python tools/check_docs.py --run    # then also runs the cheap ones (CHEAP below) from the repository root

Commands come from the ```shell / ```bash blocks (continuation lines joined, comments dropped, `for v in a b; do
CMD; done` expanded) and from inline `python ...` and `make ...` spans without placeholders ([...], |, ...).
tests/test_docs.py runs the check; `--run` is for a fresh clone, where it writes data/sample like `make demo`.
"""
import argparse
import contextlib
import functools
import glob
import io
import os
import re
import runpy
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEAP = ["python download.py --sample", "python bench.py --device cpu --quick", "python report.py --compare"]


class Parsed(Exception):
    """Raised in place of running a script once its parser has accepted the arguments."""


def documents():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def shell_commands(text):
    """(line number, command) of every command in the document's shell blocks and inline `python ...` spans."""
    found = []
    for block in re.finditer(r"^```(?:shell|bash|sh)\n(.*?)^```", text, re.M | re.S):
        first = text.count("\n", 0, block.start()) + 2
        joined, start = "", None
        for offset, line in enumerate(block.group(1).split("\n")):
            line = strip_comment(line).rstrip()
            start = first + offset if start is None else start
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            joined += line
            if joined.strip():
                found += [(start, command) for command in expand_loop(joined.strip())]
            joined, start = "", None
    for span in re.finditer(r"`((?:python|make) [^`]+)`", text):
        placeholder = re.search(r"\[|\||\.\.\.|…|<", span.group(1)) or re.fullmatch(r"make [A-Z_]+", span.group(1))
        if not placeholder:
            found.append((text.count("\n", 0, span.start()) + 1, span.group(1)))
    return found


def strip_comment(line):
    """The line without its shell comment (a # outside quotes that starts a word)."""
    quote = None
    for i, c in enumerate(line):
        if c in "'\"" and quote in (None, c):
            quote = None if quote else c
        elif c == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def expand_loop(command):
    """`for v in a b; do CMD; done` as one CMD per value; other commands as they are; `A && B` as A and B."""
    loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.+); done", command)
    if loop:
        name, values, body = loop.groups()
        return [body.replace(f"${name}", value) for value in values.split()]
    return [part.strip() for part in command.split("&&")]


def check_command(command):
    """'' when the command fits this checkout, else what is wrong."""
    command = re.sub(r"--\[[^\]]*\]", "", command)  # the original README's template: python main.py --[옵션]
    words = shlex.split(command.replace("[", "").replace("]", ""))
    if words[0] == "torchrun":
        words = ["python"] + strip_torchrun_options(words[1:])
    if words[0] in ("python", "python3"):
        return check_script(words[1], words[2:])
    if words[0] == "make":
        return "" if all(has_make_target(t) for t in words[1:] if "=" not in t) else f"no make target in {words[1:]}"
    if words[0] == "pip" and "-r" in words:
        path = words[words.index("-r") + 1]
        return "" if os.path.isfile(os.path.join(ROOT, path)) else f"no file {path}"
    if words[0] in ("bash", "sh"):
        return "" if os.path.isfile(os.path.join(ROOT, words[1])) else f"no file {words[1]}"
    return ""  # tensorboard, wandb, apt-get, ...: not this repo's


def strip_torchrun_options(words):
    while words and words[0].startswith("--"):
        words = words[2:] if "=" not in words[0] else words[1:]
    return words


@functools.cache
def make_targets():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return set(re.findall(r"^([\w.-]+):", f.read(), re.M))


def has_make_target(target):
    return target in make_targets()


def check_script(script, argv):
    """Runs the script up to its parse_args(argv): '' if it parsed, else argparse's error."""
    path = os.path.join(ROOT, script)
    if not os.path.isfile(path):
        return f"no script {script}"
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    errors = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_only
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv, sys.path = [path] + argv, [os.path.dirname(path), ROOT] + sys.path
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(path, run_name="__main__")
        return f"{script} ran past its argument parsing"
    except Parsed:
        return ""
    except SystemExit as e:
        return "" if e.code == 0 else errors.getvalue().strip().splitlines()[-1] if errors.getvalue() else str(e)
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv, sys.path = saved_argv, saved_path


def broken_links(path, text):
    """Relative links and image sources of a document whose file is missing."""
    targets = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text) + re.findall(r'src="([^"]+)"', text)
    return [t for t in targets if not re.match(r"\w+://", t)
            and not os.path.exists(os.path.join(os.path.dirname(path), t))]


def commands():
    """(file, line, command) of every command the documents show."""
    found = []
    for path in documents():
        with open(path, encoding="utf-8") as f:
            found += [(os.path.relpath(path, ROOT), line, c) for line, c in shell_commands(f.read())]
    return found


def problems(documented=None):
    """Every command or link of the documents that does not fit this checkout: [(file, line, text, problem)]."""
    found = [(name, line, c, check_command(c)) for name, line, c in documented or commands()]
    found = [row for row in found if row[3]]
    for path in documents():
        with open(path, encoding="utf-8") as f:
            found += [(os.path.relpath(path, ROOT), 0, link, "missing file") for link in broken_links(path, f.read())]
    return found


def run_cheap(documented):
    commands = sorted({c for _, _, c in documented
                       if any(c.startswith(prefix) for prefix in CHEAP) and not re.search(r"<|\*|RUN|DIR", c)})
    failed = 0
    for command in commands:
        print(f"$ {command}", flush=True)
        words = shlex.split(command)
        failed += subprocess.run([sys.executable] + words[1:], cwd=ROOT).returncode != 0
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="also run the cheap commands (CHEAP) from the repository root")
    args = p.parse_args()
    documented = commands()
    found = problems(documented)
    for name, line, text, problem in found:
        print(f"{name}:{line}: {text}\n    {problem}")
    print(f"{len(documented)} commands in {len(documents())} documents: {len(found)} problem(s)")
    failed = run_cheap(documented) if args.run and not found else 0
    sys.exit(1 if found or failed else 0)


if __name__ == "__main__":
    main()
