"""Every command in README.md and docs/*.md works as written.

Each fenced shell block (``` or ```bash) is split into commands. A command on a debug config
(configs/debug*.py) or on a debug run's files is RUN for real at debug size (2 train steps, every
output in a temporary directory); the README's main command is run once (the `main_run` fixture)
and its workdir and HF export serve the commands that read `runs/debug`, `DIR` or `HF_DIR`. A
command on a released model's config is DRY-RUN: its flags are parsed by the CLI's own absl flag
definitions and its config, overrides included, is loaded and validated by glm_jax.config (every
stage), so a renamed field or a typo fails here; so are the debug-size commands in DRY_ANYWAY
and the train command each launcher starts. Placeholders are substituted from PLACEHOLDERS;
one not listed there fails the test. A shell command of a kind not handled below fails too.

Run as `python -m tests.test_docs MODULE '[[args...], ...]'` this file is the dry-run driver.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
DEBUG_CONFIG = re.compile(r"^configs/debug\w*\.py$")
TRAIN_STEPS = "--config.train.steps=2"  # appended to every train command that runs for real

# Placeholder -> (what it stands for, its value here). "trained" / "exported" are the main
# command's workdir and HF export; "fresh" is a new empty path under tmp_path; None marks a
# placeholder only a dry-run may hold (a released model's download, a bucket).
PLACEHOLDERS = {
    "runs/debug": ("the README main command's workdir", "trained"),
    "DIR": ("a training workdir", "trained"),
    "runs/debug/hf": ("the main command's HF export", "exported"),
    "HF_DIR": ("an HF directory (read: the main command's export; written: fresh)", "exported"),
    "THUDM_DIR": ("an export with THUDM names (written)", "fresh"),
    "CKPT": ("a params-only checkpoint (from-hf writes it; dry-runs read it)", "fresh"),
    "plan.json": ("aot's report (written)", "fresh"),
    "MY_SFT": ("your SFT mixture", "bundled_chat_sft"),
    "MY_PREFS": ("your preference mixture", "bundled_prefs"),
    "ZONE": ("a Cloud TPU zone", "us-east5-a"),
    "IMAGE": ("a container image built with launch/Dockerfile", "glm-jax:docs"),
    "gs://bucket/": ("a bucket every host can write", None),
    "GLM-4.5-Air/": ("the released weights' directory", None),
    "glm-4-9b/": ("the released weights' directory", None),
    "glm-4-9b-chat-hf/": ("the released weights' directory", None),
}
# A value that looks like a placeholder or a path a command writes must be in PLACEHOLDERS.
LOOKS_PLACEHOLDER = re.compile(r"^([A-Z][A-Z0-9_]*|gs://.*|runs/.*|[\w.-]+/|\S*\.\.\.\S*)$")
OUTPUT_FLAG = {"glm_jax.train": "workdir", "glm_jax.convert": "out", "glm_jax.aot": "out", "glm_jax.eval": "out",
               "launch/local.sh": "workdir"}
ALWAYS_RUN = {"glm_jax.model"}  # allocates nothing: cheap for any config
# Debug-size commands dry-run on purpose: minutes of compiling on 2 cores, and run for real elsewhere.
DRY_ANYWAY = {"configs/debug_moe.py": "tests/moe/test_train.py trains it",
              "launch/local.sh": "tests/test_launch.py runs it as 2 processes"}
SUBCOMMANDS = {"glm_jax.convert": {"to-hf", "from-hf"}, "glm_jax.data": {"show", "build"},
               "glm_jax.eval": {"passkey", "lm-eval", "dpo", "seqio"}}
LAUNCHERS = {"launch/local.sh": "run", "launch/tpu.sh": "dry-run flag", "launch/gke.sh": "dry-run flag"}
# Only inside the README's set-up blocks: what .ci/run itself executes (the venv, the suite).
SETUP = {"venv", "pip", "pytest", "rm"}


@dataclasses.dataclass
class Command:
    where: str  # file:line
    program: str  # a module (glm_jax.train), a launcher (launch/tpu.sh) or a benchmark script
    args: list[str]
    env: dict[str, str]
    block: str = ""  # "main-command" / "test-command" for the README's set-up blocks

    def flag(self, name: str) -> str | None:
        return next((a.split("=", 1)[1] for a in self.args if a.startswith(f"--{name}=")), None)

    @property
    def mode(self) -> str:
        """'run' (for real, debug size) or 'dry' (flags and config only)."""
        if self.program in DRY_ANYWAY or self.flag("config") in DRY_ANYWAY:
            return "dry"
        if self.program.startswith("launch/") or self.program.startswith("benchmarks/"):
            return "run"
        values = [a.split("=", 1)[1] for a in self.args if "=" in a]
        if self.program in ALWAYS_RUN:
            return "run"
        if any(_placeholder(v) and PLACEHOLDERS[_placeholder(v)][1] is None for v in values):
            return "dry"
        config = self.flag("config")
        return "dry" if config is not None and not DEBUG_CONFIG.match(config) else "run"


def _placeholder(value: str) -> str | None:
    """The PLACEHOLDERS key `value` is or starts with (a bucket path), else None."""
    if value in PLACEHOLDERS:
        return value
    return next((k for k in PLACEHOLDERS if k.endswith("/") and value.startswith(k)), None)


def _blocks(path: str):
    """(first line number, marker, text) of each fenced shell block of `path`."""
    lines = open(os.path.join(REPO, path), encoding="utf-8").read().split("\n")
    i, marker = 0, ""
    while i < len(lines):
        m = re.match(r"<!-- (main-command|test-command) -->", lines[i])
        if m:
            marker = m.group(1)
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if fence.group(1) in ("", "bash", "sh", "shell"):
                yield i + 2, marker, lines[i + 1:end]
            i, marker = end, ""
        i += 1


def extract(path: str) -> list[Command]:
    """Every command of `path`'s fenced shell blocks; `cmd1 && cmd2` is two commands."""
    out = []
    for first, marker, lines in _blocks(path):
        logical, start = "", None
        for n, line in enumerate(lines, first):
            start = start or n
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            tokens = shlex.split(logical, comments=True)
            logical, line_no, start = "", start, None
            segments, seg = [], []
            for t in tokens:
                if t == "&&":
                    segments.append(seg)
                    seg = []
                else:
                    assert t not in (";", "|", "||", "&"), f"{path}:{line_no}: only `&&` chains are checked, got {t!r}"
                    seg.append(t)
            if seg:
                segments.append(seg)
            out += [_command(f"{path}:{line_no}", s, marker) for s in segments]
    return out


