"""The GPU check on the lent machine as it is: a wheelhouse of exactly what its image lacks,
built here; there, one command installs it and the project without network and runs gpu.py.

    python benchmarks/gpu_wheelhouse.py build                 # here: wheelhouse/ for the lent image
    python benchmarks/gpu_wheelhouse.py build --against PY    # for another Python (its pip list)
    python3 benchmarks/gpu_wheelhouse.py run [--dry]          # there: install, check, gpu.py

The lent image (benchmarks/gpu_image.json: its packages as KINDS.md lists them, versions where
known) has torch 2.11 and no hydra-core, omegaconf, antlr4 or kernels, and a transformers and a
huggingface-hub older than the project's. `build` walks the requirements of what gpu.py imports
(GPU_CHECK_NEEDS), pinned to the versions installed here (the ones CI tests), and keeps each that
the target lacks, has at an unsatisfying version, or has at a version the list does not give;
torch is never carried (it cannot be: the image's CUDA build is the point). Each is downloaded as
a wheel for the target's Python and platform (or built here, for a pure-Python sdist) into
wheelhouse/, with MANIFEST.json; the whole must fit the device tool's carry limit (64 MiB).

`run` (on the device, from the repository root): installs the wheelhouse and the project into a
folder of its own (`pip --no-deps --no-index --no-build-isolation --target`: the image's
site-packages stay read-only and untouched, the folder goes first on PYTHONPATH), checks every
pinned requirement and torch >= 2.11 with a GPU (one `error:` line naming what is missing, exit
2), then runs gpu.py under a time guard (--minutes, 7.5 by default), sections in the order that
gives figures soonest (attention, sampler, methods), its JSON written after every row so a cut
run still returns rows."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "wheelhouse"
IMAGE = Path(__file__).with_name("gpu_image.json")
CARRY_LIMIT = 64 * 2**20  # the device tool's carry limit, all paths together
GPU_CHECK_NEEDS = ["transformers", "tokenizers", "safetensors", "accelerate", "hydra-core", "omegaconf", "numpy", "tqdm",
                   "pyyaml", "packaging"]  # what gpu.py's imports reach (the rest of the project's dependencies it never imports)
NEVER_CARRIED = {"torch"}  # and what only torch requires: the image's own build


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def target_environment(python_version: str) -> dict:
    """The marker environment of the target (Linux x86_64, CPython `python_version`)."""
    return {"python_version": ".".join(python_version.split(".")[:2]), "python_full_version": python_version,
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def tomllib_load() -> dict:
    import tomllib  # Python 3.11+: `build` runs here, on the project's own Python

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_requirements(names: list[str]) -> list[str]:
    """The project's own requirement (pyproject.toml, its specifier) of each of `names`."""
    from packaging.requirements import Requirement

    declared = {canonical(Requirement(r).name): r for r in tomllib_load()["project"]["dependencies"]}
    return [declared.get(canonical(n), n) for n in names]