def _command(where: str, tokens: list[str], marker: str) -> Command:
    env = {}
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        k, v = tokens.pop(0).split("=", 1)
        env[k] = v
    exe, rest = tokens[0], tokens[1:]
    python = os.path.basename(exe) in ("python", "python3")
    if python and rest[:1] == ["-m"]:
        program, args = rest[1], rest[2:]
        if program.split(".")[0] in ("venv", "pytest"):
            program = program.split(".")[0]
    elif python and rest and rest[0].startswith("benchmarks/"):
        program, args = rest[0], rest[1:]
    elif os.path.basename(exe) == "pip" or exe == "rm":
        program, args = os.path.basename(exe), rest
    elif exe in LAUNCHERS:
        program, args = exe, rest
    else:
        raise AssertionError(f"{where}: {' '.join(tokens)!r} is a command this test does not know how to check; "
                             f"document glm_jax CLIs, {sorted(LAUNCHERS)} or benchmarks/*.py --list")
    if program in SETUP:
        assert marker, f"{where}: {program} belongs in the README's set-up blocks only"
    else:
        assert program.startswith(("glm_jax", "launch/", "benchmarks/")), f"{where}: unknown program {program!r}"
    return Command(where, program, args, env, marker)


COMMANDS = [c for doc in DOCS for c in extract(doc)]
MAIN = [c for c in COMMANDS if c.block == "main-command" and c.program.startswith("glm_jax")]


def _substitute(cmd: Command, tmp, paths: dict) -> list[str]:
    """cmd.args with placeholders replaced; the command's output path made fresh under tmp."""
    out_flag = OUTPUT_FLAG.get(cmd.program)
    args = []
    for a in cmd.args:
        if "=" not in a:
            args.append(a)
            continue
        key, value = a.split("=", 1)
        if cmd.program.startswith("launch/") and key == "--workdir" and cmd.program != "launch/local.sh":
            args.append(a)  # tpu.sh / gke.sh need a gs:// workdir; they only print commands here
            continue
        if key in (f"--{out_flag}", "--out"):
            args.append(f"{key}={tmp / f'out{len(args)}'}")
            continue
        name = _placeholder(value)
        assert name or not LOOKS_PLACEHOLDER.match(value), (
            f"{cmd.where}: {value!r} looks like a placeholder or a path a command writes; add it to PLACEHOLDERS")
        if name:
            role = PLACEHOLDERS[name][1]
            if role in ("trained", "exported"):
                assert paths, f"{cmd.where}: {name} needs the main command's run"
                value = paths[role]
            elif role == "fresh":
                assert cmd.mode == "dry", f"{cmd.where}: {name} is read by a command that runs for real; no fixture makes it"
                value = str(tmp / name)
            elif role is not None:
                value = role
        args.append(f"{key}={value}")
    return args


def _env(cmd: Command) -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHON": sys.executable, **cmd.env}


def _run(cmd: Command, args: list[str], timeout: int = 600) -> str:
    if cmd.program.startswith("glm_jax"):
        argv = [sys.executable, "-m", cmd.program, *args]
    elif cmd.program.startswith("benchmarks/"):
        argv = [sys.executable, cmd.program, *args]
    else:
        argv = ["bash", cmd.program, *args]
    proc = subprocess.run(argv, env=_env(cmd), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd.where}: {' '.join(argv)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _is_main(cmd: Command) -> bool:
    """The same train command as the README's main command (run once, by `main_run`)."""
    return cmd.program == "glm_jax.train" and any(m.program == "glm_jax.train" and m.args == cmd.args for m in MAIN)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The README's main command at debug size: its train (2 steps) and to-hf, outputs in tmp."""
    tmp = tmp_path_factory.mktemp("main")
    paths = {"trained": str(tmp / "debug"), "exported": str(tmp / "debug" / "hf")}
    train, to_hf = MAIN  # the main command trains, then exports
    assert (train.program, to_hf.program) == ("glm_jax.train", "glm_jax.convert"), MAIN
    assert train.flag("workdir") == "runs/debug" and to_hf.flag("out") == "runs/debug/hf", MAIN
    _run(train, [a.replace("runs/debug", paths["trained"]) for a in train.args] + [TRAIN_STEPS])
    _run(to_hf, [a.replace("runs/debug", paths["trained"]) for a in to_hf.args])
    assert os.path.isfile(os.path.join(paths["exported"], "config.json"))
    return paths


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """{where: result} of every dry-run command: one driver process per CLI module."""
    tmp = tmp_path_factory.mktemp("dry")
    by_module: dict[str, list[tuple[str, list[str]]]] = {}
    results = {}
    for cmd in COMMANDS:
        try:
            invocations = _dry_invocations(cmd, tmp)
        except AssertionError as e:  # e.g. an unknown placeholder: that command's test fails
            results[cmd.where] = [{"ok": False, "error": str(e), "module": cmd.program, "args": cmd.args}]
            continue
        for module, args in invocations:
            by_module.setdefault(module, []).append((cmd.where, args))
    for module, items in by_module.items():
        proc = subprocess.run([sys.executable, "-m", "tests.test_docs", module, json.dumps([a for _, a in items])],
                              env=_env(Command("", module, [], {})), cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
        assert len(lines) == len(items), proc.stdout + proc.stderr[-2000:]
        for (where, args), r in zip(items, lines):
            results.setdefault(where, []).append({**r, "module": module, "args": args})
    return results


def _dry_invocations(cmd: Command, tmp) -> list[tuple[str, list[str]]]:
    """(module, args) the dry-run driver checks for `cmd`: a dry glm_jax command itself, or the
    train command a cloud launcher starts on every host."""
    if cmd.program.startswith("glm_jax") and cmd.mode == "dry":
        return [(cmd.program, _substitute(cmd, tmp, {}))]
    if cmd.program in ("launch/tpu.sh", "launch/gke.sh"):
        args = _substitute(cmd, tmp, {})
        extra = args[args.index("--") + 1:] if "--" in args else []
        train = [a for a in args if a.startswith(("--config=", "--workdir="))]
        return [("glm_jax.train", [*train, *extra])]
    if cmd.program == "launch/local.sh":  # everything but its own -n N / --devices_per_process goes to train
        args = _substitute(cmd, tmp, {})
        train = [a for i, a in enumerate(args) if a != "-n" and (i == 0 or args[i - 1] != "-n")
                 and not a.startswith(("--devices_per_process=", "-n=", "--processes="))]
        return [("glm_jax.train", train)]
    return []


_CHECKED: set = set()


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where}:{c.program}" for c in COMMANDS])
def test_documented_command(cmd, dry_runs, tmp_path, request):
    if cmd.program in SETUP:
        # The README's set-up lines: .ci/run executes the test block (this suite); the venv and
        # pip lines are how it got here. The main block's glm_jax commands are checked below.
        return
    if cmd.mode == "dry":
        assert cmd.program != "glm_jax.eval", f"{cmd.where}: eval has no config to dry-run; point it at runs/debug"
        for r in dry_runs[cmd.where]:
            assert r["ok"], f"{cmd.where}: {r['module']} {' '.join(r['args'])}\n{r['error']}"
        return
    main_run = request.getfixturevalue("main_run")  # only the commands that run for real wait for it
    if cmd.block == "main-command" or _is_main(cmd):
        assert os.path.isdir(os.path.join(main_run["trained"], "checkpoints")), "main_run left no checkpoints"
        return
    args = _substitute(cmd, tmp_path, main_run)
    if cmd.program in ("glm_jax.train", "launch/local.sh"):
        args.append(TRAIN_STEPS)
    if LAUNCHERS.get(cmd.program) == "dry-run flag":  # it would create cloud resources: print them instead
        cut = args.index("--") if "--" in args else len(args)
        args = [*args[:cut], "--dry-run", *args[cut:]]
        for r in dry_runs[cmd.where]:
            assert r["ok"], f"{cmd.where}: the train command it starts: {' '.join(r['args'])}\n{r['error']}"
    if cmd.program.startswith("benchmarks/"):
        assert "--list" in args, f"{cmd.where}: a benchmark in a fenced block must be cheap to check (--list)"
    key = (cmd.program, tuple(cmd.args))
    if key in _CHECKED:  # the same command on another page: checked once
        return
    stdout = _run(cmd, args)
    _CHECKED.add(key)
    if cmd.program == "glm_jax.train":
        assert "finished at step 2" in stdout, stdout[-2000:]


def test_every_page_starts_with_a_command():
    for doc in DOCS[1:]:
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        body = [line for line in text.split("\n") if line.strip() and not line.startswith("#")]
        assert body[0].startswith("```"), f"{doc}: the first thing after the title is the command a user runs"
        assert any(c.where.startswith(doc + ":") for c in COMMANDS), doc


def test_links_resolve():
    """Relative links point at files of this repository (not ../shared, not a moved result)."""
    for doc in DOCS:
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), target))
            assert path.startswith(REPO + os.sep) and os.path.exists(path), f"{doc}: link {target!r} does not resolve"