def closure(roots: list[str], environment: dict) -> dict[str, dict]:
    """Every distribution `roots` require (markers evaluated for the target), pinned to the
    version installed here, with the specifiers asked of it and by whom: {name: {version,
    specifiers, by}}."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, dict] = {}
    todo = [(Requirement(r), "gpu.py") for r in roots]  # the project's own requirements
    while todo:
        requirement, by = todo.pop()
        name = canonical(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        entry = found.setdefault(name, {"version": metadata.version(requirement.name), "specifiers": [], "by": []})
        entry["specifiers"].append(str(requirement.specifier))
        entry["by"].append(by if by != "gpu.py" else "tokreason")
        if len(entry["by"]) > 1 or name in NEVER_CARRIED:
            continue
        for text in metadata.requires(requirement.name) or []:
            todo.append((Requirement(text), name))
    return found


def installed_in(python: str | None) -> tuple[dict[str, str | None], str]:
    """The target's packages {name: version or None} and its Python version: another
    interpreter's pip list, or the lent image's list (benchmarks/gpu_image.json)."""
    if python is None:
        image = json.loads(IMAGE.read_text())
        return {canonical(k): v for k, v in image["packages"].items()}, image["python"]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return {canonical(p["name"]): p["version"] for p in json.loads(listed.stdout)}, version


def lacking(needed: dict[str, dict], present: dict[str, str | None]) -> dict[str, str]:
    """{name: why} for each needed distribution the target must be given."""
    out = {}
    for name, entry in needed.items():
        if name in NEVER_CARRIED:
            continue
        have = present.get(name, "absent")
        if have == "absent":
            out[name] = "absent"
        elif have is None:
            out[name] = "its version is not known"
        elif not satisfies(have, entry["specifiers"]):
            out[name] = f"{have} there"
    return out


def satisfies(version: str, specifiers: list[str]) -> bool:
    from packaging.specifiers import SpecifierSet

    return all(SpecifierSet(s).contains(version, prereleases=True) for s in specifiers)


def download(name: str, version: str, python_version: str, folder: Path) -> None:
    """A wheel of name==version for the target's Python (a binary one for Linux x86_64), or,
    where PyPI has only an sdist (antlr4-python3-runtime), a wheel built here (pure Python)."""
    tag = "".join(python_version.split(".")[:2])
    base = [sys.executable, "-m", "pip", "-q", "download", "--no-deps", "--only-binary=:all:", "--dest", str(folder),
            "--python-version", tag, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
            "--platform", "any", f"{name}=={version}"]
    if subprocess.run(base, capture_output=True).returncode == 0:
        return
    subprocess.run([sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "--wheel-dir", str(folder), f"{name}=={version}"],
                   check=True, capture_output=True)


def build(args) -> None:
    present, python_version = installed_in(args.against)
    build_system = tomllib_load()["build-system"]["requires"]  # pip builds the project there without isolation
    needed = closure(project_requirements(GPU_CHECK_NEEDS) + build_system, target_environment(python_version))
    carried = lacking(needed, present)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    for name in sorted(carried):
        download(name, needed[name]["version"], python_version, folder)
    wheels = sorted(folder.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    manifest = {"python": python_version, "carried": {n: {"version": needed[n]["version"], "why": carried[n]} for n in carried},
                "requirements": {n: e for n, e in needed.items()}, "bytes": size}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {folder}: " + ", ".join(f"{n} {needed[n]['version']}" for n in sorted(carried)))
    if size > CARRY_LIMIT:
        sys.exit(f"error: the wheelhouse is {size / 2**20:.1f} MiB, over the carry limit of {CARRY_LIMIT // 2**20} MiB")


def check(args) -> None:
    """In the environment gpu.py will run in: every requirement of the wheelhouse's manifest
    met, torch >= 2.11, and a GPU unless --dry; else one line naming what is missing."""
    from importlib import metadata

    manifest = json.loads((Path(args.wheelhouse) / "MANIFEST.json").read_text())
    problems = []
    for name, entry in sorted(manifest["requirements"].items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} (wanted {entry['version']})")
            continue
        if not satisfies(have, entry["specifiers"]):
            problems.append(f"{name} {have} (wanted {', '.join(s for s in entry['specifiers'] if s)})")
    import torch

    if not satisfies(torch.__version__.split("+")[0], [">=2.11"]):
        problems.append(f"torch {torch.__version__} (wanted >=2.11)")
    if not args.dry and not torch.cuda.is_available():
        problems.append("a GPU (torch.cuda.is_available() is False)")
    if problems:
        print(f"error: the GPU check cannot run here: missing or too old: {'; '.join(problems)}", file=sys.stderr)
        sys.exit(2)
    print(f"versions ok: torch {torch.__version__}, {len(manifest['requirements'])} requirements met", flush=True)


def run(args) -> None:
    """Install the wheelhouse and the project into a folder of their own, check, run gpu.py."""
    wheelhouse = Path(args.wheelhouse)
    if not (wheelhouse / "MANIFEST.json").exists():
        sys.exit(f"error: no wheelhouse at {wheelhouse}; build it first: python benchmarks/gpu_wheelhouse.py build")
    site = Path(tempfile.mkdtemp(prefix="tokreason-site-"))
    pip = [sys.executable, "-m", "pip", "-q", "install", "--no-deps", "--no-index", "--no-build-isolation",
           "--disable-pip-version-check", "--target", str(site)]
    wheels = [str(w) for w in sorted(wheelhouse.glob("*.whl"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    # the wheels first, then the project, built by the carried setuptools (on PYTHONPATH)
    for what, label in ((wheels, f"the {len(wheels)} wheels of {wheelhouse}"), ([str(ROOT)], "the project")):
        if not what:
            continue
        done = subprocess.run(pip + what, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            said = [line.strip() for line in done.stderr.splitlines() if "error" in line.lower() and "hint" not in line]
            sys.exit(f"error: installing {label} failed: {said[0] if said else done.stderr.strip()[-200:]}")
    me = [sys.executable, str(Path(__file__).resolve())]
    if subprocess.run([*me, "check", "--wheelhouse", str(wheelhouse), *(["--dry"] if args.dry else [])], env=env).returncode:
        sys.exit(2)
    out = Path(args.out or os.environ.get("OUT", ".")) / "gpu.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--sections", "attention,sampler,methods",
               "--minutes", str(args.minutes), "--out", str(out), *(["--dry"] if args.dry else [])]
    try:  # gpu.py stops starting rows at --minutes; this is the hard stop a minute later
        code = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), timeout=args.minutes * 60 + 60).returncode
    except subprocess.TimeoutExpired:
        sys.exit(f"error: gpu.py ran past {args.minutes} minutes and was stopped; the rows it finished are in {out}")
    sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="here: the wheelhouse of what the target lacks")
    b.add_argument("--against", default=None, help="a Python whose pip list is the target (default: the lent image's list)")
    b.add_argument("--out", default=str(WHEELHOUSE))
    for name in ("check", "run"):
        c = commands.add_parser(name)
        c.add_argument("--wheelhouse", default=str(WHEELHOUSE))
        c.add_argument("--dry", action="store_true", help="the CPU twin: no GPU needed, gpu.py --dry")
        if name == "run":
            c.add_argument("--minutes", type=float, default=7.5, help="gpu.py starts no row after this")
            c.add_argument("--out", default=None, help="where gpu.json goes ($OUT on the device)")
    args = parser.parse_args()
    {"build": build, "check": check, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