def test_readme_fits_a_screen_and_names_every_cli():
    lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().split("\n")
    assert len(lines) <= 150, len(lines)
    shown = {c.program for c in COMMANDS if c.where.startswith("README.md:")}
    assert {"glm_jax.train", "glm_jax.data", "glm_jax.model", "glm_jax.convert", "glm_jax.generate", "glm_jax.eval",
            "glm_jax.aot"} <= shown, shown


def _dry_run_main(module: str, argvs: list[list[str]]) -> None:
    """Parses each argv with `module`'s own absl flags (the module runs as __main__ up to
    app.run, which then returns without running main) and validates its --config through
    glm_jax.config. Each argv is parsed in a forked child: absl keeps the --config.* override
    flags a parse registers, so a second parse in one process would meet them again."""
    import runpy
    import traceback
    import warnings

    from absl import app, flags

    app.run = lambda main, *a, **k: None  # define the flags; parse them below instead of running main
    runpy.run_module(module, run_name="__main__", alter_sys=False)
    from glm_jax import config

    warnings.filterwarnings("ignore", message=".*fork.*")  # the children only parse and validate
    for argv in argvs:
        sys.stdout.flush()
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            continue
        try:
            sys.argv = [module, *argv]  # config_flags registers --config.* overrides from sys.argv
            positional = flags.FLAGS(sys.argv)[1:]
            if positional or module in SUBCOMMANDS:
                assert len(positional) == 1 and positional[0] in SUBCOMMANDS.get(module, ()), (
                    f"positional {positional}: {module} takes one of {sorted(SUBCOMMANDS.get(module, ()))}")
            cd = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
            stages = [name for name, _ in config.resolve_stages(cd)] if cd is not None else []
            print(json.dumps({"ok": True, "stages": stages}), flush=True)
        except Exception as e:  # noqa: BLE001 (reported per command, with its message)
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"}),
                  flush=True)
        finally:
            os._exit(0)


if __name__ == "__main__":
    _dry_run_main(sys.argv[1], json.loads(sys.argv[2]))
